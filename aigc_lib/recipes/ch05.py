"""Chapter 05's class-conditional U-Net on MNIST-5k, used by the chapter and by benchmarks/diffusion.py.

The pieces are public so that a benchmark can vary one of them (the width, the steps, the seed) and
keep the rest: `unet_config(base)`, `build_unet`, `TRAINING` (train_diffusion's settings) and `T`.
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib import diffusion
from aigc_lib.data import ImageData
from aigc_lib.recipes import Recipe
from aigc_lib.recipes.ch02 import mnist_train
from aigc_lib.training import History

BASE = {"smoke": 8, "standard": 12, "full": 64}  # channels at 28×28; groups = base // 4
STEPS = {"smoke": 20, "standard": 3_000, "full": 20_000}
BATCH = 32
T = 1000  # linear_schedule(T): Ho et al.'s β from 1e-4 to 0.02
TRAINING = {"p_uncond": 0.3, "lr": 1.5e-3, "ema_decay": 0.999}  # train_diffusion's settings besides the batch


def unet_config(base: int) -> diffusion.UNetConfig:
    """The chapter's U-Net at width `base`: levels 28, 14, 7 with base·(1, 2, 2) channels, 10 classes + ∅."""
    return diffusion.UNetConfig(base=base, mults=(1, 2, 2), groups=base // 4, n_classes=10, upsample="transpose")


def build_unet(base: int, device: Any = "cpu", seed: int = 0) -> diffusion.UNet:
    torch.manual_seed(seed)
    return diffusion.UNet(unet_config(base)).to(device)


def train_unet(
    sizes: dict[str, Any],
    data: ImageData,
    device: Any,
    *,
    model: diffusion.UNet | None = None,
    seed: int = 0,
    **run: Any,
) -> tuple[diffusion.UNet, History, diffusion.EMA]:
    """`data` with .images in [0, 1] and .labels (as `data.mnist5k` gives them); the U-Net (built from
    `seed` unless `model` is given), its history and the EMA of its weights (sample from `ema.model`)."""
    if model is None:
        model = build_unet(sizes["base"], device, seed)
    history, ema = diffusion.train_diffusion(
        model,
        data.images,
        sizes["steps"],
        schedule=diffusion.linear_schedule(T),
        labels=data.labels,
        batch_size=sizes["batch_size"],
        seed=seed,
        **TRAINING,
        **run,
    )
    return model, history, ema


RECIPES = (
    Recipe(
        name="05.unet",
        summary="class-conditional U-Net (width 8/12/64, levels 28-14-7, attention at 7×7), linear β over "
        "T 1000, batch 32, AdamW 1.5e-3, condition dropout 0.3, EMA 0.999",
        sizes={budget: {"base": BASE[budget], "steps": STEPS[budget], "batch_size": BATCH} for budget in STEPS},
        checkpoint="05_unet_{budget}_{base}.pt",
        train=train_unet,
        data=mnist_train,
    ),
)
