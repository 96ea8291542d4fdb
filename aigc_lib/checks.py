"""Argument checks shared by every module: one definition each, one wording for each message.

Public functions check their arguments here, at the library's edge, and then call private helpers
that only compute. A message names the argument, what was expected and what came instead, e.g.
`steps: expected an int >= 1, got 0`. Modules add their own checks only for what is theirs (a noise
schedule, LSTM parameters) and build them from these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shape_of(x: object) -> str:
    """How an argument looks in a message: a tensor's shape, else its type's name."""
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def check_int(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """An int (not a bool) in [low, high]."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        want = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an int {want}, got {value!r}")
    return value


def check_number(
    name: str, value: object, low: float = 0.0, high: float = math.inf, *, inclusive: bool = True
) -> float:
    """A finite real number (not a bool) in [low, high], or in (low, high) with inclusive=False
    (low=-math.inf, high=math.inf: any finite number)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = low <= value <= high if inclusive else low < value < high
    if not ok:
        if math.isinf(high) and math.isinf(low):
            want = ""  # any finite number
        elif math.isinf(high):
            want = f" {'>=' if inclusive else '>'} {low:g}"
        else:
            left, right = ("[", "]") if inclusive else ("(", ")")
            want = f" in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name}: expected a finite number{want}, got {value!r}")
    return float(value)


def check_float_tensor(
    name: str,
    t: object,
    shape: tuple[int | None, ...] | None = None,
    *,
    ndim: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A floating-point tensor; `shape` may hold None for "any size here"; `ndim` the rank alone."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point tensor, got {shape_of(t) if not isinstance(t, Tensor) else t.dtype}"
        )
    if shape is not None and (
        t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=False))
    ):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name}: expected shape {want}, got {shape_of(t)}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {shape_of(t)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    return t


def check_like(name: str, t: object, ref_name: str, ref: Tensor) -> Tensor:
    """A tensor with the shape, dtype and device of `ref`."""
    if not isinstance(t, Tensor) or t.shape != ref.shape:
        raise ValueError(f"{name}: expected the shape of {ref_name} {shape_of(ref)}, got {shape_of(t)}")
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(
            f"{name}: expected {ref_name}'s dtype and device ({ref.dtype}, {ref.device}), got ({t.dtype}, {t.device})"
        )
    return t
