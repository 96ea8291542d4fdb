"""Chapter 04 — Transformers: attention from the formula, multi-head attention, a char GPT with a KV cache.

Teaching path (Vaswani et al., "Attention Is All You Need", NeurIPS 2017):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V                        attention
        M = 0 where attending is allowed, −∞ where it is not (a causal mask hides the future:
        position t sees 1..t; a padding mask hides padded keys)             causal_mask
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O                    split_heads / merge_heads
    PE(pos, 2i) = sin(pos / 10000^{2i/d}),  PE(pos, 2i+1) = cos(pos / 10000^{2i/d})   sinusoidal_positions

Fast path: `MultiHeadAttention` projects Q, K, V with one matrix multiply and calls
`F.scaled_dot_product_attention` (fused flash / memory-efficient kernels on GPU); tests pin it to
`attention` and to `nn.MultiheadAttention` with copied weights. `GPT` is a decoder-only model in the
style of nanoGPT's model.py: token + position embeddings, pre-LayerNorm blocks
x = x + Attn(LN(x)); x = x + MLP(LN(x)), a final LayerNorm and an output layer tied to the token
embedding. `model(idx, cache) -> (logits, cache)` with a `KVCache`, the protocol of chapter 01's
streaming `rnn.generate`, which therefore samples from a GPT too: the prompt is read once, then each
new token attends to the cached keys and values instead of recomputing the whole context.

Corrected from the source articles' E7: scores are scaled by √d_k (the per-head size), not
√embed_size; decoder self-attention is masked; the block is complete (residuals, LayerNorm, MLP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.rnn import generate, sample_probs
from aigc_lib.training import History, adamw_warmup_cosine, fit

__all__ = [
    "GPT", "Block", "EncoderDecoderBlock", "GPTConfig", "KVCache", "MultiHeadAttention", "Seq2SeqConfig",
    "Seq2SeqTransformer", "attention", "attention_maps", "attention_weights", "causal_mask", "evaluate_loss",
    "generate_without_cache", "merge_heads", "random_windows", "reversal_batch", "sinusoidal_positions",
    "split_heads", "train_gpt", "train_seq2seq",
]


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_int(name: str, value: object, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query t may attend to key s: s <= t + (S − T).

    S defaults to T. With S > T the queries are the LAST T of S positions (e.g. new tokens after a
    cache of S − T), so query t sits at position t + S − T."""
    _check_int("T", T)
    S = T if S is None else _check_int("S", S)
    if S < T:
        raise ValueError(f"S: expected S >= T (keys include the queries' positions), got T={T}, S={S}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / √d_k + M) v, from the formula: q (..., T, d_k), k (..., S, d_k), v (..., S, d_v).

    mask -- boolean, broadcastable to (..., T, S): True = may attend, False = masked (−∞ score).
    A query whose keys are all masked gets NaN here (PyTorch's fused kernel returns 0): never mask a row fully."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            raise ValueError(f"{name}: expected a floating-point tensor (..., length, dim), got {_shape(t)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"q, k, v: expected q (..., T, d_k), k (..., S, d_k), v (..., S, d_v); got "
                         f"{_shape(q)}, {_shape(k)}, {_shape(v)}")
    return attention_weights(q, k, mask) @ v  # (..., T, d_v)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / √d_k + M): (..., T, S), row t = how much query t reads from each key."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, S)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a boolean tensor (True = attend), got {_shape(mask)}")
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, C) -> (B, n_heads, T, C / n_heads): head h gets channels h·d .. (h+1)·d − 1."""
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"x: expected a tensor (B, T, C), got {_shape(x)}")
    _check_int("n_heads", n_heads)
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"n_heads: C={C} is not divisible by n_heads={n_heads}")
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, n_heads, T, d) -> (B, T, n_heads·d): the inverse of `split_heads` (Concat(head_1..head_h))."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x: expected a tensor (B, n_heads, T, d), got {_shape(x)}")
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def sinusoidal_positions(T: int, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(T, d) table: PE[pos, 2i] = sin(pos / base^{2i/d}), PE[pos, 2i+1] = cos(pos / base^{2i/d})."""
    _check_int("T", T), _check_int("d", d)
    if d % 2:
        raise ValueError(f"d: expected an even model width for sin/cos pairs, got {d}")
    pos = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    pe = torch.empty(T, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe.to(dtype)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Per-layer keys and values of the tokens seen so far (each (B, n_heads, S, d)) and those tokens."""

    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    tokens: Tensor | None = None  # (B, S) int64

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]


class MultiHeadAttention(nn.Module):
    """MultiHead(x) = Concat(head_1..head_h) W^O, Q/K/V from one (C, 3C) projection, fused attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        _check_int("d_model", d_model), _check_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # [W^Q; W^K; W^V] stacked
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W^O

    def forward(self, x: Tensor, *, causal: bool = False, key_padding: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None, memory: Tensor | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C) -> (y (B, T, C), (k, v) each (B, h, S, d) including `past`).

        causal      -- each position attends only to itself and earlier ones (past keys included).
        key_padding -- boolean (B, S): True for real keys, False for padding.
        past        -- cached (k, v) of earlier positions: the new queries attend to them too.
        memory      -- cross-attention: keys and values from `memory` (B, S, C) (the encoder's
                       output), queries from x."""
        q, k, v = self._project(x, past, memory)
        mask, causal = self._mask(x, q.shape[2], k.shape[2], causal, key_padding)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, d)
        return self.proj(merge_heads(y)), (k, v)

    @torch.no_grad()
    def weights(self, x: Tensor, *, causal: bool = False, key_padding: Tensor | None = None,
                memory: Tensor | None = None) -> Tensor:
        """The attention probabilities of `forward` with the same arguments: (B, h, T, S), for plots."""
        q, k, _ = self._project(x, None, memory)
        mask, causal = self._mask(x, q.shape[2], k.shape[2], causal, key_padding)
        if causal:
            mask = causal_mask(q.shape[2], device=x.device)
        return attention_weights(q, k, mask)

    def _project(self, x: Tensor, past: tuple[Tensor, Tensor] | None, memory: Tensor | None,
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, h, T, d) from x; k, v (B, h, S, d) from x (or `memory`), after the cached `past`."""
        if memory is None:
            q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, h, T, d) each
        else:
            C = x.shape[-1]
            w_q, w_kv = self.qkv.weight.split([C, 2 * C])
            b_q, b_kv = self.qkv.bias.split([C, 2 * C]) if self.qkv.bias is not None else (None, None)
            q = split_heads(F.linear(x, w_q, b_q), self.n_heads)  # (B, h, T, d)
            k, v = (split_heads(t, self.n_heads) for t in F.linear(memory, w_kv, b_kv).chunk(2, dim=-1))  # (B, h, S, d)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, h, S, d)
        return q, k, v

    @staticmethod
    def _mask(x: Tensor, T: int, S: int, causal: bool, key_padding: Tensor | None) -> tuple[Tensor | None, bool]:
        """(boolean mask broadcastable to (B, h, T, S) or None, whether SDPA's is_causal is still to apply)."""
        mask = None
        if key_padding is not None:
            if not isinstance(key_padding, Tensor) or key_padding.dtype != torch.bool or tuple(key_padding.shape) != (x.shape[0], S):
                raise ValueError(f"key_padding: expected a boolean tensor ({x.shape[0]}, {S}), got {_shape(key_padding)}")
            mask = key_padding[:, None, None, :]  # (B, 1, 1, S)
        if causal and (mask is not None or T != S):
            c = causal_mask(T, S, device=x.device)
            return (c if mask is None else mask & c), False
        return mask, causal


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128  # longest context
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    positions: str = "learned"  # or "sinusoidal" (fixed, Vaswani et al.)
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _check_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions: expected 'learned' or 'sinusoidal', got {self.positions!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")


class Block(nn.Module):
    """Pre-LayerNorm block: x = x + Attn(LN(x)); x = x + MLP(LN(x)), MLP = Linear(C, 4C) GELU Linear(4C, C)."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd, bias=c.bias), nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, c.dropout, c.bias)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias), nn.Dropout(c.dropout))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(self.ln1(x), causal=True, past=past)
        x = x + self.drop(a)
        return x + self.mlp(self.ln2(x)), kv


class GPT(nn.Module):
    """Decoder-only char model: idx (B, T) -> logits (B, T, V) for the next token at every position."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)
        if c.positions == "learned":
            self.pos = nn.Embedding(c.block_size, c.n_embd)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(c.block_size, c.n_embd), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying (Press & Wolf, 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/√(2·n_layer)
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding/output matrix once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Forward FLOPs per token at full context, matrix multiplies only (2 FLOPs per multiply-add):

            2 · ( L · 12C²  +  C V )  +  L · 4 T C

        12C² per layer: Q, K, V and output projections (4C²) and the MLP (8C²); CV: the output layer;
        4TC per layer: the scores q·k and the weighted sum of values over T = block_size keys (the
        convention of nanoGPT's estimate_mfu; a causal kernel does about half). Training ≈ 3x this,
        the same rule as `CharLSTM.flops_per_token` (6N per token for the weights)."""
        c = self.config
        return 2 * (c.n_layer * 12 * c.n_embd**2 + c.n_embd * c.vocab_size) + c.n_layer * 4 * c.block_size * c.n_embd

    def _positions(self, start: int, T: int, device: torch.device) -> Tensor:
        if self.config.positions == "learned":
            return self.pos(torch.arange(start, start + T, device=device))
        return self.pos_table[start : start + T]

    def forward(self, idx: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """idx (B, T) int64 -> (logits (B, T, V), cache with these tokens appended).

        With a cache, idx are the tokens that FOLLOW the cached ones. A context longer than
        block_size keeps its last block_size − T tokens and is recomputed (positions restart)."""
        c = self.config
        if not isinstance(idx, Tensor) or idx.dtype != torch.int64 or idx.ndim != 2:
            kind = f"{idx.dtype} " if isinstance(idx, Tensor) else ""
            raise ValueError(f"idx: expected an int64 tensor of shape (B, T), got {kind}{_shape(idx)}")
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        B, T = idx.shape
        if T > c.block_size:
            raise ValueError(f"idx: length {T} exceeds block_size={c.block_size}")
        if cache is not None and cache.length and cache.tokens.shape[0] != B:
            raise ValueError(f"cache: holds a batch of {cache.tokens.shape[0]}, idx has {B}")
        if cache is not None and cache.length + T > c.block_size:  # slide the window: recompute from tokens
            keep = cache.tokens[:, cache.length + T - c.block_size :]
            logits, fresh = self.forward(torch.cat([keep, idx], dim=1), None)
            return logits[:, -T:], fresh
        start = cache.length if cache is not None else 0
        x = self.drop(self.tok(idx) + self._positions(start, T, idx.device))  # (B, T, C)
        new = KVCache(tokens=idx if cache is None or cache.tokens is None else torch.cat([cache.tokens, idx], dim=1))
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if cache is not None and cache.length else None
            x, (k, v) = block(x, past)
            new.keys.append(k), new.values.append(v)
        return self.head(self.ln_f(x)), new  # (B, T, V)


@torch.no_grad()
def attention_maps(model: GPT, idx: Tensor) -> Tensor:
    """Every layer's and head's causal attention probabilities on idx (B, T): (n_layer, B, n_head, T, T)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    if not isinstance(idx, Tensor) or idx.dtype != torch.int64 or idx.ndim != 2 or not 0 < idx.shape[1] <= model.config.block_size:
        raise ValueError(f"idx: expected an int64 tensor (B, T) with T <= block_size={model.config.block_size}, got {_shape(idx)}")
    T = idx.shape[1]
    x = model.tok(idx) + model._positions(0, T, idx.device)  # (B, T, C), as in forward (eval: no dropout)
    maps = []
    for block in model.blocks:
        maps.append(block.attn.weights(block.ln1(x), causal=True))
        x, _ = block(x)
    return torch.stack(maps)


@torch.no_grad()
def generate_without_cache(model: GPT, prompt_ids: Tensor | list[int], max_new_tokens: int, temperature: float = 1.0,
                           top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """The slow way, for comparison with the KV cache of `rnn.generate`: every new token re-reads the
    whole context (its last block_size tokens) from scratch. Same sampling, so the same generator
    gives the same tokens (up to floating-point ties)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    generate(model, prompt_ids, max_new_tokens, temperature, top_k, generator)  # the same argument checks
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt_ids, dtype=torch.int64, device=device).view(1, -1)
    was_training = model.training
    model.eval()
    new: list[int] = []
    try:
        for _ in range(max_new_tokens):
            logits, _ = model(ids[:, -model.config.block_size :])
            probs = sample_probs(logits[0, -1].float(), temperature, top_k)
            if generator is not None:
                probs = probs.to(generator.device)
            token = torch.multinomial(probs, 1, generator=generator).to(device)
            new.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    finally:
        model.train(was_training)
    return new


# ---------------------------------------------------------------------------------------------
# Training and evaluation (the shared loop)
# ---------------------------------------------------------------------------------------------


def _check_ids(name: str, ids: object, min_len: int) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 1 or len(ids) < min_len:
        raise ValueError(f"{name}: expected a 1-D int64 tensor of at least {min_len} token ids, got {_shape(ids)}")
    return ids


def random_windows(ids: Tensor, batch_size: int, block: int, seed: int = 0):
    """step -> (x, y): `batch_size` random windows of `block` tokens and the same shifted by one,
    offsets drawn from a generator seeded by (seed, step) (nanoGPT's get_batch, resumable)."""
    _check_int("batch_size", batch_size), _check_int("block", block)
    _check_ids("ids", ids, block + 1)
    offsets = torch.arange(block + 1, device=ids.device)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        start = torch.randint(len(ids) - block, (batch_size, 1), generator=gen).to(ids.device)
        window = ids[start + offsets]  # (B, block + 1)
        return window[:, :-1], window[:, 1:]

    return batch


def train_gpt(model: GPT, train_ids: Tensor, steps: int, *, batch_size: int = 12, block: int | None = None,
              lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100, min_lr_ratio: float = 0.1,
              grad_clip: float | None = 1.0, seed: int = 0, compile: bool = False, checkpoint=None,
              log_every: int = 50, progress: bool = True, on_log=None) -> History:
    """Next-token cross-entropy on random windows of `train_ids`, AdamW (decay on matrices only, betas
    (0.9, 0.99)), linear warmup then cosine to lr·min_lr_ratio, gradient clipping, bf16 autocast on
    CUDA (fit), optionally `torch.compile`d; `on_log` as in `fit` (e.g. a plots.LiveLossCurve).
    Returns fit's History ("loss" in nats per token)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    block = model.config.block_size if block is None else _check_int("block", block)
    if block > model.config.block_size:
        raise ValueError(f"block: expected at most block_size={model.config.block_size}, got {block}")
    device = next(model.parameters()).device
    batches = random_windows(_check_ids("train_ids", train_ids, block + 1).to(device), batch_size, block, seed)
    opt, sched = adamw_warmup_cosine(model, lr, _check_int("steps", steps), warmup_steps, min_lr_ratio, weight_decay)
    forward = torch.compile(model) if compile else model

    def loss_fn(_: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits, _cache = forward(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    return fit(model, opt, batches, loss_fn, steps, grad_clip=grad_clip, scheduler=sched, checkpoint=checkpoint,
               log_every=log_every, desc="char-GPT", progress=progress, on_log=on_log)


@torch.no_grad()
def evaluate_loss(model: GPT, ids: Tensor, block: int | None = None, batch_size: int = 32) -> float:
    """Mean next-token NLL (nats per token) over `ids`, read in consecutive windows of `block` tokens
    (each window predicts its own next tokens from its own start: the standard windowed evaluation)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    block = model.config.block_size if block is None else _check_int("block", block)
    _check_ids("ids", ids, block + 1)
    device = next(model.parameters()).device
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block).to(device)
    y = ids[1 : n * block + 1].view(n, block).to(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i in range(0, n, batch_size):
            logits, _ = model(x[i : i + batch_size])
            total += F.cross_entropy(logits.float().flatten(0, 1), y[i : i + batch_size].flatten(), reduction="sum")
    finally:
        model.train(was_training)
    return float(total) / (n * block)


# ---------------------------------------------------------------------------------------------
# Encoder–decoder with cross-attention, and a task that needs it
# ---------------------------------------------------------------------------------------------

PAD, BOS, EOS = 0, 1, 2  # special token ids of the seq2seq vocabulary


@dataclass
class Seq2SeqConfig:
    src_vocab: int
    tgt_vocab: int
    max_len: int = 32  # longest source and target, special tokens included
    n_layer: int = 2  # encoder layers, and as many decoder layers
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("src_vocab", "tgt_vocab", "max_len", "n_layer", "n_head", "n_embd"):
            _check_int(name, getattr(self, name))
        if self.n_embd % self.n_head or self.n_embd % 2:
            raise ValueError(f"n_embd: expected an even multiple of n_head={self.n_head}, got {self.n_embd}")


class EncoderDecoderBlock(nn.Module):
    """Pre-LN block of the original Transformer: self-attention (causal in the decoder), then, in the
    decoder only, cross-attention to the encoder's output, then the MLP; each with a residual."""

    def __init__(self, c: Seq2SeqConfig, decoder: bool):
        super().__init__()
        self.decoder = decoder
        self.ln1, self.ln3 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.self_attn = MultiHeadAttention(c.n_embd, c.n_head, c.dropout)
        if decoder:
            self.ln2, self.cross_attn = nn.LayerNorm(c.n_embd), MultiHeadAttention(c.n_embd, c.n_head, c.dropout)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd),
                                 nn.Dropout(c.dropout))

    def forward(self, x: Tensor, padding: Tensor | None, memory: Tensor | None = None,
                memory_padding: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.ln1(x), causal=self.decoder, key_padding=padding)[0]
        if self.decoder:
            x = x + self.cross_attn(self.ln2(x), memory=memory, key_padding=memory_padding)[0]
        return x + self.mlp(self.ln3(x))


class Seq2SeqTransformer(nn.Module):
    """src (B, S) -> encoder -> memory (B, S, C); tgt_in (B, T) -> decoder (attending to memory) -> logits (B, T, V).

    Fixed sinusoidal positions, PAD (0) ignored as a key, decoder output tied to its token embedding."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config: expected a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_tok, self.tgt_tok = nn.Embedding(c.src_vocab, c.n_embd), nn.Embedding(c.tgt_vocab, c.n_embd)
        self.register_buffer("pos_table", sinusoidal_positions(c.max_len, c.n_embd), persistent=False)
        self.encoder = nn.ModuleList(EncoderDecoderBlock(c, decoder=False) for _ in range(c.n_layer))
        self.decoder = nn.ModuleList(EncoderDecoderBlock(c, decoder=True) for _ in range(c.n_layer))
        self.ln_enc, self.ln_dec = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.tgt_vocab, bias=False)
        self.head.weight = self.tgt_tok.weight
        self.apply(GPT._init)

    def _check(self, name: str, ids: object, vocab: int) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 2 or not 0 < ids.shape[1] <= self.config.max_len:
            raise ValueError(f"{name}: expected an int64 tensor (B, L) with 1 <= L <= max_len={self.config.max_len}, "
                             f"got {_shape(ids)}")
        return ids

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> (memory (B, S, C), padding mask (B, S): True for real tokens)."""
        src = self._check("src", src, self.config.src_vocab)
        padding = src != PAD
        x = self.src_tok(src) + self.pos_table[: src.shape[1]]
        for block in self.encoder:
            x = block(x, padding)
        return self.ln_enc(x), padding

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor) -> Tensor:
        """tgt_in (B, T) (BOS, y_1, ..., y_{T−1}) -> logits (B, T, V) of y_1 .. y_T."""
        tgt_in = self._check("tgt_in", tgt_in, self.config.tgt_vocab)
        x = self.tgt_tok(tgt_in) + self.pos_table[: tgt_in.shape[1]]
        for block in self.decoder:
            x = block(x, None, memory, memory_padding)  # causal self-attention needs no padding mask
        return self.head(self.ln_dec(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, padding = self.encode(src)
        return self.decode(tgt_in, memory, padding)

    @torch.no_grad()
    def cross_attention_maps(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Each decoder layer's cross-attention probabilities: (n_layer, B, n_head, T, S); row t shows
        which source positions the decoder reads while predicting target token t + 1."""
        memory, padding = self.encode(src)
        x = self.tgt_tok(self._check("tgt_in", tgt_in, self.config.tgt_vocab)) + self.pos_table[: tgt_in.shape[1]]
        maps = []
        for block in self.decoder:
            mid = x + block.self_attn(block.ln1(x), causal=True)[0]  # the block's first half, as in its forward
            maps.append(block.cross_attn.weights(block.ln2(mid), memory=memory, key_padding=padding))
            x = block(x, None, memory, padding)
        return torch.stack(maps)

    @torch.no_grad()
    def greedy(self, src: Tensor, max_new: int | None = None) -> Tensor:
        """Greedy decoding from BOS until EOS (or max_new tokens): (B, ≤ max_new) ids, EOS included,
        PAD after a sequence's EOS."""
        max_new = self.config.max_len - 1 if max_new is None else _check_int("max_new", max_new)
        was_training = self.training
        self.eval()
        try:
            memory, padding = self.encode(src)
            out = torch.full((src.shape[0], 1), BOS, dtype=torch.int64, device=src.device)
            done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
            for _ in range(min(max_new, self.config.max_len - 1)):
                nxt = self.decode(out, memory, padding)[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done |= nxt == EOS
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        return out[:, 1:]


def reversal_batch(batch_size: int, max_digits: int, generator: torch.Generator | None = None,
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """A task that needs cross-attention: reverse a digit string. Tokens: PAD 0, BOS 1, EOS 2, digits 3..12.

    Returns (src (B, max_digits) PAD-padded, tgt_in (B, max_digits + 1) = BOS + reversed,
    tgt_out (B, max_digits + 1) = reversed + EOS, PAD-padded); lengths uniform in 1..max_digits."""
    _check_int("batch_size", batch_size), _check_int("max_digits", max_digits)
    lengths = torch.randint(1, max_digits + 1, (batch_size,), generator=generator)
    digits = torch.randint(3, 13, (batch_size, max_digits), generator=generator)
    pos = torch.arange(max_digits)
    real = pos[None] < lengths[:, None]  # (B, L)
    src = torch.where(real, digits, PAD)
    rev_index = (lengths[:, None] - 1 - pos[None]).clamp(min=0)
    rev = torch.where(real, digits.gather(1, rev_index), PAD)  # reversed digits, PAD after
    tgt_out = torch.cat([rev, torch.full((batch_size, 1), PAD)], dim=1)
    tgt_out[torch.arange(batch_size), lengths] = EOS
    tgt_in = torch.cat([torch.full((batch_size, 1), BOS), rev], dim=1)
    return src, tgt_in, tgt_out


def train_seq2seq(model: Seq2SeqTransformer, steps: int, *, batch_size: int = 64, max_digits: int = 10,
                  lr: float = 1e-3, seed: int = 0, checkpoint=None, log_every: int = 50,
                  progress: bool = True, on_log=None) -> History:
    """Train on `reversal_batch` (fresh batches seeded by (seed, step)); cross-entropy over non-PAD targets."""
    if not isinstance(model, Seq2SeqTransformer):
        raise ValueError(f"model: expected a Seq2SeqTransformer, got {type(model).__name__}")
    if max_digits + 1 > model.config.max_len:
        raise ValueError(f"max_digits: expected at most max_len - 1 = {model.config.max_len - 1}, got {max_digits}")
    opt, sched = adamw_warmup_cosine(model, lr, _check_int("steps", steps), min(100, steps // 10), 0.1, 0.01)

    def batches(step: int) -> tuple[Tensor, Tensor, Tensor]:
        return reversal_batch(batch_size, max_digits, torch.Generator().manual_seed(seed * 1_000_003 + step))

    def loss_fn(m: Seq2SeqTransformer, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        src, tgt_in, tgt_out = batch
        logits = m(src, tgt_in)
        return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)

    return fit(model, opt, batches, loss_fn, steps, grad_clip=1.0, scheduler=sched, checkpoint=checkpoint,
               log_every=log_every, desc="seq2seq", progress=progress, on_log=on_log)
