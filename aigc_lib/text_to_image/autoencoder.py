"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder and its latent scale.

Rombach et al. (CVPR 2022, §3.1) train the diffusion model not on pixels but on the latents of an
autoencoder, so each U-Net step touches f² times fewer positions (f: the downsampling factor). This is
chapter 03's VAE made convolutional all the way down, so that the latent keeps a spatial layout:

    q(z | x) = N(μ_φ(x), diag σ_φ²(x)),  z ∈ R^{c × S/f × S/f}         encoder (stride-2 convolutions)
    x̂ = g_θ(z) ∈ [0, 1]^{3 × S × S}                                    decoder (upsampling convolutions)
    L = Σ_pixels (x̂ − x)² + β · KL(q(z | x) ‖ N(0, I))                 a Gaussian decoder and a KL weight β

With a small β the KL term only keeps the latent near the origin (Stable Diffusion uses β = 1e-6 with
L1 + a perceptual loss + a patch discriminator; here the squared error alone, with β = 1e-3, which is
what a CPU allows). The latent's scale is then whatever the encoder made it, so latent diffusion
rescales it to unit variance before adding noise (`latent_scale`; Rombach et al. Appendix G, the
0.18215 of Stable Diffusion's configuration):

    scale = 1 / std(μ_φ(x))  over the training images;   the diffusion model sees z = scale · μ_φ(x)

The diffusion model's noise schedule assumes data of unit variance: with latents of std 5 every step's
signal-to-noise ratio would be 25 times the schedule's (the model would spend most steps on nearly clean
data), and with std 0.2 the early steps would destroy the signal at once.
Here the latent is the posterior mean μ_φ(x), not a sample: deterministic, and σ_φ is small at this β.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import Tensor, nn

from aigc_lib.checks import check_float_tensor, check_int, check_number, shape_of
from aigc_lib.runtime import eval_mode
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit
from aigc_lib.vae import _gaussian_kl, _reparameterize


@dataclass
class LatentAEConfig:
    """images (image_channels, image_size, image_size) <-> latents (latent_channels, image_size / 2^downsamples, ...)."""

    image_channels: int = 3
    image_size: int = 32
    latent_channels: int = 4
    downsamples: int = 2  # f = 2^downsamples: 32 × 32 -> 8 × 8
    width: int = 16  # channels at full resolution; doubled at each downsampling

    def __post_init__(self) -> None:
        for name in ("image_channels", "image_size", "latent_channels", "width"):
            check_int(name, getattr(self, name))
        check_int("downsamples", self.downsamples, low=0)
        if self.image_size % 2**self.downsamples:
            raise ValueError(f"downsamples: {self.image_size} cannot be halved {self.downsamples} times")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // 2**self.downsamples
        return (self.latent_channels, s, s)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out), nn.SiLU())


class LatentAutoencoder(nn.Module):
    """encode: images (B, 3, S, S) in [0, 1] -> (μ, log σ²), each (B, c, S/f, S/f); decode: z -> images in [0, 1]."""

    def __init__(self, config: LatentAEConfig | None = None):
        super().__init__()
        self.config = c = LatentAEConfig() if config is None else config
        if not isinstance(c, LatentAEConfig):
            raise ValueError(f"config: expected a LatentAEConfig, got {type(c).__name__}")
        widths = [c.width * 2**i for i in range(c.downsamples + 1)]
        enc: list[nn.Module] = [_block(c.image_channels, widths[0])]
        for a, b in zip(widths, widths[1:], strict=False):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), _block(b, b)]  # halve H, W
        self.encoder = nn.Sequential(*enc, nn.Conv2d(widths[-1], 2 * c.latent_channels, 1))  # μ and log σ²
        dec: list[nn.Module] = [_block(c.latent_channels, widths[-1])]
        for a, b in zip(widths[::-1], widths[::-1][1:], strict=False):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), _block(a, b)]  # double H, W
        self.decoder = nn.Sequential(*dec, nn.Conv2d(widths[0], c.image_channels, 3, padding=1))

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, S, S) in [0, 1] -> (μ, log σ²), each (B, c, S/f, S/f)."""
        return self._encode(_check_images(images, self.config))

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(images * 2 - 1).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """latents (B, c, S/f, S/f) -> images (B, C, S, S) in [0, 1] (a sigmoid of the decoder's output)."""
        shape = self.config.latent_shape
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim != 4 or tuple(z.shape[1:]) != shape:
            raise ValueError(f"z: expected latents (B, {', '.join(map(str, shape))}), got {shape_of(z)}")
        return self._decode(z)

    def _decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, images: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """images -> (reconstruction from a sampled z = μ + σ ε, μ, log σ²); `eps` (B, c, S/f, S/f): the
        noise ε to use (default: drawn from torch's global generator)."""
        mu, logvar = self.encode(images)
        if eps is not None and eps.shape != mu.shape:
            raise ValueError(f"eps: expected the latents' shape {tuple(mu.shape)}, got {shape_of(eps)}")
        return self._decode(_reparameterize(mu, logvar, eps)), mu, logvar


def autoencoder_loss(
    model: LatentAutoencoder, images: Tensor, beta: float, eps: Tensor | None = None
) -> dict[str, Tensor]:
    """{"loss", "recon", "kl"} per image (batch means): Σ (x̂ − x)² over pixels, KL in nats, loss = recon + β·KL.
    `eps`: the reparameterisation's noise (default: drawn from torch's global generator)."""
    recon, mu, logvar = model(images, eps)
    rec = (recon - images).pow(2).flatten(1).sum(1).mean()
    kl = _gaussian_kl(mu.flatten(1), logvar.flatten(1)).mean()
    return {"loss": rec + beta * kl, "recon": rec, "kl": kl}


def train_autoencoder(
    model: LatentAutoencoder,
    images: Tensor,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 2e-3,
    beta: float = 1e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """AdamW(lr) with warm-up and cosine decay on `autoencoder_loss` over shuffled epochs of `images`
    (N, C, S, S) in [0, 1]; each step's batch and z-noise are seeded by (seed, step) (exact resume).
    The noise ε is drawn with the batch, for all its images, from a generator of its own, so N ranks
    (`aigc_lib.distributed`) slice it with the images and reproduce one process, and the global random
    state is left alone. History: "loss", "recon", "kl". `run`: fit's run options (checkpoint, progress,
    on_log, ...)."""
    if not isinstance(model, LatentAutoencoder):
        raise ValueError(f"model: expected a LatentAutoencoder, got {type(model).__name__}")
    _check_images(images, model.config)
    check_int("steps", steps), check_int("batch_size", batch_size)
    lr, beta = check_number("lr", lr, inclusive=False), check_number("beta", beta)
    order = epoch_indices(len(images), min(batch_size, len(images)), seed)
    optimizer, scheduler = adamw_warmup_cosine(model, lr, steps, min(100, steps // 10))
    run.setdefault("desc", "autoencoder")

    device = next(model.parameters()).device
    latent = model.config.latent_shape

    def batches(step: int) -> tuple[Tensor, Tensor]:
        x = images[order(step)]
        # The reparameterisation's ε for the whole batch, from a generator seeded by (seed, step) on the
        # model's device: the very numbers the global generator gave when it was seeded so every step.
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
        return x, torch.randn((len(x), *latent), generator=gen, device=device)

    def loss_fn(m: LatentAutoencoder, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, eps = batch
        return autoencoder_loss(m, x, beta, eps.to(x.dtype))

    return fit(model, optimizer, batches, loss_fn, steps, scheduler=scheduler, **run)


@torch.no_grad()
def encode_latents(model: LatentAutoencoder, images: Tensor, batch_size: int = 500) -> Tensor:
    """The posterior means μ_φ(x) (N, c, S/f, S/f) of `images` (N, C, S, S) in [0, 1], on the CPU, float32."""
    _check_images(images, model.config)
    device = next(model.parameters()).device
    with eval_mode(model):
        parts = [
            model._encode(images[i : i + batch_size].to(device))[0].float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts)


@torch.no_grad()
def decode_latents(model: LatentAutoencoder, z: Tensor, batch_size: int = 500) -> Tensor:
    """Images (N, C, S, S) in [0, 1] (CPU, float32) from latents (N, c, S/f, S/f) (unscaled: divide by the scale first)."""
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat(
            [model.decode(z[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)]
        )


def latent_scale(latents: Tensor) -> float:
    """1 / std(latents): the factor that gives the diffusion model latents of unit variance (over all
    elements, as Stable Diffusion's 0.18215 was computed)."""
    if not isinstance(latents, Tensor) or not latents.is_floating_point() or latents.numel() < 2:
        raise ValueError(f"latents: expected a floating-point tensor of at least 2 values, got {shape_of(latents)}")
    std = float(latents.double().std())
    if not math.isfinite(std) or std == 0.0:
        raise ValueError(f"latents: their standard deviation is {std}; a scale needs a finite, nonzero spread")
    return 1.0 / std


def _check_images(images: object, c: LatentAEConfig) -> Tensor:
    return check_float_tensor("images", images, (None, c.image_channels, c.image_size, c.image_size))
