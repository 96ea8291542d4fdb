"""Attention from the formula, multi-head attention, and the Transformer's blocks.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017:

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V                        attention, attention_weights
        M = 0 where attending is allowed, −∞ where it is not (a causal mask hides the future:
        position t sees 1..t; a padding mask hides padded keys)             causal_mask
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O                    split_heads / merge_heads,
                                                                            MultiHeadAttention
    PE(pos, 2i) = sin(pos / 10000^{2i/d}),  PE(pos, 2i+1) = cos(pos / 10000^{2i/d})   sinusoidal_positions
    pre-LN block:  x = x + Attn(LN(x));  x = x + MLP(LN(x))                 Block
    with cross-attention (decoder):  x = x + Attn(LN(x));  x = x + CrossAttn(LN(x), memory);
                                     x = x + MLP(LN(x))                     EncoderDecoderBlock

Fast path: `MultiHeadAttention` projects Q, K, V with one matrix multiply and calls
`F.scaled_dot_product_attention` (fused flash / memory-efficient kernels on GPU); tests pin it to
`attention` and to `nn.MultiheadAttention` with copied weights. It serves four roles: self-attention,
causal self-attention, self-attention with a KV cache (`past`) and cross-attention (`memory`), so the
blocks here build a decoder-only GPT (gpt.py), an encoder–decoder (seq2seq.py), a text encoder or a
cross-attention layer for the chapters that compose them.

Corrected from the source articles (docs/errata.md, E7): scores are scaled by √d_k (the per-head
size), not √embed_size; decoder self-attention is masked; the block is complete (residuals,
LayerNorm, MLP).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, shape_of

__all__ = [
    "Block",
    "EncoderDecoderBlock",
    "MultiHeadAttention",
    "attention",
    "attention_weights",
    "causal_mask",
    "merge_heads",
    "sinusoidal_positions",
    "split_heads",
]


# ---------------------------------------------------------------------------------------------
# The formulas
# ---------------------------------------------------------------------------------------------


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query t may attend to key s: s <= t + (S − T).

    S defaults to T. With S > T the queries are the LAST T of S positions (e.g. new tokens after a
    cache of S − T), so query t sits at position t + S − T."""
    check_int("T", T)
    S = T if S is None else check_int("S", S)
    if S < T:
        raise ValueError(f"S: expected S >= T (keys include the queries' positions), got T={T}, S={S}")
    return _causal_mask(T, S, device)


def _causal_mask(T: int, S: int, device: torch.device | str | None) -> Tensor:
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # s <= t + (S − T)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / √d_k + M) v, from the formula: q (..., T, d_k), k (..., S, d_k), v (..., S, d_v).

    mask -- boolean, broadcastable to (..., T, S): True = may attend, False = masked (−∞ score).
    A query whose keys are all masked gets NaN here (PyTorch's fused kernel returns 0): never mask a row fully."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(f"{name}: expected a floating-point tensor (..., length, dim), got {shape_of(t)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"q, k, v: expected q (..., T, d_k), k (..., S, d_k), v (..., S, d_v); got "
            f"{shape_of(q)}, {shape_of(k)}, {shape_of(v)}"
        )
    _check_mask(mask)
    return _attention_weights(q, k, mask) @ v  # (..., T, d_v)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / √d_k + M): (..., T, S), row t = how much query t reads from each key."""
    _check_mask(mask)
    return _attention_weights(q, k, mask)


def _attention_weights(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # q kᵀ / √d_k   (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # + M
    return torch.softmax(scores, dim=-1)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, C) -> (B, n_heads, T, C / n_heads): head h gets channels h·d .. (h+1)·d − 1."""
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"x: expected a tensor (B, T, C), got {shape_of(x)}")
    check_int("n_heads", n_heads)
    if x.shape[2] % n_heads:
        raise ValueError(f"n_heads: C={x.shape[2]} is not divisible by n_heads={n_heads}")
    return _split_heads(x, n_heads)


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, n_heads, T, d) -> (B, T, n_heads·d): the inverse of `split_heads` (Concat(head_1..head_h))."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x: expected a tensor (B, n_heads, T, d), got {shape_of(x)}")
    return _merge_heads(x)


def _merge_heads(x: Tensor) -> Tensor:
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def sinusoidal_positions(T: int, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(T, d) table: PE[pos, 2i] = sin(pos / base^{2i/d}), PE[pos, 2i+1] = cos(pos / base^{2i/d})."""
    check_int("T", T), check_int("d", d)
    if d % 2:
        raise ValueError(f"d: expected an even model width for sin/cos pairs, got {d}")
    return _sinusoidal_positions(T, d, base, dtype)


def _sinusoidal_positions(T: int, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    pos = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    pe = torch.empty(T, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe.to(dtype)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """MultiHead(x) = Concat(head_1..head_h) W^O, Q/K/V from one (C, 3C) projection, fused attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        check_int("d_model", d_model), check_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # [W^Q; W^K; W^V] stacked
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W^O

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        key_padding: Tensor | None = None,
        past: tuple[Tensor, Tensor] | None = None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C) -> (y (B, T, C), (k, v) each (B, h, S, d) including `past`).

        causal      -- each position attends only to itself and earlier ones (past keys included).
        key_padding -- boolean (B, S): True for real keys, False for padding.
        past        -- cached (k, v) of earlier positions: the new queries attend to them too.
        memory      -- cross-attention: keys and values from `memory` (B, S, C) (the encoder's
                       output), queries from x."""
        q, k, v = self._project(x, past, memory)
        mask, causal = self._mask(x, q.shape[2], k.shape[2], causal, key_padding)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, d)
        return self.proj(_merge_heads(y)), (k, v)

    @torch.no_grad()
    def weights(
        self, x: Tensor, *, causal: bool = False, key_padding: Tensor | None = None, memory: Tensor | None = None
    ) -> Tensor:
        """The attention probabilities of `forward` with the same arguments: (B, h, T, S), for plots."""
        q, k, _ = self._project(x, None, memory)
        mask, causal = self._mask(x, q.shape[2], k.shape[2], causal, key_padding)
        if causal:
            mask = _causal_mask(q.shape[2], q.shape[2], x.device)
        return _attention_weights(q, k, mask)

    def _project(
        self,
        x: Tensor,
        past: tuple[Tensor, Tensor] | None,
        memory: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, h, T, d) from x; k, v (B, h, S, d) from x (or `memory`), after the cached `past`."""
        if memory is None:
            q, k, v = (_split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, h, T, d) each
        else:
            C = x.shape[-1]
            w_q, w_kv = self.qkv.weight.split([C, 2 * C])
            b_q, b_kv = self.qkv.bias.split([C, 2 * C]) if self.qkv.bias is not None else (None, None)
            q = _split_heads(F.linear(x, w_q, b_q), self.n_heads)  # (B, h, T, d)
            k, v = (
                _split_heads(t, self.n_heads) for t in F.linear(memory, w_kv, b_kv).chunk(2, dim=-1)
            )  # (B, h, S, d)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, h, S, d)
        return q, k, v

    @staticmethod
    def _mask(x: Tensor, T: int, S: int, causal: bool, key_padding: Tensor | None) -> tuple[Tensor | None, bool]:
        """(boolean mask broadcastable to (B, h, T, S) or None, whether SDPA's is_causal is still to apply)."""
        mask = None
        if key_padding is not None:
            if (
                not isinstance(key_padding, Tensor)
                or key_padding.dtype != torch.bool
                or tuple(key_padding.shape) != (x.shape[0], S)
            ):
                raise ValueError(
                    f"key_padding: expected a boolean tensor ({x.shape[0]}, {S}), got {shape_of(key_padding)}"
                )
            mask = key_padding[:, None, None, :]  # (B, 1, 1, S)
        if causal and (mask is not None or T != S):
            c = _causal_mask(T, S, x.device)
            return (c if mask is None else mask & c), False
        return mask, causal


class BlockConfig(Protocol):
    """The sizes a block reads from its model's config (GPTConfig, Seq2SeqConfig, ...)."""

    n_embd: int
    n_head: int
    dropout: float


class Block(nn.Module):
    """Pre-LayerNorm block: x = x + Attn(LN(x)); x = x + MLP(LN(x)), MLP = Linear(C, 4C) GELU Linear(4C, C).

    `c`: a config with n_embd, n_head, dropout and, optionally, bias (default True). causal=True: the
    GPT's masked self-attention; causal=False: an encoder's (e.g. a text encoder's) full self-attention."""

    def __init__(self, c: BlockConfig, *, causal: bool = True):
        super().__init__()
        bias = getattr(c, "bias", True)
        self.causal = causal
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd, bias=bias), nn.LayerNorm(c.n_embd, bias=bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, c.dropout, bias)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd, bias=bias),
            nn.GELU(),
            nn.Linear(4 * c.n_embd, c.n_embd, bias=bias),
            nn.Dropout(c.dropout),
        )
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self, x: Tensor, past: tuple[Tensor, Tensor] | None = None, key_padding: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C) -> (x (B, T, C), this layer's (k, v) for a KV cache, `past` included)."""
        a, kv = self.attn(self.ln1(x), causal=self.causal, past=past, key_padding=key_padding)
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x)), kv


class EncoderDecoderBlock(nn.Module):
    """The original Transformer's encoder/decoder block in its pre-LN form (the 2017 paper put LayerNorm
    after each residual addition, post-LN): self-attention (causal in the decoder), then, in the decoder
    only, cross-attention to the encoder's output, then the MLP; each with a residual."""

    def __init__(self, c: BlockConfig, decoder: bool):
        super().__init__()
        self.decoder = decoder
        self.ln1, self.ln3 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.self_attn = MultiHeadAttention(c.n_embd, c.n_head, c.dropout)
        if decoder:
            self.ln2, self.cross_attn = nn.LayerNorm(c.n_embd), MultiHeadAttention(c.n_embd, c.n_head, c.dropout)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd), nn.Dropout(c.dropout)
        )

    def forward(
        self, x: Tensor, padding: Tensor | None, memory: Tensor | None = None, memory_padding: Tensor | None = None
    ) -> Tensor:
        x = x + self.self_attn(self.ln1(x), causal=self.decoder, key_padding=padding)[0]
        if self.decoder:
            x = x + self.cross_attn(self.ln2(x), memory=memory, key_padding=memory_padding)[0]
        return x + self.mlp(self.ln3(x))


def init_normal_(module: nn.Module) -> None:
    """GPT-2's init, for `module.apply`: Linear and Embedding weights ~ N(0, 0.02), biases 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Argument checks of this module (the shared ones are in aigc_lib.checks)
# ---------------------------------------------------------------------------------------------


def _check_mask(mask: object) -> None:
    if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool):
        raise ValueError(f"mask: expected a boolean tensor (True = attend), got {shape_of(mask)}")
