"""Chapter 02 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch02 import STEP_TOL, _gen, generator_case, logits_case, sgd_step_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "02.discriminator_loss": (
        Case("hidden: confident D, logits of size 100 (naive log(sigmoid) gives inf)",
             lambda: {"real_logits": torch.tensor([100.0, 30.0, -100.0]), "fake_logits": torch.tensor([-100.0, 120.0])}),
        Case("hidden: float64, B=16", lambda: logits_case(16, 100, scale=5.0, dtype=torch.float64)),
    ),
    "02.generator_loss": (
        Case("hidden: fakes judged fake with logit -100 (the saturating regime)",
             lambda: {"fake_logits": torch.tensor([-100.0, -50.0, 0.5])}),
        Case("hidden: float64, B=9", lambda: {"fake_logits": 3 * torch.randn(9, generator=_gen(101), dtype=torch.float64)}),
    ),
    "02.dcgan_generator": (
        Case("hidden: float64, B=4, z_dim=10, ngf=6", lambda: generator_case(4, 10, 6, 102, dtype=torch.float64), rtol=1e-9, atol=1e-10),
        Case("hidden: B=1, z_dim=3, ngf=2", lambda: generator_case(1, 3, 2, 103)),
    ),
    "02.gan_sgd_step": (
        Case("hidden: float64, B=16, z_dim=4, x_dim=3, lr=0.05",
             lambda: sgd_step_case(16, 4, 3, 104, lr=0.05, dtype=torch.float64), rtol=1e-9, atol=1e-10),
        Case("hidden: real data far from the fakes (D confident)",
             lambda: {**sgd_step_case(6, 2, 2, 105), "real": 20.0 + torch.randn(6, 2, generator=_gen(106))},
             **STEP_TOL),
    ),
}
