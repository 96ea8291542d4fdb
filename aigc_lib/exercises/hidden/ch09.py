"""Chapter 09 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch09 import copy_case, logits_case, text_case, weight_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "09.quantize_int8": (
        Case(
            "hidden: a larger layer of small weights, like a trained network's",
            lambda: weight_case(sizes=[0.02 + 0.003 * i for i in range(40)], cols=48, seed=101),
        ),
        Case(
            "hidden: a single column, with rows of zeros among its rows",
            lambda: weight_case([[0.0], [-0.3], [2.5], [0.0], [1e-3]]),
            points=0.5,
        ),
        Case(
            "hidden: float64 rows from a millionth to ten thousand",
            lambda: weight_case(sizes=(1e-6, 1e4, 0.5, 0.0), cols=7, seed=102, dtype=torch.float64),
            points=0.5,
        ),
    ),
    "09.distillation_loss": (
        Case(
            "hidden: a teacher that rules tokens out (logits of minus infinity)",
            lambda: logits_case((2, 3, 9), 103, 2.0, ruled_out=0.3),
        ),
        Case(
            "hidden: float64 logits at a high temperature",
            lambda: logits_case((5, 20), 104, 8.0, torch.float64),
            points=0.5,
        ),
        Case("hidden: a temperature below one sharpens", lambda: logits_case((6, 4), 105, 0.5), points=0.5),
    ),
    "09.watermark_z": (
        Case(
            "hidden: a watermarked text, a quarter of each list green",
            lambda: text_case(40, 104, 0.25, n=150, seed=106, bias=0.9),
        ),
        Case("hidden: two tokens, a single pair", lambda: text_case(5, 105, 0.4, ids=[3, 1]), points=0.5),
        Case(
            "hidden: a long watermarked text over few tokens, most pairs repeated",
            lambda: text_case(16, 106, 0.25, n=300, seed=107, bias=0.9),
            points=0.5,
        ),
    ),
    "09.copy_score": (
        Case(
            "hidden: float64 images against a larger training set",
            lambda: copy_case(
                30, 150, (1, 8, 8), 10, 108, near=[(0, 5), (9, 140)], exact=[(20, 77)], dtype=torch.float64
            ),
        ),
        Case(
            "hidden: k as large as the training set", lambda: copy_case(5, 9, (4,), 9, 109, near=[(3, 2)]), points=0.5
        ),
        Case("hidden: one sample, k of two", lambda: copy_case(1, 7, (2, 3), 2, 110, near=[(0, 6)]), points=0.5),
    ),
}
