"""Chapter 04's character-level GPT on Shakespeare, reused by chapter 09 (quantised, distilled,
watermarked). Its training compute is fixed in FLOPs (3.65 TFLOP at the standard budget), the figure
chapter 04 gives its LSTM too."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from aigc_lib import transformer as tr
from aigc_lib.recipes import Recipe
from aigc_lib.training import History

FLOPS = {"smoke": 0.002e12, "standard": 3.65e12, "full": 7.3e12}
SHAPE = {"smoke": (2, 32), "standard": (3, 96), "full": (3, 96)}  # (n_layer, n_embd)
VOCAB = 69  # data.CharTokenizer.from_text(data.shakespeare_text("all")).vocab_size
BLOCK, BATCH, LR = 64, 12, 4e-3


def gpt_config(n_layer: int, n_embd: int, vocab_size: int = VOCAB) -> tr.GPTConfig:
    return tr.GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=n_layer, n_head=4, n_embd=n_embd)


def steps_for(flops: float, config: tr.GPTConfig) -> int:
    """Training steps that spend `flops` (3 × the forward FLOPs per token, BATCH × BLOCK tokens a step)."""
    per_step = 3 * tr.GPT(config).flops_per_token() * BATCH * config.block_size
    return max(10, int(flops // per_step))


def train_char_gpt(sizes: dict[str, Any], train_ids: Tensor, device: Any, **run: Any) -> tuple[tr.GPT, History]:
    """`train_ids`: data.CharTokenizer.from_text(data.shakespeare_text("all")).encode(the train split)."""
    if not isinstance(train_ids, Tensor) or train_ids.ndim != 1 or int(train_ids.max()) >= VOCAB:
        raise ValueError(f"train_ids: expected 1-D ids of the {VOCAB} Shakespeare characters, got {train_ids!r:.80}")
    torch.manual_seed(0)
    config = gpt_config(sizes["n_layer"], sizes["n_embd"])
    model = tr.GPT(config).to(device)
    history = tr.train_gpt(model, train_ids.to(device), sizes["steps"], batch_size=BATCH, lr=LR, **run)
    return model, history


RECIPES = (
    Recipe(
        name="04.char_gpt",
        summary="character GPT, context 64, 4 heads, 2×32 / 3×96 / 3×96, batch 12, AdamW 4e-3 warmup-cosine, "
        "steps for 0.002 / 3.65 / 7.3 TFLOP",
        sizes={
            b: {"n_layer": SHAPE[b][0], "n_embd": SHAPE[b][1], "steps": steps_for(FLOPS[b], gpt_config(*SHAPE[b]))}
            for b in FLOPS
        },
        checkpoint="04_gpt_{budget}_{n_layer}x{n_embd}_ctx64.pt",
        train=train_char_gpt,
    ),
)
