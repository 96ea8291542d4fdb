"""Chapter 04 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib import transformer
from aigc_lib.exercises.ch04 import far_scores, heads_case, merge_case, qkv_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "04.attention": (
        Case(
            "hidden: float64, batch and head dimensions, scores far from 0 (exp must not overflow)",
            lambda: far_scores(qkv_case((2, 3), 3, 6, 16, 5, 100, dtype=torch.float64), 800.0),
        ),
        Case(
            "hidden: fewer queries than keys (after a cache: an offset causal mask)",
            lambda: {**qkv_case((1,), 2, 5, 4, 2, 101), "mask": transformer.causal_mask(2, 5)},
        ),
    ),
    "04.causal_mask": (
        Case("hidden: a short sequence", lambda: {"T": 2}),
        Case("hidden: a longer sequence", lambda: {"T": 17}),
    ),
    "04.split_heads": (
        Case("hidden: float64, many heads", lambda: heads_case(2, 7, 32, 8, 102, torch.float64)),
        Case("hidden: one channel per head", lambda: heads_case(1, 3, 4, 4, 103)),
    ),
    "04.merge_heads": (
        Case("hidden: float64, many heads", lambda: merge_case(2, 8, 7, 4, 104, torch.float64)),
        Case(
            "hidden: merging undoes split_heads",
            lambda: {"x": transformer.split_heads(heads_case(2, 5, 12, 3, 105)["x"], 3)},
        ),
    ),
    "04.sinusoidal_positions": (
        Case("hidden: a long sequence, a wide model", lambda: {"T": 128, "d": 64}, atol=1e-4),
        Case("hidden: a short sequence, a very wide model", lambda: {"T": 3, "d": 128}, atol=1e-5),
    ),
}
