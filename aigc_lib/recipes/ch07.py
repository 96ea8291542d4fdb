"""Chapter 07's attribute judge (the text-to-image chapter's measuring instrument, in progress).

Trained on renders of the train split's digits in every attribute combination, held-out ones
included (`captioned_digits("train", n=..., include_holdout="both")`): a judge must recognise what
the generator was never shown. Measured at the standard budget (1,500 steps of 128, ~110 s on 2
threads): on the 1,000 test images, digit 95.1% (93.7% on those with held-out combinations), size,
position and colour 100%, thickness 99.8%.
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib.captions import CaptionedDigits
from aigc_lib.recipes import Recipe
from aigc_lib.text_to_image import AttributeJudge, train_judge
from aigc_lib.training import History

IMAGES = {"smoke": 500, "standard": 20_000, "full": 20_000}
STEPS = {"smoke": 20, "standard": 1_500, "full": 4_000}
BATCH = 128


def train_attribute_judge(
    sizes: dict[str, Any], data: CaptionedDigits, device: Any, **run: Any
) -> tuple[AttributeJudge, History]:
    """`data`: captions.captioned_digits("train", n=sizes["images"], include_holdout="both")."""
    if not isinstance(data, CaptionedDigits) or data.split != "train" or len(data) != sizes["images"]:
        raise ValueError(
            f"data: expected captions.captioned_digits('train', n={sizes['images']}, include_holdout='both'), "
            f"got {type(data).__name__} of {len(data) if isinstance(data, CaptionedDigits) else '?'} images"
        )
    torch.manual_seed(0)
    judge = AttributeJudge(width=32).to(device)
    history = train_judge(judge, data, sizes["steps"], batch_size=sizes["batch"], **run)
    return judge, history


RECIPES = (
    Recipe(
        name="07.judge",
        summary="attribute judge: chapter 06's CNN image tower with one linear head per attribute, trained on "
        "renders in every combination with pixel noise σ ≤ 0.1, batch 128, AdamW 2e-3",
        sizes={b: {"images": IMAGES[b], "steps": STEPS[b], "batch": BATCH} for b in STEPS},
        checkpoint="07_judge_{budget}_{images}_{steps}_b{batch}.pt",
        train=train_attribute_judge,
    ),
)
