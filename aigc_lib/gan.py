"""Chapter 02 — generative adversarial networks: the minimax game, losses from logits, MLP GAN, DCGAN.

The game (Goodfellow et al., NeurIPS 2014), D outputs a LOGIT l = D(x) and σ(l) is "x is real":

    min_G max_D  V(D, G) = E_x[log σ(D(x))] + E_z[log(1 − σ(D(G(z))))]

    discriminator  minimises −V:  softplus(−D(x)) + softplus(D(G(z)))        d_loss_minimax
    generator      minimax:       E_z[log(1 − σ(D(G(z))))] = −softplus(D(G(z)))  g_loss_minimax
                   non-saturating: −E_z[log σ(D(G(z)))] = softplus(−D(G(z)))      g_loss_nonsaturating
    hinge (Lim & Ye 2017; Miyato et al. 2018):  relu(1 − D(x)) + relu(1 + D(G(z))),  −D(G(z))
    WGAN-GP (Gulrajani et al. 2017):  D(G(z)) − D(x) + λ (‖∇D(x̂)‖₂ − 1)²,  −D(G(z))
    R1 (Mescheder et al. 2018), added to any D loss:  γ/2 · E_x ‖∇_x D(x)‖²   at real x   r1_penalty
    spectral normalisation (Miyato et al. 2018): W / σ_max(W) in every layer of D    d_norm / spectral

Every loss works on logits: log σ(l) = −softplus(−l) never takes the log of a rounded probability,
so a confident D (|l| ≈ 100) gives finite losses and gradients, where log(sigmoid(l)) gives −inf.

One training step (`gan_step`, and `train_gan` through the shared `training.fit` loop):
    1. fake = G(z)
    2. D step: D sees real and fake.detach() (no gradient reaches G), opt_d.zero_grad, backward, step
    3. G step: D(fake) is computed AGAIN with the updated D (never D's outputs from before its
       update), opt_g.zero_grad, backward, step. G's loss also puts gradients on D's parameters;
       they are zeroed before D's next step and never applied.

Models: `MLPGenerator` / `MLPDiscriminator` (the sources' E1: G 256→512→784 with tanh, D 512→256→1)
and `DCGANGenerator` / `DCGANDiscriminator` for 28×28 (MNIST), 32×32 (CIFAR-style) or 64×64 images,
grey or RGB (Radford et al., ICLR 2016: strided transposed convolutions, BatchNorm, ReLU in G,
LeakyReLU(0.2) in D, N(0, 0.02) init, Adam 2e-4, β1 = 0.5), optionally class-conditional (G: a
label embedding joins z; D: a projection term, Miyato & Koyama, ICLR 2018), so "draw a 7" works.
Images live in [−1, 1] (tanh); `to_unit` maps them to [0, 1] for plots and the digit metrics.

Toy: `ring_of_gaussians` (8 modes on a circle) and `ring_quality` make mode collapse measurable.

Corrected from the source articles (docs/errata.md, E1, E2, E4): fakes are detached for the D step,
losses come from logits, G's loss uses D's fresh outputs, gradients are zeroed for both players,
D returns one logit per image, shape (B,), matching its targets, and every layer's output shape is
what its comment says (tests/test_gan.py checks them all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib import distributed
from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.runtime import autocast, eval_mode, step_generator
from aigc_lib.training import History, RunOptions, fit, fused_optimizer_ok

__all__ = [
    "DCGAN_SIZES",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "GANLoss",
    "LOSSES",
    "MLPDiscriminator",
    "MLPGenerator",
    "PackedDiscriminator",
    "RingQuality",
    "d_loss_minimax",
    "dcgan_generator_forward",
    "dcgan_init_",
    "discriminator_step",
    "g_loss_minimax",
    "g_loss_nonsaturating",
    "gan_step",
    "generator_params",
    "gradient_penalty",
    "r1_penalty",
    "hinge_d_loss",
    "hinge_g_loss",
    "ring_modes",
    "ring_of_gaussians",
    "ring_quality",
    "sample",
    "to_unit",
    "toy_gan_sgd_step",
    "train_gan",
    "wgan_d_loss",
    "wgan_g_loss",
]


# ---------------------------------------------------------------------------------------------
# Losses, all from logits (B,)
# ---------------------------------------------------------------------------------------------


def d_loss_minimax(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """−V for D: −E[log σ(D(x))] − E[log(1 − σ(D(G(z))))] = E[softplus(−D(x))] + E[softplus(D(G(z)))]."""
    _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    """G's side of the original game: E[log(1 − σ(D(G(z))))] = −E[softplus(D(G(z)))] (saturates early)."""
    return -F.softplus(_check_logits("fake_logits", fake_logits)).mean()


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """−E[log σ(D(G(z)))] = E[softplus(−D(G(z)))]: same fixed point, strong gradients when D wins."""
    return F.softplus(-_check_logits("fake_logits", fake_logits)).mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[relu(1 − D(x))] + E[relu(1 + D(G(z)))]."""
    _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """−E[D(G(z))] (also WGAN's generator loss)."""
    return -_check_logits("fake_logits", fake_logits).mean()


def wgan_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[D(G(z))] − E[D(x)]: minus the critic's estimate of the Wasserstein-1 distance (add the GP)."""
    _check_logits("real_logits", real_logits), _check_logits("fake_logits", fake_logits)
    return fake_logits.mean() - real_logits.mean()


wgan_g_loss = hinge_g_loss


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None = None) -> Tensor:
    """E[(‖∇_x̂ D(x̂)‖₂ − 1)²] at x̂ = εx + (1 − ε)G(z), ε ~ U(0, 1) per sample (WGAN-GP).

    Needs a critic without BatchNorm (the penalty is per sample). Differentiable: its gradient
    reaches D's parameters (create_graph=True)."""
    if not isinstance(real, Tensor) or not isinstance(fake, Tensor) or real.shape != fake.shape:
        raise ValueError(f"real, fake: expected tensors of one shape, got {shape_of(real)} and {shape_of(fake)}")
    eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat) if labels is None else D(x_hat, labels)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(D: nn.Module, real: Tensor, labels: Tensor | None = None) -> Tensor:
    """R1 = E_x[‖∇_x D(x)‖²] at REAL data (Mescheder et al., ICML 2018; D's loss adds γ/2 · R1).

    Penalising D's slope on the data is what makes the game converge locally in their analysis; unlike
    WGAN-GP's penalty it needs no interpolates and pushes the slope to 0, not to 1. Differentiable
    (create_graph=True); per sample, so D must not use BatchNorm."""
    if not isinstance(real, Tensor) or not real.is_floating_point():
        raise ValueError(f"real: expected a floating-point tensor, got {shape_of(real)}")
    x = real.detach().requires_grad_(True)
    out = D(x) if labels is None else D(x, labels)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


class GANLoss(NamedTuple):
    d: Callable[[Tensor, Tensor], Tensor]  # (real_logits, fake_logits) -> D's loss
    g: Callable[[Tensor], Tensor]  # fake_logits -> G's loss
    gp_weight: float = 0.0  # λ of the gradient penalty (WGAN-GP only)


LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(d_loss_minimax, g_loss_minimax),
    "non-saturating": GANLoss(d_loss_minimax, g_loss_nonsaturating),
    "hinge": GANLoss(hinge_d_loss, hinge_g_loss),
    "wgan-gp": GANLoss(wgan_d_loss, wgan_g_loss, gp_weight=10.0),
}


def _loss(name: object) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class MLPGenerator(nn.Module):
    """z (B, z_dim) -> Linear-LeakyReLU stack -> Linear -> [tanh] -> (B, *out_shape). E1: 100 → 256 → 512 → 784."""

    def __init__(
        self,
        z_dim: int = 100,
        hidden: Sequence[int] = (256, 512),
        out_shape: Sequence[int] = (1, 28, 28),
        tanh: bool = True,
    ):
        super().__init__()
        self.z_dim = check_int("z_dim", z_dim)
        self.out_shape = tuple(check_int("out_shape", s) for s in out_shape)
        self.n_classes = 0
        sizes = [z_dim, *(check_int("hidden", h) for h in hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(sizes[-1], math.prod(self.out_shape)))
        if tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z: expected a tensor of shape (B, {self.z_dim}), got {shape_of(z)}")
        _check_labels(labels, z.shape[0], 0)
        return self.net(z).view(z.shape[0], *self.out_shape)  # (B, *out_shape)


class MLPDiscriminator(nn.Module):
    """x (B, *in_shape) -> flatten -> Linear-LeakyReLU stack -> Linear -> logits (B,). E1: 784 → 512 → 256 → 1.

    spectral=True divides every weight by its largest singular value (spectral normalisation, Miyato et
    al., ICLR 2018), so D is at most 1-Lipschitz per layer and its slope cannot grow without bound."""

    def __init__(
        self, in_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (512, 256), spectral: bool = False
    ):
        super().__init__()
        self.in_shape = tuple(check_int("in_shape", s) for s in in_shape)
        self.n_classes = 0
        sizes = [math.prod(self.in_shape), *(check_int("hidden", h) for h in hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(sizes[-1], 1))
        if spectral:
            layers = [nn.utils.parametrizations.spectral_norm(m) if isinstance(m, nn.Linear) else m for m in layers]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"x: expected a tensor of shape (B, {', '.join(map(str, self.in_shape))}), got {shape_of(x)}"
            )
        _check_labels(labels, x.shape[0], 0)
        return self.net(x.flatten(1)).squeeze(1)  # (B,) logits, not probabilities


DCGAN_SIZES = (28, 32, 64)  # the image sides DCGANConfig.image_size accepts


@dataclass
class DCGANConfig:
    """A DCGAN for 28×28, 32×32 or 64×64 images; D mirrors G.

    image_size 28 (MNIST): G goes 1×1 → 7×7 → 14×14 → 28×28, widths 4·ngf, 2·ngf.
    image_size 32 (CIFAR-style): 1×1 → 4×4 → 8×8 → 16×16 → 32×32, widths 4·ngf, 2·ngf, ngf.
    image_size 64 (the DCGAN paper's, Radford et al. 2016): 1×1 → 4×4 → … → 64×64, widths 8·ngf … ngf."""

    z_dim: int = 64
    ngf: int = 32  # G's width: 4·ngf channels on its first map (8·ngf at 64×64), halved at each doubling
    ndf: int = 32  # D's width: ndf channels on its first map, doubled at each halving
    channels: int = 1  # 1 grey, 3 RGB
    n_classes: int = 0  # > 0: class-conditional (label embedding in G, projection in D)
    embed_dim: int = 16  # size of G's label embedding, concatenated to z
    d_norm: str = "batch"  # D's hidden-layer normalisation: "batch" (DCGAN), "spectral" (SNGAN) or "none"
    image_size: int = 28  # side of the square images: 28, 32 or 64 (DCGAN_SIZES)

    def __post_init__(self) -> None:
        for name in ("z_dim", "ngf", "ndf", "channels", "embed_dim"):
            check_int(name, getattr(self, name))
        check_int("n_classes", self.n_classes, low=0)
        if self.d_norm not in ("batch", "spectral", "none"):
            raise ValueError(f"d_norm: expected 'batch', 'spectral' or 'none', got {self.d_norm!r}")
        if type(self.image_size) is not int or self.image_size not in DCGAN_SIZES:
            raise ValueError(f"image_size: expected one of {', '.join(map(str, DCGAN_SIZES))}, got {self.image_size!r}")


def _generator_plan(c: DCGANConfig, z_in: int) -> list[tuple[int, int, int, int, int]]:
    """G's transposed convolutions as (in, out, kernel, stride, padding), from the 1×1 code to the image.

    out = (in − 1)·stride − 2·padding + kernel: 7,1,0 maps 1 → 7; 4,1,0 maps 1 → 4; 4,2,1 doubles."""
    g = c.ngf
    if c.image_size == 28:  # 1 → 7 → 14 → 28
        return [(z_in, 4 * g, 7, 1, 0), (4 * g, 2 * g, 4, 2, 1), (2 * g, c.channels, 4, 2, 1)]
    widths = [g * 2**k for k in reversed(range(int(math.log2(c.image_size)) - 2))]  # 32: 4g, 2g, g; 64: 8g … g
    plan = [(z_in, widths[0], 4, 1, 0)]  # 1 → 4
    plan += [(a, b, 4, 2, 1) for a, b in zip(widths[:-1], widths[1:], strict=True)]  # 4 → 8 → …
    return plan + [(widths[-1], c.channels, 4, 2, 1)]  # … → image_size


def _discriminator_plan(c: DCGANConfig) -> tuple[list[tuple[int, int]], int]:
    """D's stride-2 convolutions (4, 2, 1), each halving the side, as (in, out) channels; the side of the last map.

    28: 28 → 14 → 7 (ndf, 2·ndf); 32: 32 → 16 → 8 → 4 (ndf … 4·ndf); 64: 64 → … → 4 (ndf … 8·ndf)."""
    n = 2 if c.image_size == 28 else int(math.log2(c.image_size)) - 2
    widths = [c.channels] + [c.ndf * 2**k for k in range(n)]
    return list(zip(widths[:-1], widths[1:], strict=True)), c.image_size // 2**n


def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN paper init: conv / linear / embedding weights ~ N(0, 0.02), BatchNorm γ ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Module):
    """z (B, z_dim) [+ labels (B,)] -> images (B, C, S, S) in [−1, 1], S = config.image_size.

    Transposed-conv output size: out = (in − 1)·stride − 2·padding + kernel. For S = 28:
        ConvTranspose2d(z, 4ngf, 7, 1, 0)  (B, 4ngf, 7, 7):    (1−1)·1 − 0 + 7
        ConvTranspose2d(4ngf, 2ngf, 4, 2, 1)  (B, 2ngf, 14, 14): 6·2 − 2 + 4
        ConvTranspose2d(2ngf, C, 4, 2, 1)  (B, C, 28, 28):      13·2 − 2 + 4
    For S = 32 and 64 the first layer is (4, 1, 0): 1 → 4, then each (4, 2, 1) doubles, 4 → 8 → … → S.
    Every layer but the last is followed by BatchNorm and ReLU, the last by tanh."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        if not isinstance(config, DCGANConfig):
            raise ValueError(f"config: expected a DCGANConfig, got {type(config).__name__}")
        self.config = c = config
        self.z_dim, self.n_classes = c.z_dim, c.n_classes
        self.embed = nn.Embedding(c.n_classes, c.embed_dim) if c.n_classes else None
        z_in = c.z_dim + (c.embed_dim if c.n_classes else 0)
        *hidden, (a, b, k, s, p) = _generator_plan(c, z_in)
        layers: list[nn.Module] = []
        for a_, b_, k_, s_, p_ in hidden:
            layers += [nn.ConvTranspose2d(a_, b_, k_, s_, p_, bias=False), nn.BatchNorm2d(b_), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(a, b, k, s, p), nn.Tanh())
        dcgan_init_(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z: expected a tensor of shape (B, {self.z_dim}), got {shape_of(z)}")
        labels = _check_labels(labels, z.shape[0], self.n_classes)
        if labels is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (B, z_dim + embed_dim)
        return self.net(z[:, :, None, None])  # (B, C, S, S)


class DCGANDiscriminator(nn.Module):
    """images (B, C, S, S) [+ labels (B,)] -> logits (B,), S = config.image_size.

    Stride-2 convolutions Conv2d(·, ·, 4, 2, 1) halve the side: 28 → 14 → 7, or 32 → 16 → 8 → 4, or
    64 → 32 → 16 → 8 → 4 (no normalisation on the input layer), then a linear head on the flattened
    last map φ(x). On a 4×4 map that head is exactly the DCGAN paper's final 4×4 convolution to 1×1.
    Conditional: logit = w·φ(x) + b + embed(y)·φ(x) (projection discriminator)."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        if not isinstance(config, DCGANConfig):
            raise ValueError(f"config: expected a DCGANConfig, got {type(config).__name__}")
        self.config = c = config
        self.n_classes = c.n_classes
        bn = c.d_norm == "batch"
        convs, side = _discriminator_plan(c)
        (c_in, c_out), *rest = convs
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm on the input
        for a, b in rest:
            layers += [
                nn.Conv2d(a, b, 4, 2, 1, bias=not bn),
                nn.BatchNorm2d(b) if bn else nn.Identity(),
                nn.LeakyReLU(0.2),
            ]
        self.features = nn.Sequential(*layers, nn.Flatten())  # (B, F) = φ(x), F = last width · side²
        n_feat = convs[-1][1] * side * side
        self.head = nn.Linear(n_feat, 1)
        self.embed = nn.Embedding(c.n_classes, n_feat) if c.n_classes else None
        dcgan_init_(self)
        if c.d_norm == "spectral":  # every weight divided by its largest singular value (Miyato et al. 2018)
            for m in (*(m for m in self.features if isinstance(m, nn.Conv2d)), self.head, self.embed):
                if m is not None:
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        c = self.config
        want = (c.channels, c.image_size, c.image_size)
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, want))}), got {shape_of(x)}")
        labels = _check_labels(labels, x.shape[0], self.n_classes)
        phi = self.features(x)  # (B, F)
        logits = self.head(phi).squeeze(1)  # (B,)
        if labels is not None:
            logits = logits + (self.embed(labels) * phi).sum(1)
        return logits


def generator_params(G: DCGANGenerator) -> dict[str, Tensor]:
    """An unconditional DCGANGenerator's weights as plain tensors, for `dcgan_generator_forward`."""
    if not isinstance(G, DCGANGenerator) or G.n_classes or G.config.image_size != 28:
        raise ValueError("G: expected an unconditional DCGANGenerator with image_size=28")
    ct1, bn1, _, ct2, bn2, _, ct3, _ = G.net
    return {
        "w1": ct1.weight,
        "gamma1": bn1.weight,
        "beta1": bn1.bias,
        "w2": ct2.weight,
        "gamma2": bn2.weight,
        "beta2": bn2.bias,
        "w3": ct3.weight,
        "b3": ct3.bias,
    }


GENERATOR_KEYS = ("w1", "gamma1", "beta1", "w2", "gamma2", "beta2", "w3", "b3")


def dcgan_generator_forward(z: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """The DCGAN generator written with torch.nn.functional (what `DCGANGenerator` computes in train mode).

    z (B, Z) -> view (B, Z, 1, 1)
      -> conv_transpose2d(w1 (Z, 4g, 7, 7), stride 1, padding 0) -> (B, 4g, 7, 7)  -> batch norm -> ReLU
      -> conv_transpose2d(w2 (4g, 2g, 4, 4), stride 2, padding 1) -> (B, 2g, 14, 14) -> batch norm -> ReLU
      -> conv_transpose2d(w3 (2g, C, 4, 4), b3, stride 2, padding 1) -> (B, C, 28, 28) -> tanh
    Batch norm uses the batch's statistics (training mode), eps 1e-5, γ = gamma_k, β = beta_k."""
    if not isinstance(params, Mapping) or any(k not in params for k in GENERATOR_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"params: expected a dict with keys {list(GENERATOR_KEYS)}, got {got}")
    Z = params["w1"].shape[0]
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != Z:
        raise ValueError(f"z: expected a tensor of shape (B, {Z}), got {shape_of(z)}")
    p = params
    h = F.conv_transpose2d(z[:, :, None, None], p["w1"], stride=1, padding=0)  # (B, 4g, 7, 7)
    h = F.relu(F.batch_norm(h, None, None, p["gamma1"], p["beta1"], training=True))
    h = F.conv_transpose2d(h, p["w2"], stride=2, padding=1)  # (B, 2g, 14, 14)
    h = F.relu(F.batch_norm(h, None, None, p["gamma2"], p["beta2"], training=True))
    return torch.tanh(F.conv_transpose2d(h, p["w3"], p["b3"], stride=2, padding=1))  # (B, C, 28, 28)


# ---------------------------------------------------------------------------------------------
# One training step, done right
# ---------------------------------------------------------------------------------------------


def _grad_norm(module: nn.Module) -> Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _d(D: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    return D(x) if labels is None else D(x, labels)


def discriminator_step(
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    loss: str = "non-saturating",
    r1_gamma: float = 0.0,
) -> dict[str, Tensor]:
    """One update of D on real images and DETACHED fakes (G gets no gradient); diagnostics as tensors.

    r1_gamma γ > 0 adds γ/2 · `r1_penalty` to D's loss. Returns {"d_loss", "d_real", "d_fake",
    "d_grad_norm"}: d_real / d_fake are the mean σ(D(·)) before the update (for WGAN-GP and hinge they
    are just σ of the score), all detached, no host sync."""
    spec = _loss(loss)
    if not isinstance(fake, Tensor) or not isinstance(real, Tensor):
        raise ValueError(f"real, fake: expected tensors, got {type(real).__name__} and {type(fake).__name__}")
    return _discriminator_step(D, opt_d, real, fake, labels, spec, _check_r1(r1_gamma, D))


def _has_batchnorm(D: nn.Module) -> bool:
    """Per-sample penalties (WGAN-GP, R1) are wrong with BatchNorm: its output mixes the batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())


def _check_r1(r1_gamma: object, D: nn.Module) -> float:
    r1_gamma = check_number("r1_gamma", r1_gamma)
    if r1_gamma and _has_batchnorm(D):
        raise ValueError("D: the R1 penalty is per sample and needs a discriminator without BatchNorm")
    return r1_gamma


def _discriminator_step(
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None,
    spec: GANLoss,
    r1_gamma: float = 0.0,
) -> dict[str, Tensor]:
    fake = fake.detach()
    real_logits, fake_logits = _d(D, real, labels), _d(D, fake, labels)
    d_loss = spec.d(real_logits, fake_logits)
    if spec.gp_weight:
        d_loss = d_loss + spec.gp_weight * gradient_penalty(D, real, fake, labels)
    if r1_gamma:
        d_loss = d_loss + 0.5 * r1_gamma * r1_penalty(D, real, labels)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    grad_norm = _grad_norm(D)
    opt_d.step()
    return {
        "d_loss": d_loss.detach(),
        "d_real": torch.sigmoid(real_logits.detach()).mean(),
        "d_fake": torch.sigmoid(fake_logits.detach()).mean(),
        "d_grad_norm": grad_norm,
    }


def generator_loss(D: nn.Module, fake: Tensor, labels: Tensor | None = None, loss: str = "non-saturating") -> Tensor:
    """G's loss from D's CURRENT opinion of `fake` (call after D's step, never reuse older logits)."""
    return _generator_loss(D, fake, labels, _loss(loss))


def _generator_loss(D: nn.Module, fake: Tensor, labels: Tensor | None, spec: GANLoss) -> Tensor:
    return spec.g(_d(D, fake, labels))


def gan_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: Tensor,
    z: Tensor,
    labels: Tensor | None = None,
    loss: str = "non-saturating",
) -> dict[str, Tensor]:
    """One D update then one G update on the same fakes; returns detached diagnostics (no host sync).

    What `train_gan` does each step (there `fit` runs the G half: zero_grad, backward, step)."""
    fake = G(z) if labels is None else G(z, labels)
    stats = discriminator_step(D, opt_d, real, fake, labels, loss)  # checks real, fake and loss
    D.requires_grad_(False)  # G's backward goes through D but needs no gradients for D's weights
    try:
        g_loss = _generator_loss(D, fake, labels, LOSSES[loss])
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
    finally:
        D.requires_grad_(True)
    stats["g_grad_norm"] = _grad_norm(G)
    opt_g.step()
    return {"g_loss": g_loss.detach(), **stats}


def toy_gan_sgd_step(
    g_weight: Tensor, g_bias: Tensor, d_weight: Tensor, d_bias: Tensor, real: Tensor, z: Tensor, lr: float
) -> tuple[Tensor, ...]:
    """`gan_step` for a linear G(z) = z Wgᵀ + bg and a logistic D(x) = x Wdᵀ + bd, with plain SGD.

    The non-saturating game written with torch.autograd.grad instead of modules and optimizers:
    returns (g_weight, g_bias, d_weight, d_bias, d_loss, g_loss), the new parameters and the two
    losses (d_loss before D's update, g_loss after it), all detached. tests/test_gan.py pins it to
    `gan_step` with nn.Linear and torch.optim.SGD."""
    for name, t in (
        ("g_weight", g_weight),
        ("g_bias", g_bias),
        ("d_weight", d_weight),
        ("d_bias", d_bias),
        ("real", real),
        ("z", z),
    ):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {shape_of(t)}")
    lr = _check_positive("lr", lr)
    gw, gb, dw, db = (t.detach().clone().requires_grad_(True) for t in (g_weight, g_bias, d_weight, d_bias))
    fake = z @ gw.T + gb  # (B, D)
    # D step: fakes detached, so D's loss has no path to G's parameters
    d_loss = d_loss_minimax((real @ dw.T + db).squeeze(1), (fake.detach() @ dw.T + db).squeeze(1))
    g_dw, g_db = torch.autograd.grad(d_loss, (dw, db))
    dw, db = (dw - lr * g_dw).detach(), (db - lr * g_db).detach()
    # G step: D's fresh logits, gradient for G's parameters only
    g_loss = g_loss_nonsaturating((fake @ dw.T + db).squeeze(1))
    g_gw, g_gb = torch.autograd.grad(g_loss, (gw, gb))
    return (gw - lr * g_gw).detach(), (gb - lr * g_gb).detach(), dw, db, d_loss.detach(), g_loss.detach()


# ---------------------------------------------------------------------------------------------
# Training with the shared loop, sampling
# ---------------------------------------------------------------------------------------------


class _Snapshots:
    """Samples from a fixed z at chosen steps; checkpointed with the run (it has state_dict).

    Called as fit's `on_step(step)`: after `step` updates, so snapshot k shows G after k steps."""

    def __init__(self, G: nn.Module, z: Tensor | None, labels: Tensor | None, at: Sequence[int]):
        self.G, self.z, self.labels, self.at = G, z, labels, set(at)
        self.images: dict[int, Tensor] = {}

    def __call__(self, step: int) -> None:
        if self.z is not None and step in self.at and step not in self.images:
            self.images[step] = _sample(self.G, self.z, self.labels).cpu()

    def state_dict(self) -> dict:
        return {"steps": list(self.images), "images": [self.images[s] for s in self.images]}

    def load_state_dict(self, state: Mapping) -> None:
        self.images = dict(zip(state["steps"], state["images"], strict=True))


class GANRun(NamedTuple):
    history: History  # per-step "loss" (G's), d_loss, d_real, d_fake, d_grad_norm, g_grad_norm
    snapshots: dict[int, Tensor]  # step -> G(z_fixed) in [−1, 1] on the CPU, taken after that many steps


def train_gan(
    G: nn.Module,
    D: nn.Module,
    data: Tensor,
    steps: int,
    *,
    labels: Tensor | None = None,
    batch_size: int = 64,
    loss: str = "non-saturating",
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    d_steps: int = 1,
    r1_gamma: float = 0.0,
    seed: int = 0,
    snapshot_every: int | None = None,
    snapshot_z: Tensor | None = None,
    snapshot_labels: Tensor | None = None,
    **run: Unpack[RunOptions],
) -> GANRun:
    """Train G and D on `data` (N, ...) in G's output range ([−1, 1] for tanh) with `gan_step`'s recipe.

    Adam(lr, betas) for both players (the DCGAN paper's 2e-4 and β1 = 0.5). Each step draws a batch
    with a generator seeded by (seed, step) and fresh z from torch's RNG, so `checkpoint=` resumes
    exactly. `labels` (N,) int64 trains a conditional pair. With `snapshot_every`, G(snapshot_z) is
    recorded every that many steps and at the end (snapshot_z: 64 fixed codes by default).
    `d_steps` D updates per G update (WGAN-GP's paper uses 5), each on fresh real and fake batches.
    `r1_gamma` γ > 0: D's loss adds γ/2 · `r1_penalty` (Mescheder et al.'s R1).
    `run`: fit's run options (checkpoint, ckpt_every (default 500), log_every, desc (default "GAN"),
    progress, on_log, e.g. a plots.LiveLossCurve of "loss" and "d_loss")."""
    if not isinstance(G, nn.Module) or not isinstance(D, nn.Module):
        raise ValueError(f"G, D: expected nn.Modules, got {type(G).__name__} and {type(D).__name__}")
    check_int("steps", steps), check_int("batch_size", batch_size), check_int("d_steps", d_steps)
    spec, r1_gamma = _loss(loss), _check_r1(r1_gamma, D)
    distributed.require_one_process(
        "train_gan",
        "the loss function steps D's optimizer itself, where DDP cannot average D's gradients, and "
        "BatchNorm's batch statistics would be each rank's own",
    )
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2:
        raise ValueError(f"data: expected a floating-point tensor (N, ...), got {shape_of(data)}")
    n_classes = getattr(G, "n_classes", 0)
    if n_classes:
        _check_labels(labels, len(data), n_classes)
    elif labels is not None:
        raise ValueError("labels: G is unconditional; pass labels=None")
    if spec.gp_weight and _has_batchnorm(D):
        raise ValueError(f"D: loss={loss!r} needs a critic without BatchNorm (e.g. DCGANConfig(d_norm='none'))")
    param = next(G.parameters())
    device = param.device
    data = data.to(device, param.dtype)
    labels = labels.to(device) if labels is not None else None
    fused = fused_optimizer_ok(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=_check_positive("lr_g", lr_g), betas=betas, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=_check_positive("lr_d", lr_d), betas=betas, fused=fused)
    gan = nn.ModuleDict({"G": G, "D": D})  # one module: fit checkpoints both
    z_dim = G.z_dim

    if snapshot_every is not None:
        check_int("snapshot_every", snapshot_every)
        if snapshot_z is None:
            snapshot_z = torch.randn(64, z_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=param.dtype)
        if snapshot_labels is not None:
            _check_labels(snapshot_labels, len(snapshot_z), n_classes)
        elif n_classes:  # `sample`'s default: the classes 0, 1, ..., 9, 0, ... in turn
            snapshot_labels = torch.arange(len(snapshot_z)) % n_classes
    at = list(range(0, steps, snapshot_every)) if snapshot_every else []
    snaps = _Snapshots(G, snapshot_z, snapshot_labels, at)
    snaps(0)  # G before any update (a resumed run replaces it with the checkpoint's)

    def batches(step: int) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(len(data), (d_steps, batch_size), generator=step_generator(seed, step)).to(device)
        return data[idx], (labels[idx] if labels is not None else None)  # (d_steps, B, ...)

    def gan_loss(gan: nn.ModuleDict, batch: tuple[Tensor, Tensor | None]) -> dict[str, Tensor]:
        reals, ys = batch
        for k in range(d_steps):  # fresh real and fake batches for each D step
            y = ys[k] if ys is not None else None
            z = torch.randn(batch_size, z_dim, device=device, dtype=param.dtype)
            last = k == d_steps - 1
            gan["D"].requires_grad_(True)
            with torch.set_grad_enabled(last):  # only the last fakes are reused for G's loss
                fake = gan["G"](z) if y is None else gan["G"](z, y)
            stats = _discriminator_step(gan["D"], opt_d, reals[k], fake, y, spec, r1_gamma)
        gan["D"].requires_grad_(False)  # fit's backward of G's loss: no gradients for D's weights
        return {"loss": _generator_loss(gan["D"], fake, y, spec), **stats}  # fit: G's backward + step

    run.setdefault("ckpt_every", 500)
    run.setdefault("desc", "GAN")
    extra = {"opt_d": opt_d, "snapshots": snaps}
    modes = G.training, D.training
    try:  # grad_clip=inf: fit logs G's gradient norm ("grad_norm") and clips nothing
        history = fit(gan, opt_g, batches, gan_loss, steps, grad_clip=math.inf, extra_state=extra, on_step=snaps, **run)
    finally:
        D.requires_grad_(True)
        G.train(modes[0]), D.train(modes[1])
    history.metrics["g_grad_norm"] = history.metrics.pop("grad_norm")
    if snapshot_every is not None:  # the end, outside the checkpoint (a longer resumed run has no snapshot here)
        snaps.at.add(steps)
        snaps(steps)
    return GANRun(history, dict(sorted(snaps.images.items())))


@torch.no_grad()
def sample(
    G: nn.Module,
    n: int | None = None,
    *,
    z: Tensor | None = None,
    labels: Tensor | None = None,
    seed: int | None = None,
) -> Tensor:
    """G's samples in eval mode (BatchNorm uses its running statistics): n fresh codes, or the given z.

    Conditional G: `labels` (n,) int64, or None for the classes 0, 1, ..., 9, 0, 1, ... in turn."""
    param = next(G.parameters())
    if z is None:
        check_int("n", n)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, G.z_dim, generator=gen, dtype=param.dtype)
    elif not isinstance(z, Tensor) or (n is not None and len(z) != n):
        raise ValueError(f"z: expected a tensor of {n if n is not None else 'B'} codes, got {shape_of(z)}")
    z = z.to(param.device)
    n_classes = getattr(G, "n_classes", 0)
    if n_classes and labels is None:
        labels = torch.arange(len(z)) % n_classes
    _check_labels(labels, len(z), n_classes)
    return _sample(G, z, labels)


def _sample(G: nn.Module, z: Tensor, labels: Tensor | None) -> Tensor:
    param = next(G.parameters())
    with eval_mode(G), autocast(param.device):
        out = G(z.to(param.device)) if labels is None else G(z.to(param.device), labels.to(param.device))
    return out.float()


def to_unit(images: Tensor) -> Tensor:
    """[−1, 1] (tanh) -> [0, 1] (plots, digit metrics)."""
    return ((images + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# The 2-D toy: eight Gaussians on a ring, where mode collapse is visible and measurable
# ---------------------------------------------------------------------------------------------


def ring_modes(modes: int = 8, radius: float = 2.0) -> Tensor:
    """The mode centres (modes, 2), evenly spaced on a circle."""
    check_int("modes", modes), _check_positive("radius", radius)
    angle = torch.arange(modes) * (2 * math.pi / modes)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def ring_of_gaussians(
    n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05, generator: torch.Generator | None = None
) -> Tensor:
    """n points (n, 2): a uniformly chosen mode centre plus N(0, std² I) noise."""
    check_int("n", n), _check_positive("std", std), _check_positive("radius", radius)
    centres = ring_modes(modes, radius)
    which = torch.randint(modes, (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator)


class RingQuality(NamedTuple):
    modes_covered: int  # modes holding at least `min_share` of the samples (within 3 std)
    high_quality: float  # share of samples within 3 std of some mode centre
    shares: list[float]  # per mode: share of all samples within 3 std of it


def ring_quality(
    samples: Tensor, modes: int = 8, radius: float = 2.0, std: float = 0.05, min_share: float = 0.02
) -> RingQuality:
    """Mode coverage and sample quality on the ring (the measure of Srivastava et al., VEEGAN, 2017).

    A sample is high quality when it lies within 3·std of a mode centre; a mode is covered when at
    least `min_share` of all samples are high-quality samples of that mode (a perfect G covers all
    modes with ≈ 1/modes each)."""
    if not isinstance(samples, Tensor) or samples.ndim != 2 or samples.shape[1] != 2 or len(samples) == 0:
        raise ValueError(f"samples: expected a non-empty tensor of shape (N, 2), got {shape_of(samples)}")
    _check_positive("std", std)
    if isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or not 0 < min_share <= 1:
        raise ValueError(f"min_share: expected a share in (0, 1], got {min_share!r}")
    dist = torch.cdist(samples.detach().float().cpu(), ring_modes(modes, radius))  # (N, modes)
    nearest, which = dist.min(dim=1)
    good = nearest <= 3 * std
    shares = torch.bincount(which[good], minlength=modes).float() / len(samples)
    return RingQuality(int((shares >= min_share).sum()), good.float().mean().item(), shares.tolist())


class PackedDiscriminator(nn.Module):
    """PacGAN (Lin et al., NeurIPS 2018): D judges `pack` samples at once, so a G that repeats itself
    is easy to catch. Wraps a D built for inputs of `pack`× the size: (B, *s) -> (B / pack, pack·∏s) -> (B / pack,).
    (With WGAN-GP the penalty is then taken per pack, not per sample.)"""

    def __init__(self, D: nn.Module, pack: int):
        super().__init__()
        self.D, self.pack = D, check_int("pack", pack)
        self.n_classes = 0

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] % self.pack:
            raise ValueError(f"x: expected a batch (B, ...) with B a multiple of pack={self.pack}, got {shape_of(x)}")
        _check_labels(labels, x.shape[0], 0)
        return self.D(x.reshape(x.shape[0] // self.pack, -1))  # (B / pack,) logits


# ---------------------------------------------------------------------------------------------
# Argument checks of this chapter (the shared ones are in aigc_lib.checks): the argument, what was
# expected, what came
# ---------------------------------------------------------------------------------------------


def _check_logits(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D floating-point tensor of logits, shape (B,), got {shape_of(t)}")
    return t


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _check_labels(labels: object, batch: int, n_classes: int) -> Tensor | None:
    """None for an unconditional model; else an int64 tensor (B,) of classes in [0, n_classes)."""
    if n_classes == 0:
        if labels is not None:
            raise ValueError("labels: this model is unconditional (n_classes=0); pass labels=None")
        return None
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (batch,):
        kind = f"{labels.dtype} " if isinstance(labels, Tensor) else ""
        raise ValueError(
            f"labels: expected an int64 tensor of shape ({batch},) for a conditional model, got {kind}{shape_of(labels)}"
        )
    # range check on the CPU only: on a GPU it would sync with the host on every call (an
    # out-of-range label there fails inside the embedding lookup instead)
    if labels.device.type == "cpu" and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels: expected classes in [0, {n_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels
