"""Chapter 03 — variational autoencoders: the ELBO derived, implemented and measured in nats.

A VAE (Kingma & Welling, "Auto-Encoding Variational Bayes", 2013) is a latent-variable model
p(x) = ∫ p(x | z) p(z) dz with prior p(z) = N(0, I) and a decoder p(x | z), trained together with an
encoder q(z | x) = N(μ(x), diag σ²(x)) by maximising the evidence lower bound

    log p(x) ≥ ELBO(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z))

    z = μ + σ ⊙ ε,  ε ~ N(0, I)                                   reparameterize
    KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)   gaussian_kl
    log p(x | z), Bernoulli:  Σ_i x_i log σ(l_i) + (1 − x_i) log(1 − σ(l_i))   bernoulli_log_likelihood
    log p(x | z), Gaussian:   Σ_i log N(x_i; m_i, s²)                          gaussian_log_likelihood
    loss = −E_q[log p(x | z)] + β · KL  (β = 1: the negative ELBO; β ≠ 1: β-VAE)   vae_loss, elbo_terms
    IWAE (Burda et al., 2016): log p(x) ≥ log (1/k) Σ_i p(x | z_i) p(z_i) / q(z_i | x),  z_i ~ q
                                (tighter as k grows; an honest likelihood estimate)  iwae_bound
    active dimension j: Cov_x(E_q[z_j | x]) > 0.01; KL per dimension (posterior collapse)   latent_usage
    free bits λ: loss = recon + β Σ_j max(λ, KL_j)  (Kingma et al., 2016)             elbo_terms, train_vae

Models (one `VAEConfig`): `VAE(kind="mlp")` is the well-known 784-400-20 network of the PyTorch
example; `VAE(kind="conv")` a small convolutional one; `Autoencoder` the deterministic model that
cannot be sampled (chapter 03 shows why). Images are in [0, 1]. A Bernoulli decoder is a probability
only of binary pixels: `binarize` draws each pixel black or white with its grey level as the
probability, and `train_vae(binarize=True)` does so afresh for every batch ("dynamically binarised
MNIST", the protocol of Burda et al. 2016); scored on binarised test digits the nats are then a
negative log-likelihood bound of binary images. (On grey levels, as in the PyTorch example, the
Bernoulli formula is not a normalised density and its nats are no likelihood.) All "nats" are per image.

Corrected from the source articles: VAEs are not "only for text and audio" — they model images, and
the autoencoder inside latent diffusion (Stable Diffusion; Rombach et al., CVPR 2022) is a VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.runtime import autocast, eval_mode
from aigc_lib.training import History, RunOptions, epoch_indices, fit, fused_optimizer_ok

__all__ = [
    "Autoencoder",
    "VAE",
    "VAEConfig",
    "bernoulli_log_likelihood",
    "binarize",
    "elbo_terms",
    "evaluate_nelbo",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "interpolate",
    "iwae_bound",
    "latent_grid",
    "latent_usage",
    "reparameterize",
    "train_autoencoder",
    "train_vae",
    "vae_loss",
]

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# The pieces of the ELBO
# ---------------------------------------------------------------------------------------------


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²): a sample of N(μ, σ²) that is differentiable in μ and σ.

    eps -- the standard normal noise (same shape as mu); drawn fresh when None."""
    _check_float("mu", mu), _check_float("logvar", logvar)
    _check_same_shape("mu", mu, "logvar", logvar)
    if eps is not None:
        _check_float("eps", eps), _check_same_shape("mu", mu, "eps", eps)
    return _reparameterize(mu, logvar, eps)


def _reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    eps = torch.randn_like(mu) if eps is None else eps  # ε ~ N(0, I)
    return mu + torch.exp(0.5 * logvar) * eps  # z = μ + σ ⊙ ε


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²), per row: (B, D) -> (B,)."""
    _check_float("mu", mu, 2), _check_float("logvar", logvar, 2)
    _check_same_shape("mu", mu, "logvar", logvar)
    return _gaussian_kl(mu, logvar)


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    return _kl_per_dimension(mu, logvar).sum(dim=1)  # ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)


def _kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)  # (B, D): ½ (μ_j² + σ_j² − 1 − log σ_j²)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """Σ_i x_i log σ(l_i) + (1 − x_i) log(1 − σ(l_i)) per image, from logits: (B, ...) -> (B,)."""
    _check_float("logits", logits), _check_float("x", x)
    _check_same_shape("logits", logits, "x", x)
    return _bernoulli_log_likelihood(logits, x)


def _bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_log_likelihood(mean: Tensor, x: Tensor, log_scale: Tensor | float) -> Tensor:
    """Σ_i log N(x_i; m_i, s²) = −Σ_i [½((x_i − m_i)/s)² + log s + ½ log 2π] per image: (B, ...) -> (B,)."""
    _check_float("mean", mean), _check_float("x", x)
    _check_same_shape("mean", mean, "x", x)
    return _gaussian_log_likelihood(mean, x, log_scale)


def _gaussian_log_likelihood(mean: Tensor, x: Tensor, log_scale: Tensor | float) -> Tensor:
    # never round a learned log-scale down to a bf16 decoder output's precision (autocast on CUDA)
    dtype = torch.promote_types(mean.dtype, x.dtype)
    if isinstance(log_scale, Tensor):
        log_scale = log_scale.to(mean.device, torch.promote_types(dtype, log_scale.dtype))
    else:
        log_scale = torch.tensor(float(log_scale), dtype=dtype, device=mean.device)
    per_pixel = -0.5 * ((x - mean) * torch.exp(-log_scale)).pow(2) - log_scale - 0.5 * LOG_2PI
    return per_pixel.flatten(1).sum(1)


def vae_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0) -> Tensor:
    """Mean over the batch of −log p(x | z) + β·KL(q(z | x) ‖ N(0, I)) with a Bernoulli decoder (nats/image).

    With β = 1 and z ~ q(z | x) this is a one-sample estimate of the negative ELBO."""
    beta = check_number("beta", beta)
    return (-bernoulli_log_likelihood(logits, x) + beta * gaussian_kl(mu, logvar)).mean()


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass
class VAEConfig:
    kind: str = "mlp"  # "mlp": 784-400-latent (the PyTorch example); "conv": 2 strided convs each way
    latent_dim: int = 20
    hidden: int = 400  # MLP hidden units / conv model's fully connected width
    channels: int = 32  # conv model: channels at 14×14 (twice as many at 7×7)
    image_shape: tuple[int, int, int] = (1, 28, 28)
    likelihood: str = "bernoulli"  # or "gaussian" (a learned global log-scale s)

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "conv"):
            raise ValueError(f"kind: expected 'mlp' or 'conv', got {self.kind!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood: expected 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        for name in ("latent_dim", "hidden", "channels"):
            check_int(name, getattr(self, name))
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"image_shape: expected (C, H, W) of positive ints, got {self.image_shape!r}")
        if self.kind == "conv" and shape[1:] != (28, 28):
            raise ValueError(f"image_shape: the conv model is built for 28×28 images, got {shape}")
        self.image_shape = shape


def _encoder_body(c: VAEConfig) -> tuple[nn.Module, int]:
    """x (B, C, H, W) -> features (B, F)."""
    if c.kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(c.image_shape), c.hidden), nn.ReLU()), c.hidden
    ch = c.channels
    return nn.Sequential(
        nn.Conv2d(c.image_shape[0], ch, 4, 2, 1),
        nn.ReLU(),  # (B, ch, 14, 14)
        nn.Conv2d(ch, 2 * ch, 4, 2, 1),
        nn.ReLU(),  # (B, 2ch, 7, 7)
        nn.Flatten(),
        nn.Linear(2 * ch * 49, c.hidden),
        nn.ReLU(),  # (B, hidden)
    ), c.hidden


def _decoder(c: VAEConfig) -> nn.Module:
    """z (B, latent) -> logits / means (B, C, H, W)."""
    if c.kind == "mlp":
        return nn.Sequential(
            nn.Linear(c.latent_dim, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, math.prod(c.image_shape)),
            nn.Unflatten(1, c.image_shape),
        )
    ch = c.channels
    return nn.Sequential(
        nn.Linear(c.latent_dim, c.hidden),
        nn.ReLU(),
        nn.Linear(c.hidden, 2 * ch * 49),
        nn.ReLU(),
        nn.Unflatten(1, (2 * ch, 7, 7)),  # (B, 2ch, 7, 7)
        nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1),
        nn.ReLU(),  # (B, ch, 14, 14)
        nn.ConvTranspose2d(ch, c.image_shape[0], 4, 2, 1),  # (B, C, 28, 28)
    )


class _LatentModel(nn.Module):
    """Shared by VAE and Autoencoder: the config, the encoder body and decoder, input checks, decoding."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"config: expected a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder, self.n_feat = _encoder_body(config)
        self.decoder = _decoder(config)

    def _check_x(self, x: object) -> Tensor:
        want = (None, *self.config.image_shape)
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4 or tuple(x.shape[1:]) != want[1:]:
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, want[1:]))}), got {shape_of(x)}")
        return x

    def _check_z(self, z: object) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z: expected latent codes of shape (B, {self.config.latent_dim}), got {shape_of(z)}")
        return z

    def decode(self, z: Tensor) -> Tensor:
        """z (B, latent) -> decoder output (B, C, H, W): Bernoulli logits, or Gaussian means."""
        return self.decoder(self._check_z(z))

    def mean_image(self, out: Tensor) -> Tensor:
        """The decoder's mean in [0, 1]: σ(logits) (Bernoulli) or the clamped Gaussian mean."""
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out.clamp(0, 1)


class VAE(_LatentModel):
    """q(z | x) = N(μ(x), diag exp(logvar(x))), p(z) = N(0, I), p(x | z) Bernoulli(σ(logits)) or N(m, s²)."""

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        self.to_mu, self.to_logvar = nn.Linear(self.n_feat, c.latent_dim), nn.Linear(self.n_feat, c.latent_dim)
        self.log_scale = nn.Parameter(torch.zeros(())) if c.likelihood == "gaussian" else None

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> (μ, log σ²), each (B, latent)."""
        return self._encode(self._check_x(x))

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x -> (decoder output for one z ~ q(z | x), μ, log σ²)."""
        mu, logvar = self.encode(x)
        return self.decoder(_reparameterize(mu, logvar)), mu, logvar

    def log_likelihood(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image (B,) from the decoder output `out`."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(out, x)
        return gaussian_log_likelihood(out, x, self.log_scale)

    def _log_likelihood(self, out: Tensor, x: Tensor) -> Tensor:
        if self.config.likelihood == "bernoulli":
            return _bernoulli_log_likelihood(out, x)
        return _gaussian_log_likelihood(out, x, self.log_scale)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None) -> Tensor:
        """n images in [0, 1] (decoder means) from z ~ N(0, I)."""
        check_int("n", n)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        param = next(self.parameters())
        z = torch.randn(n, self.config.latent_dim, generator=gen, dtype=param.dtype).to(param.device)
        return self.mean_image(self.decoder(z))


class Autoencoder(_LatentModel):
    """The deterministic autoencoder with the same networks: x -> z = encode(x) -> decode(z) logits."""

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.to_z = nn.Linear(self.n_feat, config.latent_dim)

    def encode(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> z (B, latent)."""
        return self.to_z(self.encoder(self._check_x(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))


# ---------------------------------------------------------------------------------------------
# Objectives and evaluation
# ---------------------------------------------------------------------------------------------


def elbo_terms(model: VAE, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> dict[str, Tensor]:
    """One-sample estimate, batch means in nats per image: {"loss": recon + β·kl, "recon": −log p(x|z), "kl"}.

    free_bits λ > 0 (Kingma et al., NeurIPS 2016, per latent dimension): the loss charges each
    dimension's batch-mean KL only above λ, recon + β Σ_j max(λ, KL_j), so a dimension is not pushed
    all the way back to the prior (collapsed); "kl" is still the true KL."""
    return _elbo_terms(model, x, check_number("beta", beta), check_number("free_bits", free_bits))


def _elbo_terms(model: VAE, x: Tensor, beta: float, free_bits: float = 0.0) -> dict[str, Tensor]:
    out, mu, logvar = model(x)
    recon = -model._log_likelihood(out, x).mean()  # −E_q[log p(x | z)], one z per image
    kl_dims = _kl_per_dimension(mu, logvar).mean(0)  # (D,) KL per dimension, batch mean
    kl = kl_dims.sum()  # KL(q(z | x) ‖ p(z))
    charged = kl_dims.clamp_min(free_bits).sum() if free_bits > 0 else kl
    return {"loss": recon + beta * charged, "recon": recon, "kl": kl}


def _batches(images: Tensor, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


def _check_images(images: object, model: _LatentModel) -> Tensor:
    if not isinstance(images, Tensor) or len(images) == 0:
        raise ValueError(f"images: expected a non-empty tensor of images, got {shape_of(images)}")
    return model._check_x(images)


@torch.no_grad()
def evaluate_nelbo(model: VAE, images: Tensor, batch_size: int = 500, seed: int = 0) -> dict[str, float]:
    """Mean negative ELBO (β = 1), reconstruction and KL over `images`, nats per image (one z per image)."""
    _check_images(images, model), check_int("batch_size", batch_size)
    param = next(model.parameters())
    gen = torch.Generator(device=param.device).manual_seed(seed)
    sums = {"nelbo": 0.0, "recon": 0.0, "kl": 0.0}
    with eval_mode(model):
        for x in _batches(images, batch_size):
            x = x.to(param.device, param.dtype)
            mu, logvar = model._encode(x)
            z = _reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype))
            recon, kl = -model._log_likelihood(model.decoder(z), x), _gaussian_kl(mu, logvar)
            for key, v in (("nelbo", recon + kl), ("recon", recon), ("kl", kl)):
                sums[key] += float(v.double().sum())
    return {k: v / len(images) for k, v in sums.items()}


@torch.no_grad()
def latent_usage(model: VAE, images: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """How much each latent dimension is used, over `images`:

    kl (D,)       mean over x of KL(q(z_j | x) ‖ N(0, 1)) in nats: 0 for a dimension the encoder ignores
    activity (D,) Cov_x(E_q[z_j | x]) = the variance of μ_j(x) across images (Burda et al. 2016);
                  a dimension is "active" when it exceeds 0.01, inactive ones are posterior collapse
    active        the number of active dimensions (an int tensor)"""
    _check_images(images, model), check_int("batch_size", batch_size)
    param = next(model.parameters())
    mus, kls = [], []
    with eval_mode(model):
        for x in _batches(images, batch_size):
            mu, logvar = model._encode(x.to(param.device, param.dtype))
            mus.append(mu.double())
            kls.append(_kl_per_dimension(mu, logvar).double().sum(0))
    mu = torch.cat(mus)  # (N, D)
    activity = mu.var(0, unbiased=False)
    return {"kl": torch.stack(kls).sum(0) / len(images), "activity": activity, "active": (activity > 0.01).sum()}


@torch.no_grad()
def iwae_bound(
    model: VAE, images: Tensor, k: int = 100, batch_size: int = 100, seed: int = 0, progress: bool = True
) -> float:
    """−L_k averaged over `images` (nats per image), an upper bound on −log p(x) that tightens as k grows:

    L_k = log (1/k) Σ_i exp(log p(x | z_i) + log N(z_i; 0, I) − log N(z_i; μ, σ²)),  z_i ~ q(z | x).
    k = 1 is the (one-sample) ELBO. `progress`: a bar over the batches (k decoder passes each)."""
    _check_images(images, model), check_int("k", k), check_int("batch_size", batch_size)
    param = next(model.parameters())
    gen = torch.Generator(device=param.device).manual_seed(seed)
    total = 0.0
    with eval_mode(model):
        for x in tqdm(
            _batches(images, batch_size),
            total=math.ceil(len(images) / batch_size),
            desc=f"IWAE bound (k={k})",
            disable=not progress,
            leave=False,
        ):
            x = x.to(param.device, param.dtype)
            mu, logvar = model._encode(x)  # (B, D)
            eps = torch.randn((k, *mu.shape), generator=gen, device=mu.device, dtype=mu.dtype)  # (k, B, D)
            z = mu + torch.exp(0.5 * logvar) * eps
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)  # log N(z; μ, σ²), (k, B)
            log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)  # (k, B)
            out = model.decoder(z.flatten(0, 1))  # (k·B, C, H, W)
            log_px = model._log_likelihood(out, x.repeat(k, 1, 1, 1)).view(k, -1)  # (k, B)
            bound = torch.logsumexp(log_px + log_prior - log_q, dim=0) - math.log(k)  # (B,)
            total += float(-bound.double().sum())
    return total / len(images)


# ---------------------------------------------------------------------------------------------
# Training (the shared loop), latent-space helpers
# ---------------------------------------------------------------------------------------------


def binarize(images: Tensor, seed: int = 0) -> Tensor:
    """Binary images: pixel i is 1 with probability images_i (grey levels in [0, 1]), drawn from `seed`
    (the same seed, the same images). Used once for the test digits; training redraws every batch."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError(f"images: expected a floating-point tensor in [0, 1], got {shape_of(images)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(
            f"images: expected values in [0, 1], got [{float(images.min()):.3g}, {float(images.max()):.3g}]"
        )
    gen = torch.Generator(device=images.device).manual_seed(seed)
    return torch.bernoulli(images, generator=gen)


def _epoch_batches(images: Tensor, batch_size: int, seed: int):
    """step -> a batch of `images` (`training.epoch_indices`: one seeded permutation per epoch)."""
    batch_size = min(batch_size, len(images))
    order = epoch_indices(len(images), batch_size, seed)
    return (lambda step: images[order(step).to(images.device)]), len(images) // batch_size


def _train(
    model: nn.Module,
    images: Tensor,
    loss_fn,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    run: RunOptions,
    binarize: bool = False,
) -> History:
    _check_images(images, model), check_int("steps", steps), check_int("batch_size", batch_size)
    lr = check_number("lr", lr, inclusive=False)
    param = next(model.parameters())
    batches, _ = _epoch_batches(images.to(param.device, param.dtype), batch_size, seed)
    if binarize:
        grey = batches

        def batches(step: int) -> Tensor:  # a fresh draw per step, seeded by (seed, step): exact resume
            gen = torch.Generator(device=param.device).manual_seed(seed * 1_000_003 + step)
            return torch.bernoulli(grey(step), generator=gen)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused_optimizer_ok(param.device))
    return fit(model, optimizer, batches, loss_fn, steps, **run)


def train_vae(
    model: VAE,
    images: Tensor,
    steps: int,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    beta: float = 1.0,
    seed: int = 0,
    binarize: bool = False,
    free_bits: float = 0.0,
    **run: Unpack[RunOptions],
) -> History:
    """Adam(lr) on the one-sample β-ELBO loss over shuffled epochs of `images` (N, C, H, W) in [0, 1].

    The PyTorch example's recipe by default (Adam 1e-3, batch 128). binarize=True: every batch is
    redrawn as binary pixels (`binarize`, dynamic binarisation) so that a Bernoulli decoder models a
    real distribution. free_bits: see `elbo_terms`. History: "loss", "recon", "kl" (nats per image,
    batch means; "loss" includes the free-bits floor). `run`: fit's run
    options (checkpoint, ckpt_every, log_every, desc (default "VAE"), progress, on_log, e.g. a
    plots.LiveLossCurve of "loss", "recon" and "kl")."""
    if not isinstance(model, VAE):
        raise ValueError(f"model: expected a VAE, got {type(model).__name__}")
    beta, free_bits = check_number("beta", beta), check_number("free_bits", free_bits)
    run.setdefault("desc", "VAE")

    def loss_fn(m: VAE, x: Tensor) -> dict[str, Tensor]:
        return _elbo_terms(m, x, beta, free_bits)

    return _train(model, images, loss_fn, steps, batch_size, lr, seed, run, binarize)


def train_autoencoder(
    model: Autoencoder,
    images: Tensor,
    steps: int,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """The plain autoencoder: minimise the reconstruction loss alone (Bernoulli: summed BCE, nats per
    image). `run`: fit's run options, as for `train_vae` (desc default "autoencoder")."""
    if not isinstance(model, Autoencoder):
        raise ValueError(f"model: expected an Autoencoder, got {type(model).__name__}")

    def loss_fn(m: Autoencoder, x: Tensor) -> Tensor:
        out = m(x)
        if m.config.likelihood == "bernoulli":
            return -_bernoulli_log_likelihood(out, x).mean()
        return F.mse_loss(out, x, reduction="none").flatten(1).sum(1).mean()

    run.setdefault("desc", "autoencoder")
    return _train(model, images, loss_fn, steps, batch_size, lr, seed, run)


def interpolate(z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """`steps` codes on the straight line from z0 to z1 (both (D,)), endpoints included: (steps, D).

    z(t) = (1 − t)·z0 + t·z1 for t = 0, 1/(steps − 1), ..., 1."""
    _check_float("z0", z0, 1), _check_float("z1", z1, 1), _check_same_shape("z0", z0, "z1", z1)
    check_int("steps", steps, low=2)
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device)[:, None]  # (steps, 1)
    return (1 - t) * z0 + t * z1


@torch.no_grad()
def latent_grid(model: _LatentModel, n: int = 15, span: float = 0.95) -> Tensor:
    """Decode an n × n grid over a 2-D latent space: (n·n, C, H, W) in [0, 1], row-major, z2 decreasing.

    The grid points are normal quantiles Φ⁻¹(p) for p evenly spaced in [(1 − span)/2, (1 + span)/2],
    so they cover the prior's mass evenly (as in Kingma & Welling's figure 4)."""
    if model.config.latent_dim != 2:
        raise ValueError(f"model: latent_grid needs a 2-D latent space, got latent_dim={model.config.latent_dim}")
    check_int("n", n, low=2)
    if not 0 < span < 1:
        raise ValueError(f"span: expected a number in (0, 1), got {span!r}")
    param = next(model.parameters())
    p = torch.linspace((1 - span) / 2, (1 + span) / 2, n, dtype=torch.float64)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p).to(param.dtype)
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")  # rows: z2 from high to low
    z = torch.stack([z1.flatten(), z2.flatten()], dim=1).to(param.device)
    with eval_mode(model), autocast(param.device):
        return model.mean_image(model.decoder(z)).float()


# ---------------------------------------------------------------------------------------------
# Argument checks of this chapter (the shared ones are in aigc_lib.checks): the argument, what was
# expected, what came
# ---------------------------------------------------------------------------------------------


def _check_float(name: str, t: object, ndim: int | None = None) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point() or (ndim is not None and t.ndim != ndim):
        dims = f"{ndim}-D " if ndim is not None else ""
        raise ValueError(f"{name}: expected a {dims}floating-point tensor, got {shape_of(t)}")
    return t


def _check_same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name}, {b_name}: expected the same shape, got {shape_of(a)} and {shape_of(b)}")
