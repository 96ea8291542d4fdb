"""The encoder–decoder Transformer of Vaswani et al. (2017), and a task that needs its cross-attention.

    memory = Encoder(E_src[src] + PE)          blocks with full self-attention, PAD keys hidden
    h = Decoder(E_tgt[tgt_in] + PE, memory)    blocks with causal self-attention, then
                                               cross-attention: queries from the decoder, keys and
                                               values from `memory`       attention.EncoderDecoderBlock
    logits = LN(h) E_tgtᵀ                      output layer tied to the target embedding
    loss = −mean over non-PAD targets of log p(y_t | y_<t, src)                       train_seq2seq
    greedy decoding: y_t = argmax_y p(y | y_<t, src), from BOS until EOS         Seq2SeqTransformer.greedy

The task (`reversal_batch`): reverse a digit string. Output position t must read source position
L − 1 − t, which only cross-attention can find; `cross_attention_maps` shows the anti-diagonal it learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib import distributed
from aigc_lib.checks import check_int
from aigc_lib.generation import check_token_batch, greedy_until_eos
from aigc_lib.runtime import eval_mode, step_generator
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, fit
from aigc_lib.transformer.attention import EncoderDecoderBlock, _sinusoidal_positions, init_normal_

__all__ = ["BOS", "EOS", "PAD", "Seq2SeqConfig", "Seq2SeqTransformer", "reversal_batch", "train_seq2seq"]

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
            check_int(name, getattr(self, name))
        if self.n_embd % self.n_head or self.n_embd % 2:
            raise ValueError(f"n_embd: expected an even multiple of n_head={self.n_head}, got {self.n_embd}")


class Seq2SeqTransformer(nn.Module):
    """src (B, S) -> encoder -> memory (B, S, C); tgt_in (B, T) -> decoder (attending to memory) -> logits (B, T, V).

    Fixed sinusoidal positions, PAD (0) ignored as a key, decoder output tied to its token embedding."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config: expected a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_tok, self.tgt_tok = nn.Embedding(c.src_vocab, c.n_embd), nn.Embedding(c.tgt_vocab, c.n_embd)
        self.register_buffer("pos_table", _sinusoidal_positions(c.max_len, c.n_embd), persistent=False)
        self.encoder = nn.ModuleList(EncoderDecoderBlock(c, decoder=False) for _ in range(c.n_layer))
        self.decoder = nn.ModuleList(EncoderDecoderBlock(c, decoder=True) for _ in range(c.n_layer))
        self.ln_enc, self.ln_dec = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.tgt_vocab, bias=False)
        self.head.weight = self.tgt_tok.weight
        self.apply(init_normal_)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> (memory (B, S, C), padding mask (B, S): True for real tokens)."""
        return self._encode(self._check("src", src))

    def _encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        padding = src != PAD
        x = self.src_tok(src) + self.pos_table[: src.shape[1]]
        for block in self.encoder:
            x = block(x, padding)
        return self.ln_enc(x), padding

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor) -> Tensor:
        """tgt_in (B, T) (BOS, y_1, ..., y_{T−1}) -> logits (B, T, V) of y_1 .. y_T."""
        return self._decode(self._check("tgt_in", tgt_in), memory, memory_padding)

    def _decode(self, tgt_in: Tensor, memory: Tensor, memory_padding: Tensor) -> Tensor:
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
        x = self.tgt_tok(self._check("tgt_in", tgt_in)) + self.pos_table[: tgt_in.shape[1]]
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
        max_new = self.config.max_len - 1 if max_new is None else check_int("max_new", max_new)
        with eval_mode(self):
            memory, padding = self.encode(src)

            def next_ids(out: Tensor) -> Tensor:  # the decoder re-reads all tokens so far (no cache)
                return self._decode(out, memory, padding)[:, -1].argmax(-1)

            steps = min(max_new, self.config.max_len - 1)
            return greedy_until_eos(next_ids, src.shape[0], steps, src.device, BOS, EOS, PAD)

    def _check(self, name: str, ids: object) -> Tensor:
        return check_token_batch(name, ids, self.config.max_len)


def reversal_batch(
    batch_size: int,
    max_digits: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A task that needs cross-attention: reverse a digit string. Tokens: PAD 0, BOS 1, EOS 2, digits 3..12.

    Returns (src (B, max_digits) PAD-padded, tgt_in (B, max_digits + 1) = BOS + reversed,
    tgt_out (B, max_digits + 1) = reversed + EOS, PAD-padded); lengths uniform in 1..max_digits."""
    check_int("batch_size", batch_size), check_int("max_digits", max_digits)
    return _reversal_batch(batch_size, max_digits, generator)


def _reversal_batch(
    batch_size: int, max_digits: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
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


def train_seq2seq(
    model: nn.Module,
    steps: int,
    *,
    batch_size: int = 64,
    max_digits: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Train on `reversal_batch` (fresh batches seeded by (seed, step)); cross-entropy over non-PAD
    targets. `model`: a Seq2SeqTransformer or any nn.Module with the same interface,
    `model(src (B, S), tgt_in (B, T)) -> logits (B, T, tgt_vocab)` and an int `model.config.max_len`
    (e.g. chapter 01's `rnn.AttentionSeq2Seq`). `run`: fit's run options (checkpoint, ckpt_every,
    log_every, desc, progress, on_log)."""
    max_len = getattr(getattr(model, "config", None), "max_len", None)
    if not isinstance(model, nn.Module) or not isinstance(max_len, int):
        raise ValueError(
            "model: expected a Seq2SeqTransformer or another nn.Module with forward(src, tgt_in) -> logits "
            f"and an int config.max_len, got {type(model).__name__}"
        )
    if max_digits + 1 > model.config.max_len:
        raise ValueError(f"max_digits: expected at most max_len - 1 = {model.config.max_len - 1}, got {max_digits}")
    opt, sched = adamw_warmup_cosine(model, lr, check_int("steps", steps), min(100, steps // 10), 0.1, 0.01)
    check_int("batch_size", batch_size), check_int("max_digits", max_digits)

    def batches(step: int) -> tuple[Tensor, Tensor, Tensor]:
        return _reversal_batch(batch_size, max_digits, step_generator(seed, step))

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        src, tgt_in, tgt_out = batch
        logits = m(src, tgt_in)
        return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)

    run.setdefault("desc", "seq2seq")
    distributed.warn_not_equivalent(
        "train_seq2seq",
        "the loss is a mean over each shard's non-padding targets, and DDP weighs the ranks equally, so a "
        "shard with fewer targets counts for more than in one process's token-weighted mean (close, not equal)",
    )
    return fit(model, opt, batches, loss_fn, steps, grad_clip=1.0, scheduler=sched, **run)
