"""Chapter 03 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch03`)."""

from __future__ import annotations

import torch

from aigc_lib import vae
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_case(B: int, D: int, seed: int, dtype=torch.float32) -> dict:
    g = _gen(seed)
    return {"mu": torch.randn(B, D, generator=g, dtype=dtype), "logvar": torch.randn(B, D, generator=g, dtype=dtype)}


def reparam_case(B: int, D: int, seed: int, dtype=torch.float32) -> dict:
    case = gaussian_case(B, D, seed, dtype)
    return {**case, "eps": torch.randn(B, D, generator=_gen(seed + 1), dtype=dtype)}


def loss_case(B: int, D: int, seed: int, shape=(1, 28, 28), dtype=torch.float32) -> dict:
    g = _gen(seed)
    return {
        "logits": 3 * torch.randn(B, *shape, generator=g, dtype=dtype),
        "x": torch.rand(B, *shape, generator=g, dtype=dtype),
        **gaussian_case(B, D, seed + 1, dtype),
    }


def interp_case(D: int, steps: int, seed: int, dtype=torch.float32) -> dict:
    g = _gen(seed)
    return {
        "z0": torch.randn(D, generator=g, dtype=dtype),
        "z1": torch.randn(D, generator=g, dtype=dtype),
        "steps": steps,
    }


EXERCISES = (
    Exercise(
        key="03.reparameterize",
        function="reparameterize",
        nudge="logvar is the log of the variance: what must eps be multiplied by? Return a new tensor; leave mu and "
        "the other inputs unchanged.",
        reference=vae.reparameterize,
        hint="sigma = exp(0.5 * logvar) (logvar is log sigma^2, not log sigma); z = mu + sigma * eps.",
        cases=(
            Case("B=1, D=2", lambda: reparam_case(1, 2, 0)),
            Case("B=4, D=3", lambda: reparam_case(4, 3, 1)),
            Case("logvar = 0 gives z = mu + eps", lambda: {**reparam_case(2, 3, 2), "logvar": torch.zeros(2, 3)}),
        ),
    ),
    Exercise(
        key="03.gaussian_kl",
        function="gaussian_kl",
        nudge="One KL per row of the batch: which dimension do you reduce, and do you sum or average? exp(logvar) "
        "is the variance, not the standard deviation.",
        reference=vae.gaussian_kl,
        hint="KL = 0.5 * sum over the latent dimension of (mu^2 + exp(logvar) - 1 - logvar): one number per row, shape (B,).",
        cases=(
            Case("q = N(0, I) gives 0", lambda: {"mu": torch.zeros(2, 3), "logvar": torch.zeros(2, 3)}),
            Case("B=4, D=5", lambda: gaussian_case(4, 5, 3)),
            Case(
                "B=1, D=1, mu = 2, sigma = 1 gives 2",
                lambda: {"mu": torch.tensor([[2.0]]), "logvar": torch.zeros(1, 1)},
            ),
        ),
    ),
    Exercise(
        key="03.vae_loss",
        function="vae_loss",
        nudge="Per image: the reconstruction term over ALL its pixels plus the KL over all latent dimensions; then "
        "one number for the batch. Compute the cross-entropy from the logits so that huge logits stay finite.",
        reference=vae.vae_loss,
        hint="Per image: reconstruction = binary cross-entropy with logits SUMMED over pixels (not averaged), plus the KL "
        "summed over latent dimensions; then the mean over the batch. Use F.binary_cross_entropy_with_logits(..., "
        "reduction='none').",
        cases=(
            Case("B=2, 28x28 images, D=4", lambda: loss_case(2, 4, 4)),
            Case("B=5, 2x3 'images', D=2", lambda: loss_case(5, 2, 5, shape=(1, 2, 3))),
            Case(
                "q = N(0, I): the loss is the reconstruction alone",
                lambda: {**loss_case(3, 2, 6, shape=(1, 4, 4)), "mu": torch.zeros(3, 2), "logvar": torch.zeros(3, 2)},
            ),
        ),
    ),
    Exercise(
        key="03.interpolate",
        function="interpolate",
        nudge="The path must start exactly at z0, end exactly at z1 and have `steps` points; the result is "
        "(steps, D) in z0's dtype.",
        reference=vae.interpolate,
        hint="t = torch.linspace(0, 1, steps) as a column (steps, 1); return (1 - t) * z0 + t * z1, shape (steps, D).",
        cases=(
            Case("D=2, 3 steps", lambda: {"z0": torch.tensor([0.0, 0.0]), "z1": torch.tensor([2.0, -4.0]), "steps": 3}),
            Case("D=20, 8 steps", lambda: interp_case(20, 8, 7)),
            Case("2 steps are the endpoints", lambda: interp_case(5, 2, 8)),
        ),
    ),
)
