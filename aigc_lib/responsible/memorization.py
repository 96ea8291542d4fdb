"""Memorisation: how close generated samples come to their nearest training example.

The idea of Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX Security 2023): a
generated image that is (almost) a copy of one training image, much closer to it than to any other, is
evidence that the model memorised it. Here: Euclidean distances between flattened images, computed in
chunks so a large training set fits in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aigc_lib.checks import check_int, shape_of


def nearest_neighbours(samples: Tensor, train: Tensor, k: int = 2, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For each sample, the k smallest Euclidean distances to `train` and their indices: (N, k) each,
    ascending. `samples` (N, ...) and `train` (M, ...) with the same trailing shape."""
    if not isinstance(samples, Tensor) or not isinstance(train, Tensor) or samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples, train: expected tensors with the same trailing shape, got {shape_of(samples)} "
                         f"and {shape_of(train)}")  # fmt: skip
    check_int("k", k, high=len(train))
    check_int("chunk", chunk)
    x, y = samples.flatten(1).double(), train.flatten(1).double()
    dists, idx = [], []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], y)
        best = d.topk(k, dim=1, largest=False)
        dists.append(best.values)
        idx.append(best.indices)
    return torch.cat(dists), torch.cat(idx)


def copy_ratio(samples: Tensor, train: Tensor) -> Tensor:
    """Distance to the nearest training example over the distance to the second nearest, per sample:
    near 0 for a near-copy of one example, near 1 for a sample that is not closer to any one of them."""
    d, _ = nearest_neighbours(samples, train, k=2)
    return d[:, 0] / d[:, 1].clamp_min(1e-12)
