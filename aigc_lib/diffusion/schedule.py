"""The noise schedule and the forward process of a diffusion model, with what inverts it and the loss.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020, with a variance schedule
β_1..β_T, α_t = 1 − β_t and ᾱ_t = Π_{s≤t} α_s (indices here run t = 0..T−1):

    q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I)                       eq. 2    q_step
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                           eq. 4    q_sample
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),                               eq. 6-7  posterior_mean_variance
        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
    x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t                                  eq. 15   predict_x0
    L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²       eq. 14   diffusion_loss

Schedules: linear β from 1e-4 to 0.02 (Ho et al.) and cosine ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)
(Nichol & Dhariwal, "Improved DDPM", ICML 2021, eq. 17), `linear_schedule`, `cosine_schedule`.

v-prediction (Salimans & Ho, ICLR 2022): v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (`v_target`), and the
conversions between the network's output and x̂_0, ε̂ (`predict_x0`, `predict_eps`).

Public functions check their arguments (the diffusion-specific checks are at the end of this file,
built from `aigc_lib.checks`) and then call the private helper that only computes; the samplers and
the trainer call the private helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, check_number, shape_of

PREDICTIONS = ("eps", "v")


# ---------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """β_1..β_T as a float64 tensor (T,), stored 0-indexed: betas[t] is β_{t+1} of the paper.

    Derived (float64, on the CPU): alphas α_t = 1 − β_t, alpha_bars ᾱ_t = Π_{s≤t} α_s,
    alpha_bars_prev (ᾱ_{t−1}, with ᾱ_{−1} = 1), posterior_variance β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t."""

    betas: Tensor
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        b = self.betas
        if not isinstance(b, Tensor) or b.ndim != 1 or len(b) == 0 or not b.is_floating_point():
            raise ValueError(f"betas: expected a non-empty 1-D floating-point tensor (T,), got {shape_of(b)}")
        b = b.detach().to("cpu", torch.float64)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(
                f"betas: expected every β in (0, 1), got values in [{float(b.min()):.3g}, {float(b.max()):.3g}]"
            )
        object.__setattr__(self, "betas", b)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.T}, beta {float(self.betas[0]):.3g} .. {float(self.betas[-1]):.3g}, "
            f"alpha_bar_T={float(self.alpha_bars[-1]):.3g})"
        )

    @property
    def T(self) -> int:
        return len(self.betas)

    @cached_property
    def alphas(self) -> Tensor:
        return 1 - self.betas  # α_t = 1 − β_t

    @cached_property
    def alpha_bars(self) -> Tensor:
        return torch.cumprod(self.alphas, 0)  # ᾱ_t = Π_{s≤t} α_s

    @cached_property
    def alpha_bars_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])  # ᾱ_{t−1}, ᾱ_{−1} = 1

    @cached_property
    def posterior_variance(self) -> Tensor:
        return (1 - self.alpha_bars_prev) / (1 - self.alpha_bars) * self.betas  # β̃_t, eq. 7

    # μ̃_t's weights on x_0 and x_t (eq. 7), computed in float64 before any cast: at small t,
    # 1 − ᾱ_t ≈ 1e-4 and float32 would keep only about three digits of it
    @cached_property
    def posterior_mean_x0_coef(self) -> Tensor:
        return self.alpha_bars_prev.sqrt() * self.betas / (1 - self.alpha_bars)

    @cached_property
    def posterior_mean_xt_coef(self) -> Tensor:
        return self.alphas.sqrt() * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars)

    def table(self, name: str, device: torch.device | str) -> Tensor:
        """A derived quantity (any property above, or sqrt_alpha_bars / sqrt_one_minus_alpha_bars) on
        `device`, float64 (float32 on MPS, which has no float64), cached: indexing it with a device
        tensor of timesteps needs no host-device sync."""
        device = torch.device(device)
        key = (name, str(device))
        if key not in self._cache:
            if name == "sqrt_alpha_bars":
                values = self.alpha_bars.sqrt()
            elif name == "sqrt_one_minus_alpha_bars":
                values = (1 - self.alpha_bars).sqrt()
            else:
                values = getattr(self, name)
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._cache[key] = values.to(device, dtype)
        return self._cache[key]


def _gather(schedule: NoiseSchedule, name: str, t: Tensor, like: Tensor) -> Tensor:
    """schedule.<name>[t] shaped (B, 1, 1, ...) to broadcast over `like`, in like's dtype."""
    values = schedule.table(name, like.device)[t.to(like.device)]  # (B,)
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """β_t linear from beta_start to beta_end over T steps (Ho et al. 2020, §4: 1e-4 to 0.02, T = 1000).

    The same betas as diffusers' `beta_schedule="linear"` (computed here in float64)."""
    check_int("T", T)
    beta_start = check_number("beta_start", beta_start, 0.0, 1.0, inclusive=False)
    beta_end = check_number("beta_end", beta_end, 0.0, 1.0, inclusive=False)
    return NoiseSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), and
    β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta) (the clip keeps β < 1 near t = T).

    With s = 0.008 the same betas as diffusers' `beta_schedule="squaredcos_cap_v2"`."""
    check_int("T", T)
    s = check_number("s", s)
    max_beta = check_number("max_beta", max_beta, 0.0, 1.0, inclusive=False)

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    i = torch.arange(T, dtype=torch.float64)
    betas = (1 - f((i + 1) / T) / f(i / T)).clamp(max=max_beta)
    return NoiseSchedule(betas)


# ---------------------------------------------------------------------------------------------
# The forward process and its posterior
# ---------------------------------------------------------------------------------------------


def q_sample(x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a sample of q(x_t | x_0) (Ho et al. eq. 4) in one jump.

    x0, eps (B, C, H, W); t (B,) int64 in [0, T − 1]."""
    _check_images("x0", x0), _check_like("eps", eps, "x0", x0)
    schedule = _check_schedule(schedule)
    _check_t(t, x0.shape[0], schedule.T)
    return _q_sample(x0, t, eps, schedule)


def _q_sample(x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    return (
        _gather(schedule, "sqrt_alpha_bars", t, x0) * x0 + _gather(schedule, "sqrt_one_minus_alpha_bars", t, x0) * eps
    )


def q_step(x_prev: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    """x_t = √(1 − β_t) x_{t−1} + √β_t ε, one step of the forward chain q(x_t | x_{t−1}) (eq. 2).

    Applying it for t = 0, 1, ..., k with fresh ε gives x_k distributed as `q_sample` at t = k."""
    _check_images("x_prev", x_prev), _check_like("eps", eps, "x_prev", x_prev)
    schedule = _check_schedule(schedule)
    _check_t(t, x_prev.shape[0], schedule.T)
    beta = _gather(schedule, "betas", t, x_prev)  # (B, 1, 1, 1)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * eps


def posterior_mean_variance(x0: Tensor, xt: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (Ho et al. eq. 6-7):

        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t

    Returns (mean (B, C, H, W), variance (B, 1, 1, 1)); at t = 0 the variance is 0 and the mean x_0."""
    _check_images("x0", x0), _check_like("xt", xt, "x0", x0)
    schedule = _check_schedule(schedule)
    _check_t(t, x0.shape[0], schedule.T)
    mean = (
        _gather(schedule, "posterior_mean_x0_coef", t, x0) * x0
        + _gather(schedule, "posterior_mean_xt_coef", t, x0) * xt
    )
    return mean, _gather(schedule, "posterior_variance", t, x0)


# ---------------------------------------------------------------------------------------------
# What the network predicts: ε, v, and the x̂_0 they imply
# ---------------------------------------------------------------------------------------------


def predict_x0(
    model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule, prediction: str = "eps"
) -> Tensor:
    """x̂_0 from the network's output at x_t; t an int or an int64 tensor (B,).

    eps:  x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t   (Ho et al. eq. 15, solved for x_0)
    v:    x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v_θ        (Salimans & Ho 2022)"""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    return _predict_x0(model_output, xt, _check_t_or_step(t, xt, schedule), schedule, prediction)


def _predict_x0(model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule, prediction: str) -> Tensor:
    a, s = _coefs(t, xt, schedule)
    if prediction == "eps":
        return (xt - s * model_output) / a
    return a * xt - s * model_output


def predict_eps(
    model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule, prediction: str = "eps"
) -> Tensor:
    """ε̂ from the network's output at x_t: the output itself (eps), or ε̂ = √ᾱ_t v_θ + √(1 − ᾱ_t) x_t (v)."""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    return _predict_eps(model_output, xt, _check_t_or_step(t, xt, schedule), schedule, prediction)


def _predict_eps(model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule, prediction: str) -> Tensor:
    if prediction == "eps":
        return model_output
    a, s = _coefs(t, xt, schedule)
    return a * model_output + s * xt


def _coefs(t: Tensor | int, xt: Tensor, schedule: NoiseSchedule) -> tuple[Tensor | float, Tensor | float]:
    """(√ᾱ_t, √(1 − ᾱ_t)): Python floats for an int t, (B, 1, 1, 1) tensors for a tensor t."""
    if isinstance(t, int):
        ab = float(schedule.alpha_bars[t])
        return math.sqrt(ab), math.sqrt(1 - ab)
    return _gather(schedule, "sqrt_alpha_bars", t, xt), _gather(schedule, "sqrt_one_minus_alpha_bars", t, xt)


def v_target(x0: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the v-prediction target (Salimans & Ho 2022, §4)."""
    _check_images("x0", x0), _check_like("eps", eps, "x0", x0)
    schedule = _check_schedule(schedule)
    _check_t(t, x0.shape[0], schedule.T)
    return _v_target(x0, eps, t, schedule)


def _v_target(x0: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    return (
        _gather(schedule, "sqrt_alpha_bars", t, x0) * eps - _gather(schedule, "sqrt_one_minus_alpha_bars", t, x0) * x0
    )


# ---------------------------------------------------------------------------------------------
# The training loss
# ---------------------------------------------------------------------------------------------


def diffusion_loss(
    model: nn.Module,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    labels: Tensor | None = None,
    prediction: str = "eps",
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_simple = E ‖target − f_θ(x_t, t, y)‖², x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. eq. 14).

    target = ε (prediction="eps") or v (prediction="v"). t ~ U{0, ..., T − 1} and ε ~ N(0, I) are drawn
    (with `generator`, on its device) when not given. x0 (B, C, H, W) in [−1, 1]; returns a scalar."""
    _check_images("x0", x0)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    _check_model(model)
    B = x0.shape[0]
    if t is None:
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=dev).to(x0.device)
    _check_t(t, B, schedule.T)
    if eps is None:
        dev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
    _check_like("eps", eps, "x0", x0)
    return _diffusion_loss(model, x0, t, eps, schedule, labels, prediction)


def _diffusion_loss(
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    schedule: NoiseSchedule,
    labels: Tensor | dict | None,
    prediction: str,
) -> Tensor:
    xt = _q_sample(x0, t, eps, schedule)  # (B, C, H, W), eq. 4
    target = eps if prediction == "eps" else _v_target(x0, eps, t, schedule)
    out = _call(model, xt, t, labels)  # (B, C, H, W)
    return F.mse_loss(out.float(), target.float())


def _call(model: nn.Module, x: Tensor, t: Tensor, cond: Tensor | dict | None) -> Tensor:
    """The network on one batch: cond None (no condition), labels (B,), or keyword tensors such as
    {"context": token states, "mask": real tokens} for a text-conditional U-Net."""
    if cond is None:
        return model(x, t)
    return model(x, t, **cond) if isinstance(cond, dict) else model(x, t, cond)


# ---------------------------------------------------------------------------------------------
# Argument checks of the diffusion functions (the argument, what was expected, what came), built
# from aigc_lib.checks and shared by the samplers and the trainer
# ---------------------------------------------------------------------------------------------


def _check_images(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"{name}: expected a floating-point batch of images (B, C, H, W), got {shape_of(x)}")
    return x


def _check_like(name: str, t: object, ref_name: str, ref: Tensor) -> Tensor:
    """A floating-point tensor of ref's shape (any floating dtype: the formulas promote)."""
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != ref.shape:
        raise ValueError(
            f"{name}: expected a floating-point tensor of the shape of {ref_name} {tuple(ref.shape)}, got {shape_of(t)}"
        )
    return t


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    return model


def _check_schedule(schedule: object) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(
            f"schedule: expected a NoiseSchedule (linear_schedule() / cosine_schedule()), got {type(schedule).__name__}"
        )
    return schedule


def _check_t(t: object, batch: int, T: int) -> Tensor:
    """A LongTensor (B,) of timesteps in [0, T − 1] (range checked on the CPU only: no GPU sync)."""
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (batch,):
        kind = f"{t.dtype} " if isinstance(t, Tensor) else ""
        raise ValueError(
            f"t: expected an int64 tensor of shape ({batch},) with timesteps in [0, {T - 1}], got {kind}{shape_of(t)}"
        )
    if t.device.type == "cpu" and len(t) and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t: expected timesteps in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
    return t


def _check_step_t(name: str, t: object, T: int, low: int = 0) -> int:
    """One timestep of a sampler: an int (or a one-element integer tensor) in [low, T − 1]."""
    if isinstance(t, Tensor) and t.numel() == 1 and not t.is_floating_point():
        t = int(t)
    return check_int(name, t, low=low, high=T - 1)


def _check_t_or_step(t: object, xt: Tensor, schedule: NoiseSchedule) -> Tensor | int:
    """A tensor of timesteps (B,) for the batch xt, or one timestep for all of it."""
    if isinstance(t, Tensor) and t.ndim == 1:
        return _check_t(t, xt.shape[0], schedule.T)
    return _check_step_t("t", t, schedule.T)


def _check_prediction(prediction: object) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {list(PREDICTIONS)}, got {prediction!r}")
    return prediction
