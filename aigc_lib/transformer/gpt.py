"""A character GPT with a KV cache, in the style of nanoGPT's model.py: one file, top to bottom.

    h⁰_t = E[x_t] + P[t]                    token + position embeddings (P learned, or the fixed
                                            sinusoidal table of attention.py)        GPT.forward
    hˡ = Block(hˡ⁻¹), l = 1..L              pre-LN blocks with CAUSAL self-attention  attention.Block
    logits_t = LN(hᴸ_t) Eᵀ                  output layer tied to the token embedding (Press & Wolf, 2017)
    p(x_{t+1} | x_{≤t}) = softmax(logits_t)
    loss = −(1/T) Σ_t log p(x_{t+1} | x_{≤t})     next-token cross-entropy, nats per token   train_gpt
    KV cache: each layer's keys and values of the tokens seen so far, so a new token attends to
    them instead of recomputing the whole context                                     KVCache
    FLOPs/token ≈ 2 · (L · 12C² + C V) + L · 4 T C                                    GPT.flops_per_token

`model(idx, cache) -> (logits, cache)` is the protocol of `generation.generate` (the same as the
LSTM's `(idx, state)`), which therefore samples from a GPT too: the prompt is read once, then each new
token attends to the cached keys and values. `generate_without_cache` is the slow way, for comparison.
Training and evaluation: random windows of the text (`random_windows`, nanoGPT's get_batch) and the
shared `training.fit` loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, shape_of
from aigc_lib.generation import generate, sliding_window_nll
from aigc_lib.runtime import eval_mode, step_generator
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, fit
from aigc_lib.transformer.attention import Block, _sinusoidal_positions, init_normal_

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "attention_maps",
    "evaluate_loss",
    "generate_without_cache",
    "random_windows",
    "train_gpt",
]


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
            check_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions: expected 'learned' or 'sinusoidal', got {self.positions!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")


@dataclass
class KVCache:
    """Per-layer keys and values of the tokens seen so far (each (B, n_heads, S, d)) and those tokens."""

    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    tokens: Tensor | None = None  # (B, S) int64

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]


class GPT(nn.Module):
    """Decoder-only char model: idx (B, T) -> logits (B, T, V) for the next token at every position."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)  # E
        if c.positions == "learned":
            self.pos = nn.Embedding(c.block_size, c.n_embd)  # P
        else:
            self.register_buffer("pos_table", _sinusoidal_positions(c.block_size, c.n_embd), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying (Press & Wolf, 2017)
        self.apply(init_normal_)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/√(2·n_layer)
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    # `generation.generate`'s protocol
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        """The longest context the GPT reads: a longer prompt keeps its last block_size tokens."""
        return self.config.block_size

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
            raise ValueError(f"idx: expected an int64 tensor of shape (B, T), got {kind}{shape_of(idx)}")
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
        x = self.drop(self.tok(idx) + self._positions(start, T, idx.device))  # h⁰ = E[x] + P[t]   (B, T, C)
        new = KVCache(tokens=idx if cache is None or cache.tokens is None else torch.cat([cache.tokens, idx], dim=1))
        for i, block in enumerate(self.blocks):  # hˡ = Block(hˡ⁻¹), attending to the cached keys too
            past = (cache.keys[i], cache.values[i]) if cache is not None and cache.length else None
            x, (k, v) = block(x, past)
            new.keys.append(k), new.values.append(v)
        return self.head(self.ln_f(x)), new  # logits = LN(hᴸ) Eᵀ   (B, T, V)


@torch.no_grad()
def attention_maps(model: GPT, idx: Tensor) -> Tensor:
    """Every layer's and head's causal attention probabilities on idx (B, T): (n_layer, B, n_head, T, T)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    if (
        not isinstance(idx, Tensor)
        or idx.dtype != torch.int64
        or idx.ndim != 2
        or not 0 < idx.shape[1] <= model.config.block_size
    ):
        raise ValueError(
            f"idx: expected an int64 tensor (B, T) with T <= block_size={model.config.block_size}, got {shape_of(idx)}"
        )
    T = idx.shape[1]
    x = model.tok(idx) + model._positions(0, T, idx.device)  # (B, T, C), as in forward (eval: no dropout)
    maps = []
    for block in model.blocks:
        maps.append(block.attn.weights(block.ln1(x), causal=True))
        x, _ = block(x)
    return torch.stack(maps)


def generate_without_cache(
    model: GPT,
    prompt_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The slow way, for comparison with the KV cache of `generation.generate`: every new token
    re-reads the whole context (its last block_size tokens) from scratch. Same sampling, so the same
    generator gives the same tokens (up to floating-point ties)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    return list(generate(model, prompt_ids, max_new_tokens, temperature, top_k, generator, cache=False))


# ---------------------------------------------------------------------------------------------
# Training and evaluation (the shared loop)
# ---------------------------------------------------------------------------------------------


def random_windows(ids: Tensor, batch_size: int, block: int, seed: int = 0):
    """step -> (x, y): `batch_size` random windows of `block` tokens and the same shifted by one,
    offsets drawn from a generator seeded by (seed, step) (nanoGPT's get_batch, resumable)."""
    check_int("batch_size", batch_size), check_int("block", block)
    return _random_windows(_check_ids("ids", ids, block + 1), batch_size, block, seed)


def _random_windows(ids: Tensor, batch_size: int, block: int, seed: int):
    offsets = torch.arange(block + 1, device=ids.device)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        start = torch.randint(len(ids) - block, (batch_size, 1), generator=step_generator(seed, step)).to(ids.device)
        window = ids[start + offsets]  # (B, block + 1)
        return window[:, :-1], window[:, 1:]

    return batch


def train_gpt(
    model: GPT,
    train_ids: Tensor,
    steps: int,
    *,
    batch_size: int = 12,
    block: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    compile: bool = False,
    loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    **run: Unpack[RunOptions],
) -> History:
    """Next-token cross-entropy on random windows of `train_ids`, AdamW (decay on matrices only, betas
    (0.9, 0.99)), linear warmup then cosine to lr·min_lr_ratio, gradient clipping, bf16 autocast on
    CUDA (fit), optionally `torch.compile`d. `loss(logits, x, y)`: another objective on the same
    batches (chapter 09's distillation); default the cross-entropy. `run`: fit's run options (checkpoint, ckpt_every,
    log_every, desc, progress, on_log, e.g. a plots.LiveLossCurve). Returns fit's History ("loss" in
    nats per token)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    block = model.config.block_size if block is None else check_int("block", block)
    if block > model.config.block_size:
        raise ValueError(f"block: expected at most block_size={model.config.block_size}, got {block}")
    device = next(model.parameters()).device
    check_int("batch_size", batch_size)
    batches = _random_windows(_check_ids("train_ids", train_ids, block + 1).to(device), batch_size, block, seed)
    opt, sched = adamw_warmup_cosine(model, lr, check_int("steps", steps), warmup_steps, min_lr_ratio, weight_decay)
    if loss is not None and not callable(loss):
        raise ValueError(f"loss: expected a callable (logits, x, y) -> loss or None, got {type(loss).__name__}")
    forward = torch.compile(model) if compile else model

    def loss_fn(_: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits, _cache = forward(x)
        if loss is not None:
            return loss(logits, x, y)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # −(1/T) Σ log p(x_{t+1} | x_{≤t})

    run.setdefault("desc", "char-GPT")
    return fit(model, opt, batches, loss_fn, steps, grad_clip=grad_clip, scheduler=sched, **run)


@torch.no_grad()
def evaluate_loss(
    model: GPT, ids: Tensor, block: int | None = None, batch_size: int = 32, stride: int | None = None
) -> float:
    """Mean next-token NLL (nats per token) over `ids`.

    stride=None: consecutive windows of `block` tokens, each predicting its own next tokens from its
    own start (position j of a window sees only j tokens; the tail shorter than a window is dropped).
    stride=s (1 <= s <= block): the sliding-window evaluation of fixed-context models: windows of
    `block` tokens ending s tokens apart, each scoring only the targets the previous window did not,
    so every target after the first window is predicted from at least block - s earlier tokens and
    every target of ids[1:] is scored exactly once. Smaller s: more context per prediction, more
    compute (about block / s forward passes per token)."""
    if not isinstance(model, GPT):
        raise ValueError(f"model: expected a GPT, got {type(model).__name__}")
    block = model.config.block_size if block is None else check_int("block", block, high=model.config.block_size)
    _check_ids("ids", ids, block + 1)
    if stride is not None:
        return sliding_window_nll(model, ids, block, check_int("stride", stride, high=block), batch_size)
    device = next(model.parameters()).device
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block).to(device)
    y = ids[1 : n * block + 1].view(n, block).to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            logits, _ = model(x[i : i + batch_size])
            total += F.cross_entropy(logits.float().flatten(0, 1), y[i : i + batch_size].flatten(), reduction="sum")
    return float(total) / (n * block)


# ---------------------------------------------------------------------------------------------
# Argument checks of this module (the shared ones are in aigc_lib.checks)
# ---------------------------------------------------------------------------------------------


def _check_ids(name: str, ids: object, min_len: int) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 1 or len(ids) < min_len:
        raise ValueError(f"{name}: expected a 1-D int64 tensor of at least {min_len} token ids, got {shape_of(ids)}")
    return ids
