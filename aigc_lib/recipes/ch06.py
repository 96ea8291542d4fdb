"""Chapter 06's CLIP on captioned digits, reused by chapter 07 as its frozen text encoder.

`train_clip_model(sizes, data, device)` with sizes {"images", "steps", "batch"}: the chapter's main
model uses the recipe's sizes; its batch-size comparison and `benchmarks/clip.py` call it with other
steps and batches and their own checkpoints, so every run shares one definition.
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib import clip
from aigc_lib.captions import CaptionedDigits, captioned_digits
from aigc_lib.recipes import Recipe
from aigc_lib.training import History

IMAGES = {"smoke": 500, "standard": 20_000, "full": 20_000}  # renders: each MNIST-5k digit drawn 4 times
STEPS = {"smoke": 20, "standard": 3_000, "full": 12_000}
BATCH = 64
# captions: English or Chinese (½ each), each optional attribute left out with probability ½, the digit a
# numeral 30% of the time; the settings chosen in 3,000-step runs (drop 0.7 left colour at 84%)
CAPTIONS = {"lang": "both", "drop": 0.5, "numerals": 0.3}
LR = 2e-3


def train_clip_model(
    sizes: dict[str, Any], data: CaptionedDigits, device: Any, *, seed: int = 0, **run: Any
) -> tuple[clip.CLIP, History]:
    """`data`: `captions.captioned_digits("train", n=sizes["images"])`; the trained CLIP (default
    CLIPConfig, 0.40 M parameters) and its history. sizes["group"], if given, is train_clip's group."""
    if not isinstance(data, CaptionedDigits) or data.split != "train" or len(data) != sizes["images"]:
        raise ValueError(
            f"data: expected captions.captioned_digits('train', n={sizes['images']}) (the recipe's images), "
            f"got {type(data).__name__} of {len(data) if isinstance(data, CaptionedDigits) else '?'} images"
        )
    torch.manual_seed(seed)
    model = clip.CLIP(clip.CLIPConfig()).to(device)
    sampler = clip.caption_sampler(data, seed=seed, **CAPTIONS)
    group = sizes.get("group")  # contrast within groups of the batch (the batch-size control); None: the whole batch
    history = clip.train_clip(
        model, data, sampler, sizes["steps"], batch_size=sizes["batch"], lr=LR, seed=seed, group=group, **run
    )
    return model, history


def renders(sizes: dict[str, Any]) -> CaptionedDigits:
    """The notebook's training renders: `captions.captioned_digits("train", n=sizes["images"])`."""
    return captioned_digits("train", n=sizes["images"])


RECIPES = (
    Recipe(
        name="06.clip",
        summary="CLIP in miniature: CNN image tower + 2-layer Transformer text tower (0.40 M parameters), "
        "symmetric InfoNCE, batch 64, captions in English and Chinese, AdamW 2e-3 with warm-up and cosine decay",
        sizes={b: {"images": IMAGES[b], "steps": STEPS[b], "batch": BATCH} for b in STEPS},
        checkpoint="06_clip_{budget}_{images}_{steps}_b{batch}.pt",
        train=train_clip_model,
        data=renders,
    ),
)
