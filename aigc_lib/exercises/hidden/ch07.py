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
        Case(
            "hidden: padding holding inf", lambda: attention_case(2, 5, 6, 4, 102, [2, 6], pad=float("inf")), points=0.5
        ),
        Case(
            "hidden: real tokens not first, ordinary values in the padding",
            lambda: attention_case(
                2,
                4,
                5,
                4,
                108,
                pad=None,
                mask=torch.tensor([[True, False, True, False, True], [False, True, True, False, False]]),
            ),
            points=0.5,
        ),
    ),
    "07.latent_scale": (
        Case(
            "hidden: float64, a large mean",
            lambda: latent_case((32, 4, 16, 16), 103, -7.0, [3.0] * 4, torch.float64),
            rtol=1e-3,
        ),
        Case(
            "hidden: small spreads",
            lambda: latent_case((100, 4, 8, 8), 104, 0.1, [0.05, 0.2, 0.1, 0.3]),
            rtol=1e-3,
            points=0.5,
        ),
        Case(
            "hidden: a different mean per channel",
            lambda: latent_case((64, 4, 8, 8), 109, [-3.0, 0.0, 2.0, 5.0]),
            rtol=1e-3,
            points=0.5,
        ),
    ),
    "07.guidance_batch": (
        Case("hidden: float64, 6 captions", lambda: guidance_case(6, 7, 5, 105, [1, 7, 3, 2, 6, 5], torch.float64)),
        Case("hidden: one token each", lambda: guidance_case(4, 1, 3, 106)),
    ),
    "07.position_of_ink": (
        Case("hidden: 40 rendered digits and 8 more", lambda: renders_case(48, 107), points=0.5),
        Case(
            "hidden: thin lines and single pixels near the edges",
            lambda: boxes_case([(0, 0, 0, 0), (31, 15, 31, 15), (5, 30, 27, 30), (14, 3, 14, 28), (13, 14, 18, 20)]),
            points=0.5,
        ),
        Case(
            "hidden: offsets of 2.5, 3 and 3.5 on each axis",
            lambda: boxes_case(
                [(10, 13, 21, 23), (10, 8, 21, 18), (10, 13, 21, 24), (13, 10, 23, 21), (7, 10, 18, 21), (8, 8, 23, 26)]
            ),
            points=0.5,
        ),
        Case(
            "hidden: a 32 x 48 canvas",
            lambda: boxes_case([(10, 2, 21, 13), (10, 30, 21, 41), (10, 19, 21, 29)], 32, 48),
            points=0.5,
        ),
    ),
}
