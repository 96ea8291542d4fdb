"""Chapter 03's convolutional VAE on MNIST-5k, reused by chapter 05 to compare generators."""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib import vae
from aigc_lib.data import ImageData
from aigc_lib.recipes import Recipe
from aigc_lib.recipes.ch02 import mnist_train
from aigc_lib.training import History

EPOCHS = {"smoke": 1, "standard": 30, "full": 100}
BATCH = 128  # the PyTorch VAE example's batch


def train_conv_vae(sizes: dict[str, Any], data: ImageData, device: Any, **run: Any) -> tuple[vae.VAE, History]:
    """`data` with .images in [0, 1] (binarised afresh in every batch); the trained VAE (20-D latent) and its
    history."""
    torch.manual_seed(0)
    model = vae.VAE(vae.VAEConfig(kind="conv", latent_dim=20)).to(device)
    run.setdefault("desc", "VAE, conv")
    steps = sizes["epochs"] * (len(data.images) // BATCH)
    history = vae.train_vae(model, data.images, steps, binarize=True, **run)
    return model, history


RECIPES = (
    Recipe(
        name="03.conv_vae",
        summary="convolutional VAE, 20-D latent, Bernoulli decoder on dynamically binarised digits, batch 128, Adam 1e-3",
        sizes={budget: {"epochs": n} for budget, n in EPOCHS.items()},
        checkpoint="03_vae_conv_bin_{budget}.pt",
        train=train_conv_vae,
        data=mnist_train,
    ),
)
