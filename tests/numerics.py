"""Helpers shared by the library tests: seeded generators and tensors, and a tight float comparison."""

from __future__ import annotations

import torch

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype=F64, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype).requires_grad_(requires_grad)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> bool:
    """Same shape and equal within `tol` (relative and absolute)."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))
