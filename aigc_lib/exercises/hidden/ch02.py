"""Chapter 02 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch02 import STEP_TOL, _gen, generator_case, logits_case, sgd_step_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "02.discriminator_loss": (
        Case(
            "hidden: a very confident D (huge logits must not give inf)",
            lambda: {"real_logits": torch.tensor([100.0, 30.0, -100.0]), "fake_logits": torch.tensor([-100.0, 120.0])},
        ),
        Case("hidden: float64 logits", lambda: logits_case(16, 100, scale=5.0, dtype=torch.float64)),
    ),
    "02.generator_loss": (
        Case(
            "hidden: fakes D rejects with huge confidence (must not give inf)",
            lambda: {"fake_logits": torch.tensor([-100.0, -50.0, 0.5])},
        ),
        Case(
            "hidden: float64 logits",
            lambda: {"fake_logits": 3 * torch.randn(9, generator=_gen(101), dtype=torch.float64)},
        ),
    ),
    "02.dcgan_generator": (
        Case(
            "hidden: float64 weights and noise",
            lambda: generator_case(4, 10, 6, 102, dtype=torch.float64),
            rtol=1e-9,
            atol=1e-10,
        ),
        Case("hidden: a batch of one, a tiny network", lambda: generator_case(1, 3, 2, 103)),
    ),
    "02.gan_sgd_step": (
        Case(
            "hidden: float64 parameters and data",
            lambda: sgd_step_case(16, 4, 3, 104, lr=0.05, dtype=torch.float64),
            rtol=1e-9,
            atol=1e-10,
        ),
        Case(
            "hidden: real data far from the fakes (a confident D)",
            lambda: {**sgd_step_case(6, 2, 2, 105), "real": 20.0 + torch.randn(6, 2, generator=_gen(106))},
            **STEP_TOL,
        ),
    ),
}
