"""Chapter 02 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch02`)."""

from __future__ import annotations

import torch

from aigc_lib import gan
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_case(B: int, seed: int, scale: float = 2.0, dtype=torch.float32) -> dict:
    g = _gen(seed)
    return {
        "real_logits": scale * torch.randn(B, generator=g, dtype=dtype),
        "fake_logits": scale * torch.randn(B, generator=g, dtype=dtype),
    }


def generator_case(B: int, z_dim: int, ngf: int, seed: int, channels: int = 1, dtype=torch.float32) -> dict:
    torch.manual_seed(seed)  # the module's init draws from torch's global RNG
    G = gan.DCGANGenerator(gan.DCGANConfig(z_dim=z_dim, ngf=ngf, channels=channels)).to(dtype)
    # random BatchNorm affine parameters and final bias (the DCGAN init makes them 1, 0 and 0),
    # so a missing gamma, beta or b3 shows
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=_gen(seed + 1))
                m.bias.uniform_(-0.5, 0.5, generator=_gen(seed + 2))
        G.net[-2].bias.uniform_(-0.5, 0.5, generator=_gen(seed + 4))
    params = {k: v.detach().clone() for k, v in gan.generator_params(G).items()}
    return {"z": torch.randn(B, z_dim, generator=_gen(seed + 3), dtype=dtype), "params": params}


def sgd_step_case(B: int, z_dim: int, x_dim: int, seed: int, lr: float = 0.1, dtype=torch.float32) -> dict:
    g = _gen(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "g_weight": r(x_dim, z_dim),
        "g_bias": r(x_dim),
        "d_weight": r(1, x_dim),
        "d_bias": r(1),
        "real": r(B, x_dim) + 2.0,
        "z": r(B, z_dim),
        "lr": lr,
    }


STEP_TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32 results of a two-stage update: allow for operation order


def step_reference(**kwargs) -> tuple:
    return tuple(gan.toy_gan_sgd_step(**kwargs))


EXERCISES = (
    Exercise(
        key="02.discriminator_loss",
        function="discriminator_loss",
        nudge="D wants real logits high and fake logits low. Write each term from the logits (never the log of a "
        "sigmoid), and average each over its own batch: the two sizes can differ.",
        reference=gan.d_loss_minimax,
        hint="-log σ(l) = softplus(-l) and -log(1 - σ(l)) = softplus(l): average each over the batch, then add them. "
        "Never take the log of torch.sigmoid(l): it rounds to 0 or 1 for large |l|.",
        cases=(
            Case("B=4, moderate logits", lambda: logits_case(4, 0)),
            Case(
                "D is unsure: all logits 0 give 2 log 2",
                lambda: {"real_logits": torch.zeros(3), "fake_logits": torch.zeros(3)},
            ),
            Case(
                "different real and fake batch sizes (5 and 2)",
                lambda: {
                    "real_logits": torch.randn(5, generator=_gen(1)),
                    "fake_logits": torch.randn(2, generator=_gen(2)),
                },
            ),
        ),
    ),
    Exercise(
        key="02.generator_loss",
        function="generator_loss",
        nudge="G wants D to call its fakes real: which sign of the logit does that reward? Average over the batch, "
        "and make sure a logit of -100 does not give inf.",
        reference=gan.g_loss_nonsaturating,
        hint="The non-saturating loss is -mean(log σ(D(G(z)))) = mean(softplus(-fake_logits)).",
        cases=(
            Case("B=4, moderate logits", lambda: {"fake_logits": logits_case(4, 3)["fake_logits"]}),
            Case("logit 0 (D unsure) gives log 2", lambda: {"fake_logits": torch.zeros(1)}),
            Case(
                "B=6, D confident the fakes are fake (logits near -8)",
                lambda: {"fake_logits": -8.0 + torch.randn(6, generator=_gen(4))},
            ),
        ),
    ),
    Exercise(
        key="02.dcgan_generator",
        function="dcgan_generator",
        nudge="Work out each transposed convolution's output size from its input size. Every tensor in params has a "
        "use (is one unused?); batch norm uses this batch's statistics; the output lies in [-1, 1].",
        reference=gan.dcgan_generator_forward,
        hint="A transposed convolution gives out = (in - 1)·stride - 2·padding + kernel: 1 -> 7 needs kernel 7, "
        "stride 1, padding 0; 7 -> 14 and 14 -> 28 need kernel 4, stride 2, padding 1. Use "
        "F.batch_norm(h, None, None, gamma, beta, training=True), then ReLU; tanh at the end.",
        cases=(
            Case("B=2, z_dim=8, ngf=4", lambda: generator_case(2, 8, 4, 0)),
            Case("B=5, z_dim=16, ngf=8", lambda: generator_case(5, 16, 8, 1)),
            Case("B=3, 3 output channels (RGB)", lambda: generator_case(3, 8, 4, 2, channels=3)),
        ),
    ),
    Exercise(
        key="02.gan_sgd_step",
        function="gan_sgd_step",
        nudge="Two steps in order: D first (its loss must not reach G's parameters), then G against the UPDATED D. "
        "SGD goes downhill. Return plain values, not parts of a computation graph.",
        reference=step_reference,
        hint="D step: d_loss from D(real) and D(fake.detach()), gradients for (d_weight, d_bias) only, update them. "
        "G step: recompute the fake logits with the NEW D, g_loss = mean(softplus(-logits)), gradients for "
        "(g_weight, g_bias), update. Return the 4 new tensors and the 2 losses, all detached.",
        cases=(
            Case("B=4, z_dim=2, x_dim=2", lambda: sgd_step_case(4, 2, 2, 0), **STEP_TOL),
            Case("B=8, z_dim=3, x_dim=5, lr=0.5", lambda: sgd_step_case(8, 3, 5, 1, lr=0.5), **STEP_TOL),
            Case("B=1, z_dim=1, x_dim=1", lambda: sgd_step_case(1, 1, 1, 2), **STEP_TOL),
        ),
    ),
)
