"""Chapter 03 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch03 import gaussian_case, interp_case, loss_case, reparam_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "03.reparameterize": (
        Case("hidden: float64, B=8, D=16", lambda: reparam_case(8, 16, 100, torch.float64)),
        Case("hidden: very small variance (logvar = -20)", lambda: {**reparam_case(3, 4, 101), "logvar": torch.full((3, 4), -20.0)}),
    ),
    "03.gaussian_kl": (
        Case("hidden: float64, B=6, D=32", lambda: gaussian_case(6, 32, 102, torch.float64)),
        Case("hidden: wide posterior (logvar = 3)", lambda: {**gaussian_case(2, 4, 103), "logvar": torch.full((2, 4), 3.0)}),
    ),
    "03.vae_loss": (
        Case("hidden: float64, B=3, 3x8x8 images, D=6", lambda: loss_case(3, 6, 104, shape=(3, 8, 8), dtype=torch.float64)),
        Case("hidden: confident logits (+-50) on binary pixels",
             lambda: {**loss_case(2, 3, 105, shape=(1, 5, 5)),
                      "logits": 50 * (torch.arange(50).reshape(2, 1, 5, 5) % 2 * 2 - 1).float(),
                      "x": (torch.arange(50).reshape(2, 1, 5, 5) % 3 == 0).float()}),
    ),
    "03.interpolate": (
        Case("hidden: float64, D=7, 5 steps", lambda: interp_case(7, 5, 106, torch.float64)),
        Case("hidden: z0 = z1 gives a constant path", lambda: {**interp_case(3, 4, 107), "z1": interp_case(3, 4, 107)["z0"]}),
    ),
}
