"""Chapter 00 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch00 import _gen
from aigc_lib.exercises.core import Case

HIDDEN = {
    "00.count_bigrams": (
        Case("hidden: a text too short to hold any pair", lambda: {"ids": torch.tensor([2]), "vocab_size": 3}),
        Case(
            "hidden: a long text over a large alphabet",
            lambda: {"ids": torch.randint(0, 65, (5000,), generator=_gen(10)), "vocab_size": 65},
        ),
    ),
    "00.next_char_probs": (
        Case(
            "hidden: a context never seen (all counts zero), smoothed",
            lambda: {"counts": torch.zeros(7, dtype=torch.int64), "alpha": 1.0},
        ),
        Case(
            "hidden: a stack of tables (more than two dimensions), light smoothing",
            lambda: {"counts": torch.randint(0, 50, (2, 3, 65), generator=_gen(11)), "alpha": 0.01},
        ),
    ),
    "00.apply_temperature": (
        Case(
            "hidden: large logits at a low temperature (must not overflow)",
            lambda: {"logits": torch.tensor([100.0, 99.0, -50.0]), "temperature": 0.1},
        ),
        Case(
            "hidden: float64 logits with several leading dimensions",
            lambda: {"logits": torch.randn(2, 4, 7, generator=_gen(12), dtype=torch.float64), "temperature": 3.0},
        ),
    ),
    "00.fit_pixel_model": (
        Case(
            "hidden: grey-level images without a channel dimension",
            lambda: {"images": torch.rand(3, 28, 28, generator=_gen(13)), "alpha": 0.5},
        ),
        Case(
            "hidden: a single float64 image (the result keeps its dtype)",
            lambda: {"images": torch.rand(1, 1, 4, 4, generator=_gen(14), dtype=torch.float64), "alpha": 2.0},
        ),
    ),
}
