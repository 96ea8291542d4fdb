"""Chapter 00 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch00 import _gen
from aigc_lib.exercises.core import Case

HIDDEN = {
    "00.count_bigrams": (
        Case("hidden: a single id", lambda: {"ids": torch.tensor([2]), "vocab_size": 3}),
        Case("hidden: 5,000 random ids, V = 65",
             lambda: {"ids": torch.randint(0, 65, (5000,), generator=_gen(10)), "vocab_size": 65}),
    ),
    "00.next_char_probs": (
        Case("hidden: all-zero counts, alpha = 1", lambda: {"counts": torch.zeros(7, dtype=torch.int64), "alpha": 1.0}),
        Case("hidden: (2, 3, 65) counts, alpha = 0.01",
             lambda: {"counts": torch.randint(0, 50, (2, 3, 65), generator=_gen(11)), "alpha": 0.01}),
    ),
    "00.apply_temperature": (
        Case("hidden: large logits, T = 0.1 (must not overflow)",
             lambda: {"logits": torch.tensor([100.0, 99.0, -50.0]), "temperature": 0.1}),
        Case("hidden: float64 (2, 4, 7) logits, T = 3",
             lambda: {"logits": torch.randn(2, 4, 7, generator=_gen(12), dtype=torch.float64), "temperature": 3.0}),
    ),
    "00.fit_pixel_model": (
        Case("hidden: grey-level 3x28x28 images, alpha = 0.5",
             lambda: {"images": torch.rand(3, 28, 28, generator=_gen(13)), "alpha": 0.5}),
        Case("hidden: one float64 image, alpha = 2",
             lambda: {"images": torch.rand(1, 1, 4, 4, generator=_gen(14), dtype=torch.float64), "alpha": 2.0}),
    ),
}
