"""Chapter 04's character GPT on Shakespeare (3 layers of width 96, context 64), trained on the same
compute as chapter 01's LSTM (3.65 TFLOP at the standard budget), used by the chapter and by
benchmarks/distributed.py. The checkpoint is the one the chapter's notebook writes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from aigc_lib import data as datasets
from aigc_lib import transformer as tr
from aigc_lib.recipes import Recipe
from aigc_lib.training import History

VOCAB = 69  # the distinct characters of the 38 plays (data.CharTokenizer.from_text(shakespeare_text("all")))
FLOP_BUDGET = {"smoke": 0.002e12, "standard": 3.65e12, "full": 7.3e12}  # training FLOPs, 3 x forward
LAYERS = {"smoke": 2, "standard": 3, "full": 3}
WIDTH = {"smoke": 32, "standard": 96, "full": 96}
BLOCK, HEADS, BATCH, LR = 64, 4, 12, 4e-3


def gpt_config(n_layer: int, n_embd: int, block_size: int = BLOCK) -> tr.GPTConfig:
    return tr.GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=n_layer, n_head=HEADS, n_embd=n_embd)


def _steps(budget: str) -> int:
    """As the notebook counts them: the FLOP budget over 3 · forward FLOPs per token · tokens per step."""
    config = gpt_config(LAYERS[budget], WIDTH[budget])
    per_token = tr.GPT.flops_per_token(SimpleNamespace(config=config))  # from the config: no weights drawn
    return max(10, int(FLOP_BUDGET[budget] // (3 * per_token * BATCH * BLOCK)))


def shakespeare_ids(sizes: dict[str, Any] | None = None) -> Tensor:
    """The training characters as ids, encoded as chapter 04 encodes them."""
    tok = datasets.CharTokenizer.from_text(datasets.shakespeare_text("all"))
    return tok.encode(datasets.shakespeare_text("train"))


def train_char_gpt(
    sizes: dict[str, Any], data: Tensor, device: Any, *, seed: int = 0, **run: Any
) -> tuple[tr.GPT, History]:
    """`data`: the training text's character ids (`shakespeare_ids()`); the GPT and its history."""
    if not isinstance(data, Tensor) or data.ndim != 1 or data.dtype != torch.int64:
        raise ValueError(f"data: expected character ids (N,) int64 (recipes.ch04.shakespeare_ids()), got {data!r:.60}")
    torch.manual_seed(seed)
    gpt = tr.GPT(gpt_config(sizes["n_layer"], sizes["n_embd"], sizes["block_size"])).to(device)
    run.setdefault("desc", "char-GPT")
    history = tr.train_gpt(
        gpt, data.to(device), sizes["steps"], batch_size=sizes["batch"], lr=LR, seed=seed, **run
    )  # fmt: skip
    return gpt, history


RECIPES = (
    Recipe(
        name="04.char_gpt",
        summary="character GPT (3 layers, width 96, 4 heads, context 64; smoke 2 x 32) on Shakespeare, batch 12, "
        "AdamW 4e-3 with warm-up and cosine decay, steps for 3.65 TFLOP at the standard budget",
        sizes={
            b: {"n_layer": LAYERS[b], "n_embd": WIDTH[b], "block_size": BLOCK, "batch": BATCH, "steps": _steps(b)}
            for b in FLOP_BUDGET
        },
        checkpoint="04_gpt_{budget}_{n_layer}x{n_embd}_ctx{block_size}.pt",
        train=train_char_gpt,
        data=shakespeare_ids,
    ),
)
