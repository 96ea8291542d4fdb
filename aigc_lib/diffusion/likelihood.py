"""A likelihood for a diffusion model: the variational bound of Ho et al. (2020) in bits per dimension.

The same bound the model was derived from (Ho et al. eq. 5; Sohl-Dickstein et al. 2015), with every
term computed instead of dropped (indices 0-based as in schedule.py: index t is the paper's step t + 1):

    −log p_θ(x_0) ≤ L_prior + Σ_{t=1}^{T−1} L_t + L_dec
    L_prior = KL(q(x_T | x_0) ‖ N(0, I))                              needs no network
    L_t     = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))          p_θ = N(μ_θ(x_t, t), σ_t² I)
              μ_θ = μ̃_t(x̂_0, x_t), σ_t² = β̃_t ("posterior", the course's DDPM sampler) or β_t ("beta")
    L_dec   = −log p_θ(x_0 | x_1), a Gaussian N(x̂_0, σ_dec²) integrated over each pixel's 8-bit bin
              (width 2/255 in [−1, 1]; the end bins reach to ±∞)      Ho et al. eq. 13
              σ_dec² = posterior_variance[1], as Ho et al.'s released code and Improved DDPM use at
              the last step for either fixed variance (β_1 itself would give a looser decoder)
    bits/dim = (L_prior + Σ L_t + L_dec) / (D ln 2),  D = C·H·W

This is a bound on the negative log-likelihood of 8-bit images, the number Ho et al. report for
CIFAR-10 (Table 1: ≤ 3.70 bits/dim trained on the full bound, ≤ 3.75 trained on L_simple). The sum
over t has T − 1 terms, each a network call per image; `vlb_bits_per_dim` estimates it without bias
from `timesteps` stratified draws (one uniform t in each of `timesteps` equal strata, each weighted by
its stratum's size), or sums all of them (timesteps=None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aigc_lib.checks import check_int, shape_of
from aigc_lib.diffusion.schedule import (
    NoiseSchedule,
    _call,
    _check_model,
    _check_prediction,
    _check_schedule,
    _gather,
    _predict_x0,
    _q_sample,
)
from aigc_lib.runtime import eval_mode

__all__ = ["BoundTerms", "discretized_gaussian_nll", "gaussian_kl", "vlb_bits_per_dim"]

VARIANCES = ("posterior", "beta")
BIN = 1 / 255  # half the width of an 8-bit level's bin in [−1, 1]


def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) ‖ N(mean2, var2)) per element, in nats (variances broadcast)."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_nll(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """−log of the mass N(mean, std²) puts on x's 8-bit bin, per element (nats); x in [−1, 1] on the
    grid −1 + 2k/255. The bins of −1 and +1 extend to −∞ and +∞, so the 256 masses sum to 1."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor in [-1, 1], got {shape_of(x)}")
    return _discretized_gaussian_nll(x, mean, std)


def _discretized_gaussian_nll(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    x, mean = x.double(), mean.double()
    upper = (x + BIN - mean) / std  # the bin is (lower, upper] in standard units
    lower = (x - BIN - mean) / std
    upper = torch.where(x > 1 - BIN, torch.full_like(upper, math.inf), upper)  # top bin: to +∞
    lower = torch.where(x < -1 + BIN, torch.full_like(lower, -math.inf), lower)  # bottom bin: from −∞
    # log(Φ(u) − Φ(l)) without cancellation: in the upper tail use Φ(−l) − Φ(−u) instead
    flip = lower > 0
    u, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_u, log_l = torch.special.log_ndtr(u), torch.special.log_ndtr(lo)
    return -(log_u + torch.log1p(-torch.exp(log_l - log_u)))


@dataclass
class BoundTerms:
    """The bound per image, in bits per dimension: bpd = prior + diffusion + decoder, each (B,).
    `per_t` (B, K) holds the sampled L_t (bits/dim, unweighted) at the timesteps `t` (B, K)."""

    bpd: Tensor
    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    t: Tensor
    per_t: Tensor


@torch.no_grad()
def vlb_bits_per_dim(
    model: nn.Module,
    images: Tensor,
    schedule: NoiseSchedule,
    *,
    labels: Tensor | None = None,
    prediction: str = "eps",
    timesteps: int | None = 100,
    variance: str = "posterior",
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> BoundTerms:
    """The variational bound (module docstring) of each image, in bits per dimension.

    images (B, C, H, W) in [0, 1] on the 8-bit grid k/255 (as data.mnist5k gives them); labels for a
    class-conditional model (None: its null label ∅, i.e. the unconditional model). timesteps: how
    many of the T − 1 terms L_t to draw per image (stratified, unbiased), or None for all of them.
    variance: σ_t² of the reverse steps, "posterior" (β̃_t) or "beta" (β_t). Network calls are batched
    `batch_size` at a time, in the model's dtype; `generator` (a CPU generator; default: seeded with 0)
    seeds x_t's noise and the stratified t. Computed in float64 after the network (not on MPS)."""
    model = _check_model(model)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"images: expected a non-empty floating-point batch (B, C, H, W) in [0, 1], got {shape_of(images)}"
        )
    levels = images.double() * 255
    if not bool(((levels - levels.round()).abs() < 1e-3).all()) or images.min() < 0 or images.max() > 1:
        raise ValueError("images: expected 8-bit images, values k/255 in [0, 1] (the bound is for 256-level data)")
    T = schedule.T
    n_mid = T - 1
    K = n_mid if timesteps is None else min(check_int("timesteps", timesteps), n_mid)
    check_int("batch_size", batch_size)
    B, D = images.shape[0], images[0].numel()
    if labels is not None and (not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (B,)):
        raise ValueError(f"labels: expected None or an int64 tensor of shape ({B},), got {shape_of(labels)}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    x0 = (images.to(device, dtype) * 2 - 1).contiguous()
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    # prior: q(x_T | x_0) = N(√ᾱ_T x_0, 1 − ᾱ_T) against N(0, 1)
    ab_T = schedule.alpha_bars[-1]
    prior = gaussian_kl(ab_T.sqrt() * x0.double(), 1 - ab_T, torch.zeros(()), torch.ones(())).flatten(1).sum(1)

    # the middle terms at t = 1 .. T − 1: all of them, or one uniform draw in each of K strata
    edges = torch.linspace(1, T, K + 1, dtype=torch.float64)
    if timesteps is None:
        t_all = torch.arange(1, T).expand(B, -1)
    else:
        u = edges[:-1] + torch.rand(B, K, generator=gen, dtype=torch.float64) * edges.diff()
        t_all = u.floor().long().clamp(max=T - 1)  # P(t) = its overlap with the stratum / the stratum's width
    weight = (edges.diff() if timesteps is not None else torch.ones(K, dtype=torch.float64)).expand(B, -1)
    per_t = torch.empty(B, K, dtype=torch.float64)
    rows = torch.arange(B).repeat_interleave(K)  # image of each (image, t) pair
    flat_t = t_all.reshape(-1)
    with eval_mode(model):
        for start in range(0, B * K, batch_size):
            i, t = rows[start : start + batch_size], flat_t[start : start + batch_size].to(device)
            eps = torch.randn((len(i), *x0.shape[1:]), generator=gen).to(device, dtype)  # drawn per chunk
            per_t.view(-1)[start : start + batch_size] = _kl_terms(
                model,
                x0[i],
                t,
                eps,
                schedule,
                None if labels is None else labels.to(device)[i],
                prediction,
                variance,
            ).cpu()
        # decoder at index 0: x_1 ~ q(x_1 | x_0), p_θ(x_0 | x_1) = discretised N(x̂_0, σ_dec²)
        decoder_std = math.sqrt(float(schedule.posterior_variance[1])) if T > 1 else math.sqrt(float(schedule.betas[0]))
        decoder = torch.empty(B, dtype=torch.float64)
        for start in range(0, B, batch_size):
            sl = slice(start, start + batch_size)
            x = x0[sl]
            t0 = torch.zeros(len(x), dtype=torch.long, device=device)
            x1 = _q_sample(x, t0, torch.randn(x.shape, generator=gen).to(device, dtype), schedule)
            x0_hat = _predict_x0(
                _call(model, x1, t0, None if labels is None else labels.to(device)[sl]), x1, t0, schedule, prediction
            )  # unclipped, as Ho et al.: a mean beyond ±1 puts its mass in the end bin
            decoder[sl] = _discretized_gaussian_nll(x, x0_hat, decoder_std).flatten(1).sum(1).cpu()
    diffusion = (per_t * weight).sum(1)
    to_bpd = 1 / (D * math.log(2))
    prior = prior.cpu()
    return BoundTerms(
        bpd=(prior + diffusion + decoder) * to_bpd,
        prior=prior * to_bpd,
        diffusion=diffusion * to_bpd,
        decoder=decoder * to_bpd,
        t=t_all,
        per_t=per_t * to_bpd,
    )


def _kl_terms(
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    schedule: NoiseSchedule,
    labels: Tensor | None,
    prediction: str,
    variance: str,
) -> Tensor:
    """L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) summed over pixels (nats), one per row."""
    xt = _q_sample(x0, t, eps, schedule)
    x0_hat = _predict_x0(_call(model, xt, t, labels), xt, t, schedule, prediction)
    c0, ct = (_gather(schedule, name, t, xt.double()) for name in ("posterior_mean_x0_coef", "posterior_mean_xt_coef"))
    mean_q = c0 * x0.double() + ct * xt.double()
    mean_p = c0 * x0_hat.double() + ct * xt.double()
    var_q = _gather(schedule, "posterior_variance", t, xt.double())
    var_p = var_q if variance == "posterior" else _gather(schedule, "betas", t, xt.double())
    return gaussian_kl(mean_q, var_q, mean_p, var_p).flatten(1).sum(1)
