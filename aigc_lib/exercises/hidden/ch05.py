"""Chapter 05 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib import diffusion
from aigc_lib.exercises.ch05 import ddim_case, guidance_case, posterior_case, q_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "05.q_sample": (
        Case(
            "hidden: float64 colour images, t at both ends of the chain",
            lambda: q_case([0, 1, 250, 999], 100, shape=(3, 8, 8), dtype=torch.float64),
        ),
        Case(
            "hidden: another schedule (cosine)",
            lambda: {**q_case([5, 900], 101), "betas": diffusion.cosine_schedule(1000).betas},
        ),
    ),
    "05.posterior_mean": (
        Case(
            "hidden: float64 images, t at both ends of the chain",
            lambda: posterior_case([0, 2, 600, 998], 102, dtype=torch.float64),
        ),
        Case(
            "hidden: another schedule (cosine)",
            lambda: {**posterior_case([1, 999], 103), "betas": diffusion.cosine_schedule(1000).betas},
        ),
    ),
    "05.ddim_step": (
        Case("hidden: float64 images", lambda: ddim_case(40, 20, 104, dtype=torch.float64)),
        Case(
            "hidden: another schedule (cosine), from the noisiest step",
            lambda: ddim_case(999, 899, 105, betas=diffusion.cosine_schedule(1000).betas),
        ),
    ),
    "05.guided_eps": (
        Case("hidden: float64, a large scale", lambda: guidance_case(7.5, 106, dtype=torch.float64)),
        Case("hidden: a negative scale (away from the condition)", lambda: guidance_case(-1.0, 107, B=1)),
    ),
}
