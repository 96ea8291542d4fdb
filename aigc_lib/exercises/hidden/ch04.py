"""Chapter 04 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib import transformer
from aigc_lib.exercises.ch04 import heads_case, merge_case, qkv_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "04.attention": (
        Case("hidden: float64, 2 batch x 3 heads, T=3 queries, S=6 keys, d_k=16",
             lambda: qkv_case((2, 3), 3, 6, 16, 5, 100, dtype=torch.float64)),
        Case("hidden: queries after a cache (T=2, S=5, offset causal mask)",
             lambda: {**qkv_case((1,), 2, 5, 4, 2, 101), "mask": transformer.causal_mask(2, 5)}),
    ),
    "04.causal_mask": (
        Case("hidden: T=2", lambda: {"T": 2}),
        Case("hidden: T=17", lambda: {"T": 17}),
    ),
    "04.split_heads": (
        Case("hidden: float64, B=2, T=7, C=32, 8 heads", lambda: heads_case(2, 7, 32, 8, 102, torch.float64)),
        Case("hidden: as many heads as channels", lambda: heads_case(1, 3, 4, 4, 103)),
    ),
    "04.merge_heads": (
        Case("hidden: float64, B=2, 8 heads, T=7, d=4", lambda: merge_case(2, 8, 7, 4, 104, torch.float64)),
        Case("hidden: a split tensor comes back whole",
             lambda: {"x": transformer.split_heads(heads_case(2, 5, 12, 3, 105)["x"], 3)}),
    ),
    "04.sinusoidal_positions": (
        Case("hidden: T=128, d=64", lambda: {"T": 128, "d": 64}, atol=1e-4),
        Case("hidden: T=3, d=128", lambda: {"T": 3, "d": 128}, atol=1e-5),
    ),
}
