"""Chapter 02's DCGAN on MNIST-5k, reused by chapters 03 and 05 to compare generators."""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib import gan
from aigc_lib.data import ImageData, mnist5k
from aigc_lib.recipes import Recipe

STEPS = {"smoke": 10, "standard": 3_000, "full": 10_000}
WIDTH = {"smoke": 8, "standard": 32, "full": 64}


def train_dcgan(
    sizes: dict[str, Any], data: ImageData, device: Any, **run: Any
) -> tuple[gan.DCGANGenerator, gan.DCGANDiscriminator, gan.GANRun]:
    """`data` with .images in [0, 1] (as `data.mnist5k` gives them); G, D and the run (history, snapshots)."""
    config = gan.DCGANConfig(z_dim=64, ngf=sizes["width"], ndf=sizes["width"])
    torch.manual_seed(0)
    G, D = gan.DCGANGenerator(config).to(device), gan.DCGANDiscriminator(config).to(device)
    run.setdefault("desc", "DCGAN")
    result = gan.train_gan(G, D, data.images * 2 - 1, sizes["steps"], batch_size=64, **run)
    return G, D, result


def mnist_train(sizes: Any = None) -> ImageData:
    """The notebook's training digits: `data.mnist5k("train")`."""
    return mnist5k("train")


RECIPES = (
    Recipe(
        name="02.dcgan",
        summary="DCGAN (z 64, width 8/32/64), batch 64, Adam 2e-4 (0.5, 0.999), non-saturating loss",
        sizes={budget: {"width": WIDTH[budget], "steps": STEPS[budget]} for budget in STEPS},
        checkpoint="02_dcgan_{budget}_{width}.pt",
        train=train_dcgan,
        data=mnist_train,
    ),
)
