"""Chapter 07 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch07 import attention_case, boxes_case, guidance_case, latent_case, renders_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "07.cross_attention": (
        Case(
            "hidden: float64, 3 captions of different lengths",
            lambda: attention_case(3, 9, 7, 8, 101, [7, 1, 4], torch.float64),
        ),
        Case("hidden: padding holding inf", lambda: attention_case(2, 5, 6, 4, 102, [2, 6], pad=float("inf"))),
    ),
    "07.latent_scale": (
        Case(
            "hidden: float64, a large mean",
            lambda: latent_case((32, 4, 16, 16), 103, -7.0, [3.0] * 4, torch.float64),
            rtol=1e-3,
        ),
        Case("hidden: small spreads", lambda: latent_case((100, 4, 8, 8), 104, 0.1, [0.05, 0.2, 0.1, 0.3]), rtol=1e-3),
    ),
    "07.guidance_batch": (
        Case("hidden: float64, 6 captions", lambda: guidance_case(6, 7, 5, 105, [1, 7, 3, 2, 6, 5], torch.float64)),
        Case("hidden: one token each", lambda: guidance_case(4, 1, 3, 106)),
    ),
    "07.position_of_ink": (
        Case("hidden: 40 rendered digits", lambda: renders_case(40, 107)),
        Case(
            "hidden: thin lines and single pixels near the edges",
            lambda: boxes_case([(0, 0, 0, 0), (31, 15, 31, 15), (5, 30, 27, 30), (14, 3, 14, 28), (13, 14, 18, 20)]),
        ),
    ),
}
