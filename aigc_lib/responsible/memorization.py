"""Memorisation: how close generated samples come to their nearest training example.

Inspired by Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX Security 2023): a
generated image much closer to one training image than to the rest of its neighbourhood is evidence
that the model memorised that image. Their test divides the distance to the nearest training image by
the mean distance to the 50 nearest (their CIFAR-10 experiments, with a threshold); `copy_score` is that ratio here,
with Euclidean distances between flattened images, computed in chunks so a large training set fits in
memory. A duplicated training image would be its own neighbour and hide the copy, so duplicates are
removed first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aigc_lib.checks import check_int, shape_of


def _check_pair(samples: object, train: object) -> None:
    ok = isinstance(samples, Tensor) and isinstance(train, Tensor) and samples.ndim >= 1 and train.ndim >= 1
    if not ok or samples.shape[1:] != train.shape[1:] or not samples.is_floating_point():
        raise ValueError(
            f"samples, train: expected float tensors with the same trailing shape, got {shape_of(samples)} "
            f"and {shape_of(train)}"
        )
    if not len(samples) or not len(train):
        raise ValueError(f"samples, train: expected at least one of each, got {len(samples)} and {len(train)}")


def nearest_neighbours(samples: Tensor, train: Tensor, k: int = 1, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For each sample, the k smallest Euclidean distances to `train` and their indices in it: (N, k)
    each, ascending. `samples` (N, ...) and `train` (M, ...) with the same trailing shape; both are read
    chunk by chunk in float64, where |a|² − 2a·b + |b|² (cdist's fast path) keeps distances near 0 to
    about 1e-7 (float32 would lose them below about 1e-2 on images)."""
    _check_pair(samples, train)
    check_int("k", k, high=len(train))
    check_int("chunk", chunk)
    x, y = samples.flatten(1), train.flatten(1)
    dists, idx = [], []
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk].double()
        best_d = torch.full((len(xi), 0), 0.0, dtype=torch.float64, device=x.device)
        best_i = torch.zeros((len(xi), 0), dtype=torch.long, device=x.device)
        for j in range(0, len(y), chunk):  # merge this chunk's k nearest into the running k nearest
            d = torch.cdist(xi, y[j : j + chunk].to(device=x.device, dtype=torch.float64))
            d, where = torch.cat([best_d, d], 1), torch.cat([best_i, torch.arange(j, j + d.shape[1]).expand_as(d)], 1)
            top = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            best_d, best_i = top.values, where.gather(1, top.indices)
        dists.append(best_d)
        idx.append(best_i)
    return torch.cat(dists), torch.cat(idx)


def deduplicate(train: Tensor) -> tuple[Tensor, Tensor]:
    """(the distinct rows of `train` (exact duplicates removed, first occurrence kept, in order),
    how many times each occurs)."""
    if not isinstance(train, Tensor) or train.ndim < 1 or not len(train):
        raise ValueError(f"train: expected a non-empty tensor (M, ...), got {shape_of(train)}")
    _, inverse, counts = torch.unique(train.flatten(1), dim=0, return_inverse=True, return_counts=True)
    first = torch.full((len(counts),), len(train), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(train)), "amin"
    )
    order = first.argsort()
    return train[first[order]], counts[order]


def copy_score(samples: Tensor, train: Tensor, k: int = 50) -> tuple[Tensor, Tensor]:
    """(score (N,), nearest (N,)): each sample's distance to its nearest distinct training image over the
    mean distance to its k nearest — near 0 for a near-copy of one image, near 1 for a sample no closer
    to one image than to its neighbourhood; `nearest` indexes `deduplicate(train)[0]`."""
    _check_pair(samples, train)
    distinct, _ = deduplicate(train)
    check_int("k", k, low=2, high=len(distinct))
    d, idx = nearest_neighbours(samples, distinct, k)
    return (d[:, 0] / d.mean(1).clamp_min(1e-12)).float(), idx[:, 0]
