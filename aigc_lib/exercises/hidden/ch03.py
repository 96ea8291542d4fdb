"""Chapter 03 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch03 import gaussian_case, interp_case, loss_case, reparam_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "03.reparameterize": (
        Case("hidden: float64 inputs", lambda: reparam_case(8, 16, 100, torch.float64)),
        Case("hidden: a tiny variance", lambda: {**reparam_case(3, 4, 101), "logvar": torch.full((3, 4), -20.0)}),
    ),
    "03.gaussian_kl": (
        Case("hidden: float64, many latent dimensions", lambda: gaussian_case(6, 32, 102, torch.float64)),
        Case(
            "hidden: a posterior wider than the prior",
            lambda: {**gaussian_case(2, 4, 103), "logvar": torch.full((2, 4), 3.0)},
        ),
    ),
    "03.vae_loss": (
        Case("hidden: float64 colour images", lambda: loss_case(3, 6, 104, shape=(3, 8, 8), dtype=torch.float64)),
        Case(
            "hidden: very confident logits on binary pixels (must stay finite)",
            lambda: {
                **loss_case(2, 3, 105, shape=(1, 5, 5)),
                "logits": 50 * (torch.arange(50).reshape(2, 1, 5, 5) % 2 * 2 - 1).float(),
                "x": (torch.arange(50).reshape(2, 1, 5, 5) % 3 == 0).float(),
            },
        ),
    ),
    "03.interpolate": (
        Case("hidden: float64 codes", lambda: interp_case(7, 5, 106, torch.float64)),
        Case(
            "hidden: the same start and end (a constant path)",
            lambda: {**interp_case(3, 4, 107), "z1": interp_case(3, 4, 107)["z0"]},
        ),
    ),
}
