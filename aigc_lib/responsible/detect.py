"""Accountable: telling generated images from real ones.

A small convolutional classifier, real (label 1) against generated (label 0), trained on one
generator's samples and then asked about another's: what it learned may be that generator's
fingerprint rather than "generated" in general.
"""

from __future__ import annotations

from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_float_tensor, check_int, check_number
from aigc_lib.runtime import eval_mode, step_generator
from aigc_lib.training import History, RunOptions, fit


class FakeDetector(nn.Module):
    """(N, C, H, W) images in [0, 1] -> (N,) logits of "real": three 3×3 convolutions (16, 32, 32
    channels, the first two followed by 2×2 max-pooling), global average pooling, a linear read-out."""

    def __init__(self, channels: int = 1):
        super().__init__()
        c = check_int("channels", channels)
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.readout = nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x * 2 - 1).mean((2, 3)))[:, 0]


def _check_images(name: str, images: object) -> Tensor:
    check_float_tensor(name, images, ndim=4)
    if not len(images):
        raise ValueError(f"{name}: expected at least one image, got none")
    return images


def train_detector(
    model: FakeDetector,
    real: Tensor,
    fake: Tensor,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Binary cross-entropy, real = 1 and fake = 0, each batch half real and half fake drawn at random
    (seeded by (seed, step), so a resumed run draws the same batches); AdamW at `lr`."""
    if not isinstance(model, FakeDetector):
        raise ValueError(f"model: expected a FakeDetector, got {type(model).__name__}")
    real, fake = _check_images("real", real), _check_images("fake", fake)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real, fake: expected images of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    half = check_int("batch_size", batch_size, low=2) // 2
    opt = torch.optim.AdamW(model.parameters(), lr=check_number("lr", lr, inclusive=False))
    target = torch.cat([torch.ones(half), torch.zeros(half)])

    def batch(step: int) -> tuple[Tensor, Tensor]:
        g = step_generator(seed, step)
        pick_real, pick_fake = (
            torch.randint(len(real), (half,), generator=g),
            torch.randint(len(fake), (half,), generator=g),
        )
        return torch.cat([real[pick_real], fake[pick_fake]]), target

    def loss_fn(net: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        x, y = b
        return F.binary_cross_entropy_with_logits(net(x), y)

    run.setdefault("desc", "detector")
    return fit(model, opt, batch, loss_fn, check_int("steps", steps), **run)


@torch.no_grad()
def real_probability(model: FakeDetector, images: Tensor, batch_size: int = 500) -> Tensor:
    """(N,) the detector's probability that each image is real."""
    images = _check_images("images", images)
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat([torch.sigmoid(model(images[i : i + batch_size].to(device))).cpu()
                          for i in range(0, len(images), batch_size)])  # fmt: skip


def detection_accuracy(model: FakeDetector, real: Tensor, fake: Tensor) -> float:
    """Balanced accuracy at threshold 1/2: the mean of the real images called real and the fakes called fake."""
    p_real, p_fake = real_probability(model, real), real_probability(model, fake)
    return 0.5 * (float((p_real > 0.5).float().mean()) + float((p_fake <= 0.5).float().mean()))
