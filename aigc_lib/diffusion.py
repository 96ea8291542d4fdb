"""Chapter 05 — diffusion models: DDPM, DDIM and classifier-free guidance, equation by equation.

Forward process (Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020), with
a variance schedule β_1..β_T, α_t = 1 − β_t and ᾱ_t = Π_{s≤t} α_s (indices here run t = 0..T−1):

    q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I)                       eq. 2    q_step
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                           eq. 4    q_sample
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),                               eq. 6-7  posterior_mean_variance
        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
    x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t                                  eq. 15   predict_x0
    L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²       eq. 14   diffusion_loss
    ancestral sampling: x_{t−1} = μ̃_t(x_t, x̂_0) + √β̃_t z               Alg. 2   ddpm_step

Schedules: linear β from 1e-4 to 0.02 (Ho et al.) and cosine ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)
(Nichol & Dhariwal, "Improved DDPM", ICML 2021, eq. 17), `linear_schedule`, `cosine_schedule`.

DDIM (Song, Meng & Ermon, ICLR 2021, eq. 12) jumps from t to an earlier t' on a sub-sequence:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε_θ + σ_t z,
    σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'})             eq. 16   ddim_step
    (η = 0: deterministic; η = 1 and t' = t − 1: DDPM)

v-prediction (Salimans & Ho, ICLR 2022): v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (`v_target`).

Classifier-free guidance (Ho & Salimans, 2022): ONE network is trained with the label replaced by a
null token with probability p_uncond, and sampled with

    ε̃ = ε_θ(x_t, ∅) + w (ε_θ(x_t, y) − ε_θ(x_t, ∅))                                   guided_eps

(w = 1: the conditional model; w = 0: the unconditional one; w > 1: sharper, more "on prompt").

The network is a small U-Net (`UNet`, `UNetConfig`): sinusoidal timestep embedding, residual blocks
with GroupNorm + SiLU and the time (+ class) embedding added, self-attention at 7×7 through
F.scaled_dot_product_attention. `train_diffusion` trains it with the shared `training.fit` loop and
an exponential moving average of the weights (`EMA`), `sample` draws with DDPM or DDIM, with or
without guidance. Images live in [−1, 1]; `to_unit` maps them to [0, 1] for plots and the metrics.

These step functions agree with the reference implementation in the `diffusers` library
(DDPMScheduler with variance_type="fixed_small", DDIMScheduler with timestep_spacing="leading",
set_alpha_to_one=True); tests/test_diffusion.py checks them step by step.
"""

from __future__ import annotations

import copy
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from aigc_lib.runtime import autocast
from aigc_lib.training import History, adamw_warmup_cosine, epoch_indices, fit

__all__ = [
    "EMA", "NoiseSchedule", "UNet", "UNetConfig", "cosine_schedule", "ddim_step", "ddim_timesteps",
    "ddpm_step", "diffusion_loss", "guided_eps", "linear_schedule", "posterior_mean_variance",
    "predict_eps", "predict_x0", "prompt_to_label", "q_sample", "q_step", "sample", "timestep_embedding",
    "to_unit", "train_diffusion", "v_target",
]

PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "ddpm")


# ---------------------------------------------------------------------------------------------
# Input checks: the argument, what was expected, what came
# ---------------------------------------------------------------------------------------------


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_int(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        want = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return value


def _check_number(name: str, value: object, low: float = 0.0, high: float = math.inf,
                  inclusive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low <= value <= high) if inclusive else (low < value < high)
    if not ok:
        lb, rb = ("[", "]") if inclusive else ("(", ")")
        hi = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(f"{name}: expected a finite number in {lb}{low:g}, {hi}{rb}, got {value!r}")
    return float(value)


def _check_images(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"{name}: expected a floating-point batch of images (B, C, H, W), got {_shape(x)}")
    return x


def _check_like(name: str, t: object, ref_name: str, ref: Tensor) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != ref.shape:
        raise ValueError(f"{name}: expected a floating-point tensor of the shape of {ref_name} "
                         f"{tuple(ref.shape)}, got {_shape(t)}")
    return t


def _check_schedule(schedule: object) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule: expected a NoiseSchedule (linear_schedule() / cosine_schedule()), "
                         f"got {type(schedule).__name__}")
    return schedule


def _check_t(t: object, batch: int, T: int) -> Tensor:
    """A LongTensor (B,) of timesteps in [0, T − 1] (range checked on the CPU only: no GPU sync)."""
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (batch,):
        kind = f"{t.dtype} " if isinstance(t, Tensor) else ""
        raise ValueError(f"t: expected an int64 tensor of shape ({batch},) with timesteps in [0, {T - 1}], "
                         f"got {kind}{_shape(t)}")
    if t.device.type == "cpu" and len(t) and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t: expected timesteps in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
    return t


def _check_step_t(name: str, t: object, T: int, low: int = 0) -> int:
    if isinstance(t, Tensor) and t.numel() == 1 and not t.is_floating_point():
        t = int(t)
    return _check_int(name, t, low=low, high=T - 1)


def _check_prediction(prediction: object) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {list(PREDICTIONS)}, got {prediction!r}")
    return prediction


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
            raise ValueError(f"betas: expected a non-empty 1-D floating-point tensor (T,), got {_shape(b)}")
        b = b.detach().to("cpu", torch.float64)
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"betas: expected every β in (0, 1), got values in [{float(b.min()):.3g}, {float(b.max()):.3g}]")
        object.__setattr__(self, "betas", b)

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.T}, beta {float(self.betas[0]):.3g} .. {float(self.betas[-1]):.3g}, "
                f"alpha_bar_T={float(self.alpha_bars[-1]):.3g})")

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
    _check_int("T", T)
    beta_start = _check_number("beta_start", beta_start, 0.0, 1.0, inclusive=False)
    beta_end = _check_number("beta_end", beta_end, 0.0, 1.0, inclusive=False)
    return NoiseSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), and
    β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta) (the clip keeps β < 1 near t = T).

    With s = 0.008 the same betas as diffusers' `beta_schedule="squaredcos_cap_v2"`."""
    _check_int("T", T)
    s = _check_number("s", s)
    max_beta = _check_number("max_beta", max_beta, 0.0, 1.0, inclusive=False)

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
    return (_gather(schedule, "sqrt_alpha_bars", t, x0) * x0
            + _gather(schedule, "sqrt_one_minus_alpha_bars", t, x0) * eps)


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
    mean = _gather(schedule, "posterior_mean_x0_coef", t, x0) * x0 + _gather(schedule, "posterior_mean_xt_coef", t, x0) * xt
    return mean, _gather(schedule, "posterior_variance", t, x0)


def _coefs(t: Tensor | int, xt: Tensor, schedule: NoiseSchedule) -> tuple[Tensor | float, Tensor | float]:
    """(√ᾱ_t, √(1 − ᾱ_t)): Python floats for an int t, (B, 1, 1, 1) tensors for a tensor t."""
    if isinstance(t, int):
        ab = float(schedule.alpha_bars[t])
        return math.sqrt(ab), math.sqrt(1 - ab)
    _check_t(t, xt.shape[0], schedule.T)
    return _gather(schedule, "sqrt_alpha_bars", t, xt), _gather(schedule, "sqrt_one_minus_alpha_bars", t, xt)


def _t_arg(t: object, schedule: NoiseSchedule) -> Tensor | int:
    if isinstance(t, Tensor) and t.ndim == 1:
        return t
    return _check_step_t("t", t, schedule.T)


def predict_x0(model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule,
               prediction: str = "eps") -> Tensor:
    """x̂_0 from the network's output at x_t; t an int or an int64 tensor (B,).

    eps:  x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t   (Ho et al. eq. 15, solved for x_0)
    v:    x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v_θ        (Salimans & Ho 2022)"""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    a, s = _coefs(_t_arg(t, schedule), xt, schedule)
    if prediction == "eps":
        return (xt - s * model_output) / a
    return a * xt - s * model_output


def predict_eps(model_output: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule,
                prediction: str = "eps") -> Tensor:
    """ε̂ from the network's output at x_t: the output itself (eps), or ε̂ = √ᾱ_t v_θ + √(1 − ᾱ_t) x_t (v)."""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    if prediction == "eps":
        return model_output
    a, s = _coefs(_t_arg(t, schedule), xt, schedule)
    return a * model_output + s * xt


def v_target(x0: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the v-prediction target (Salimans & Ho 2022, §4)."""
    _check_images("x0", x0), _check_like("eps", eps, "x0", x0)
    schedule = _check_schedule(schedule)
    _check_t(t, x0.shape[0], schedule.T)
    return (_gather(schedule, "sqrt_alpha_bars", t, x0) * eps
            - _gather(schedule, "sqrt_one_minus_alpha_bars", t, x0) * x0)


def _call(model: nn.Module, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
    return model(x, t) if labels is None else model(x, t, labels)


def diffusion_loss(model: nn.Module, x0: Tensor, schedule: NoiseSchedule, *, labels: Tensor | None = None,
                   prediction: str = "eps", t: Tensor | None = None, eps: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """L_simple = E ‖target − f_θ(x_t, t, y)‖², x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. eq. 14).

    target = ε (prediction="eps") or v (prediction="v"). t ~ U{0, ..., T − 1} and ε ~ N(0, I) are drawn
    (with `generator`, on its device) when not given. x0 (B, C, H, W) in [−1, 1]; returns a scalar."""
    _check_images("x0", x0)
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    B = x0.shape[0]
    if t is None:
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=dev).to(x0.device)
    _check_t(t, B, schedule.T)
    if eps is None:
        dev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
    _check_like("eps", eps, "x0", x0)
    xt = q_sample(x0, t, eps, schedule)  # (B, C, H, W), eq. 4
    target = eps if prediction == "eps" else v_target(x0, eps, t, schedule)
    out = _call(model, xt, t, labels)  # (B, C, H, W)
    return F.mse_loss(out.float(), target.float())


# ---------------------------------------------------------------------------------------------
# Reverse steps: DDPM (ancestral) and DDIM
# ---------------------------------------------------------------------------------------------


def ddpm_step(model_output: Tensor, xt: Tensor, t: int, schedule: NoiseSchedule, noise: Tensor | None,
              *, prediction: str = "eps", clip_x0: bool = True) -> Tensor:
    """One ancestral step x_t -> x_{t−1} (Ho et al. Algorithm 2, written through x̂_0):

        x̂_0 = predict_x0(...)  (clipped to [−1, 1] if clip_x0)                    eq. 15
        μ̃   = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t   eq. 7
        x_{t−1} = μ̃ + √β̃_t · noise   (no noise at t = 0)                              eq. 6, σ_t² = β̃_t

    The same as diffusers' DDPMScheduler.step (variance_type="fixed_small", clip_sample=clip_x0)
    given the same noise. noise (B, C, H, W), or None to draw it."""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule = _check_schedule(schedule)
    t = _check_step_t("t", t, schedule.T)
    x0 = predict_x0(model_output, xt, t, schedule, prediction)  # (B, C, H, W)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars_prev[t])
    beta = float(schedule.betas[t])
    mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * xt
    if t == 0:
        return mean
    if noise is None:
        noise = torch.randn_like(xt)
    _check_like("noise", noise, "xt", xt)
    return mean + math.sqrt(float(schedule.posterior_variance[t])) * noise


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """The DDIM sub-sequence, descending: (steps − 1)·k, ..., k, 0 with k = T // steps
    (diffusers' "leading" spacing, steps_offset=0). steps = T gives T − 1, ..., 0 (every step)."""
    _check_int("T", T)
    _check_int("steps", steps, high=T)
    k = T // steps
    return [i * k for i in range(steps - 1, -1, -1)]


def ddim_step(model_output: Tensor, xt: Tensor, t: int, t_prev: int, schedule: NoiseSchedule, *,
              eta: float = 0.0, noise: Tensor | None = None, prediction: str = "eps",
              clip_x0: bool = False) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12; t_prev < 0 means ᾱ = 1, the data):

        x̂_0 = predict_x0(...)  (clipped to [−1, 1] if clip_x0),  ε̂ = predict_eps(...) (unclipped)
        σ   = η √((1 − ᾱ_prev) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_prev)                       eq. 16
        x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ · noise                       eq. 12

    The same as diffusers' DDIMScheduler.step (set_alpha_to_one=True, clip_sample=clip_x0)."""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule = _check_schedule(schedule)
    t = _check_step_t("t", t, schedule.T)
    if isinstance(t_prev, Tensor) and t_prev.numel() == 1 and not t_prev.is_floating_point():
        t_prev = int(t_prev)
    if not isinstance(t_prev, int) or isinstance(t_prev, bool) or t_prev >= t:
        raise ValueError(f"t_prev: expected an int < t={t} (negative: the end of the chain), got {t_prev!r}")
    eta = _check_number("eta", eta)
    x0 = predict_x0(model_output, xt, t, schedule, prediction)  # (B, C, H, W)
    eps = predict_eps(model_output, xt, t, schedule, prediction)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab = float(schedule.alpha_bars[t])
    ab_prev = float(schedule.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))  # eq. 16
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps  # eq. 12
    if sigma > 0:
        if noise is None:
            noise = torch.randn_like(xt)
        _check_like("noise", noise, "xt", xt)
        out = out + sigma * noise
    return out


def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)).

    w is diffusers' guidance_scale; the paper writes (1 + w') ε(x, y) − w' ε(x, ∅), i.e. w' = w − 1.

    scale w = 1: the conditional prediction; 0: the unconditional one; > 1: pushed further towards y.
    (Works the same on v-predictions: the combination is linear.)"""
    if not isinstance(eps_cond, Tensor) or not eps_cond.is_floating_point():
        raise ValueError(f"eps_cond: expected a floating-point tensor, got {_shape(eps_cond)}")
    _check_like("eps_uncond", eps_uncond, "eps_cond", eps_cond)
    scale = _check_number("scale", scale, low=-math.inf)
    return eps_uncond + scale * (eps_cond - eps_uncond)


# ---------------------------------------------------------------------------------------------
# Prompts -> labels
# ---------------------------------------------------------------------------------------------

_EN_DIGITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
_EN_FILLER = {"a", "an", "the", "digit", "number", "numeral", "of", "draw", "write", "show", "me", "please",
              "handwritten", "hand", "written", "picture", "image", "generate", "make", "one's"}
_ZH_FILLER = ("请", "给我", "帮我", "画", "写", "生成", "个", "张", "手写", "数字", "的", "图片", "图像", "吧",
              "。", "！", "!", ".")
PROMPT_FORMS = ('"7"', '"seven"', '"a seven"', '"digit 3"', '"the number five"', '"draw a 2"', '"七"',
                '"一个七"', '"数字7"')


def prompt_to_label(prompt: str) -> int:
    """The digit a short prompt asks for: "a seven", "digit 3", "7", "the number five", "一个七", "七" -> 7, 3, ...

    English number words or a single digit, with filler words (a, the, digit, number, draw, ...);
    Chinese numerals 零〇一二三四五六七八九 with fillers (一个, 数字, 画, ...). Anything else: ValueError."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string such as {', '.join(PROMPT_FORMS)}, got {type(prompt).__name__}")
    text = unicodedata.normalize("NFKC", prompt).strip().lower()  # full-width ７ -> 7
    found: list[int] = []
    if re.search(r"[\u4e00-\u9fff〇]", text):  # Chinese
        rest = re.sub(r"一[个张只]", " ", text)  # "一个七": this 一 is "a", not the digit 1
        for filler in sorted(_ZH_FILLER, key=len, reverse=True):
            rest = rest.replace(filler, " ")
        tokens = [ch for ch in rest if not ch.isspace()]
        found = [_ZH_DIGITS[ch] if ch in _ZH_DIGITS else int(ch) for ch in tokens
                 if ch in _ZH_DIGITS or ch in "0123456789"]
        ok = len(found) == 1 and len(tokens) == 1
    else:
        tokens = [w for w in re.findall(r"[a-z']+|[-+]?\d+(?:\.\d+)?", text) if w not in _EN_FILLER]
        for w in tokens:
            if w in _EN_DIGITS:
                found.append(_EN_DIGITS[w])
            elif w.isdigit() and len(w) == 1:
                found.append(int(w))
        ok = len(found) == 1 and len(tokens) == 1
    if not ok:
        raise ValueError(f"prompt: expected one digit 0-9 asked for in a form like {', '.join(PROMPT_FORMS)}, "
                         f"got {prompt!r}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps t (B,) -> (B, dim), the Transformer's table
    read at position t: [sin(t ω_0), cos(t ω_0), sin(t ω_1), ...], ω_i = base^{−2i/dim}
    (equal to aigc_lib.transformer.sinusoidal_positions(T, dim)[t])."""
    if not isinstance(t, Tensor) or t.ndim != 1:
        raise ValueError(f"t: expected a 1-D tensor of timesteps (B,), got {_shape(t)}")
    _check_int("dim", dim, low=2)
    if dim % 2:
        raise ValueError(f"dim: expected an even embedding width for sin/cos pairs, got {dim}")
    freq = base ** (-torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim)  # (dim/2,)
    angle = t.float()[:, None] * freq  # (B, dim/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)  # (B, dim), interleaved


@dataclass
class UNetConfig:
    """A small DDPM-style U-Net for 28×28 digits: levels at 28, 14, 7 with base·mults channels."""

    image_channels: int = 1
    base: int = 32  # channels at the first level
    mults: tuple[int, ...] = (1, 2, 2)  # channel multiplier per level; each level but the last halves H, W
    blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attn_res: tuple[int, ...] = (7,)  # resolutions (H of a square map) with self-attention
    time_dim: int | None = None  # width of the sinusoidal and the time (+ class) embedding; None: max(64, 4·base)
    n_classes: int | None = None  # class-conditional with this many classes; label n_classes is "no label"
    groups: int = 8  # GroupNorm groups (>= 2 channels each, better 4+)
    heads: int = 1  # attention heads (channels must divide)
    dropout: float = 0.0
    image_size: int = 28
    upsample: str = "conv"  # "conv": nearest ×2 then a 3×3 conv (DDPM); "transpose": a 2×2 stride-2 transposed conv (cheaper)

    def __post_init__(self) -> None:
        for name in ("image_channels", "base", "blocks", "groups", "heads", "image_size"):
            _check_int(name, getattr(self, name))
        if self.time_dim is None:
            self.time_dim = max(64, 4 * self.base)  # enough sin/cos frequencies to tell t = 0..999 apart
        _check_int("time_dim", self.time_dim, low=2)
        if self.time_dim % 2:
            raise ValueError(f"time_dim: expected an even width for sin/cos pairs, got {self.time_dim}")
        if self.n_classes is not None:
            _check_int("n_classes", self.n_classes)
        mults = tuple(self.mults)
        if not mults or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in mults):
            raise ValueError(f"mults: expected a non-empty tuple of positive ints, got {self.mults!r}")
        self.mults = mults
        if self.image_size % 2 ** (len(mults) - 1):
            raise ValueError(f"image_size: {self.image_size} cannot be halved {len(mults) - 1} times "
                             f"(mults={mults}); use fewer levels")
        self.attn_res = tuple(self.attn_res)
        for m in mults:
            ch = self.base * m
            if ch % self.groups or ch // self.groups < 2:
                # one channel per group would make GroupNorm remove every channel's mean: the network
                # could no longer predict the mean of ε, and samples drift to flat white or black
                raise ValueError(f"groups: expected a divisor of every level's channels "
                                 f"{[self.base * k for k in mults]} leaving >= 2 channels per group, got {self.groups}")
            if ch % self.heads:
                raise ValueError(f"heads: expected a divisor of every level's channels "
                                 f"{[self.base * k for k in mults]}, got {self.heads}")
        if self.upsample not in ("conv", "transpose"):
            raise ValueError(f"upsample: expected 'conv' or 'transpose', got {self.upsample!r}")
        self.dropout = _check_number("dropout", self.dropout, 0.0, 1.0, inclusive=True)
        if self.dropout == 1.0:
            raise ValueError("dropout: expected a probability < 1, got 1.0")

    @property
    def resolutions(self) -> list[int]:
        return [self.image_size // 2**i for i in range(len(self.mults))]


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W·emb;  out = skip(x) + conv(dropout(SiLU(GN(h)))) (Ho et al. appendix B)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight), nn.init.zeros_(self.conv2.bias)  # each block starts as identity

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]  # time (+ class) embedding, broadcast over H, W
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + proj(softmax(q kᵀ / √d) v) over the H·W positions, q, k, v = 1×1 convs of GN(x)."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)  # (B, 3, nh, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, nh, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, d)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class _Level(nn.Module):
    """Residual blocks (each followed by attention at attention resolutions) at one resolution."""

    def __init__(self, c_ins: list[int], c_out: int, emb_dim: int, cfg: UNetConfig, attn: bool):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, c_out, emb_dim, cfg.groups, cfg.dropout) for c in c_ins)
        self.attn = nn.ModuleList(SelfAttention(c_out, cfg.groups, cfg.heads) if attn else nn.Identity()
                                  for _ in c_ins)


class _Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest-neighbour ×2 and a 3×3 conv, or a 2×2 stride-2 transposed conv."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = nn.ConvTranspose2d(channels, channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "conv":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class UNet(nn.Module):
    """ε_θ(x_t, t, y): images (B, C, H, W), timesteps (B,), optional labels (B,) -> (B, C, H, W).

    Down: conv_in, then per level `blocks` ResBlocks (+ attention) and a stride-2 conv (not after the
    last level); middle: ResBlock, attention, ResBlock; up: per level `blocks + 1` ResBlocks on the
    concatenated skip activations, then nearest-neighbour upsampling and a conv; out: GN, SiLU, conv.
    Conditioning: emb = MLP(timestep_embedding(t, time_dim)) + class_embedding(y), added in every ResBlock.
    The class embedding has n_classes + 1 rows: the last (label n_classes) is the null label ∅ of
    classifier-free guidance; labels=None means ∅ for the whole batch."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        if config is None:
            config = UNetConfig()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"config: expected a UNetConfig, got {type(config).__name__}")
        self.config = c = config
        self.n_classes = c.n_classes
        E = c.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        self.class_emb = nn.Embedding(c.n_classes + 1, E) if c.n_classes else None
        self.conv_in = nn.Conv2d(c.image_channels, c.base, 3, padding=1)
        chans = [c.base * m for m in c.mults]
        res = c.resolutions
        skips = [c.base]  # channels of each saved activation, in order
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = c.base
        for i, cout in enumerate(chans):
            ins = [ch] + [cout] * (c.blocks - 1)
            self.down.append(_Level(ins, cout, E, c, res[i] in c.attn_res))
            skips += [cout] * c.blocks
            ch = cout
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # (B, ch, H/2, W/2)
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, E, c.groups, c.dropout)
        self.mid_attn = SelfAttention(ch, c.groups, c.heads)
        self.mid2 = ResBlock(ch, ch, E, c.groups, c.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            cout = chans[i]
            ins = []
            for _ in range(c.blocks + 1):
                ins.append(ch + skips.pop())
                ch = cout
            self.up.append(_Level(ins, cout, E, c, res[i] in c.attn_res))
            if i > 0:
                self.upsample.append(_Upsample(ch, c.upsample))
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight), nn.init.zeros_(self.conv_out.bias)

    def _check_inputs(self, x: object, t: object, labels: object) -> None:
        c = self.config
        if (not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4
                or tuple(x.shape[1:]) != (c.image_channels, c.image_size, c.image_size)):
            raise ValueError(f"x: expected images of shape (B, {c.image_channels}, {c.image_size}, "
                             f"{c.image_size}), got {_shape(x)}")
        B = x.shape[0]
        if not isinstance(t, Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (B,):
            kind = f"{t.dtype} " if isinstance(t, Tensor) else ""
            raise ValueError(f"t: expected an int64 tensor of timesteps of shape ({B},), got {kind}{_shape(t)}")
        if labels is None:
            return
        if not self.n_classes:
            raise ValueError("labels: this U-Net is unconditional (n_classes=None); pass labels=None")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (B,):
            kind = f"{labels.dtype} " if isinstance(labels, Tensor) else ""
            raise ValueError(f"labels: expected an int64 tensor of shape ({B},), got {kind}{_shape(labels)}")
        if labels.device.type == "cpu" and B and (int(labels.min()) < 0 or int(labels.max()) > self.n_classes):
            raise ValueError(f"labels: expected classes in [0, {self.n_classes - 1}] or {self.n_classes} "
                             f"(the null label), got values in [{int(labels.min())}, {int(labels.max())}]")

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        self._check_inputs(x, t, labels)
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(self.conv_in.weight.dtype))  # (B, E)
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.n_classes)  # all ∅
            emb = emb + self.class_emb(labels)
        h = self.conv_in(x)  # (B, base, H, W)
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.res, level.attn, strict=True):
                h = attn(block(h, emb))  # (B, base·mult_i, H_i, W_i)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, ·, H_i / 2, W_i / 2)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)  # (B, ch, H_last, W_last)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.res, level.attn, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))  # skip connection
            if i < len(self.upsample):
                h = self.upsample[i](h)  # (B, ch, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------
# EMA of the weights
# ---------------------------------------------------------------------------------------------


class EMA:
    """θ_ema ← d θ_ema + (1 − d) θ after each update, with the warm-up d = min(decay, (1 + n) / (10 + n))
    (n = updates so far), so the average forgets the random initial weights quickly in short runs.

    `.model` is the averaged copy (eval mode, no gradients): sample from it. Buffers are copied.
    state_dict()/load_state_dict() let `fit` checkpoint it (extra_state)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.decay = _check_number("decay", decay, 0.0, 1.0)
        self.warmup = bool(warmup)
        self.model = copy.deepcopy(getattr(model, "_orig_mod", model)).eval().requires_grad_(False)
        self.updates = 0  # how many times update() ran
        self.step = 0  # the training step (optimizer updates) the average reflects, for train_diffusion

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = getattr(model, "_orig_mod", model)
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters() if p.is_floating_point()]
        src_p = [p.detach() for p in model.parameters() if p.is_floating_point()]
        if len(ema_p) != len(src_p):
            raise ValueError("model: does not have the parameters of the averaged model")
        torch._foreach_lerp_(ema_p, src_p, 1 - d)  # θ_ema + (1 − d)(θ − θ_ema) = d θ_ema + (1 − d) θ
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (overwrites its parameters)."""
        getattr(model, "_orig_mod", model).load_state_dict(self.model.state_dict())

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "decay": self.decay, "updates": self.updates, "step": self.step}

    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.updates, self.step = float(state["decay"]), int(state["updates"]), int(state["step"])


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _labels_arg(labels: object, n: int, n_classes: int | None) -> Tensor | None:
    if labels is None:
        return None
    if not n_classes:
        raise ValueError("labels: the model is unconditional (n_classes=None); pass labels=None")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.int64)
    elif isinstance(labels, (list, tuple)):
        labels = torch.tensor(labels, dtype=torch.int64)
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(f"labels: expected an int, or an int64 tensor of shape ({n},), got {_shape(labels)}")
    labels = labels.cpu()
    if n and (int(labels.min()) < 0 or int(labels.max()) > n_classes):
        raise ValueError(f"labels: expected classes in [0, {n_classes - 1}] (or {n_classes}: no label), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


@torch.no_grad()
def sample(model: nn.Module, n: int, schedule: NoiseSchedule, *, sampler: str = "ddim", steps: int | None = None,
           eta: float = 0.0, labels: Tensor | int | None = None, guidance: float = 1.0, prediction: str = "eps",
           clip_x0: bool | None = None, generator: torch.Generator | None = None, trajectory: bool | str = False,
           progress: bool = True, batch_size: int = 500) -> Tensor | tuple[Tensor, list[Tensor]]:
    """n images (n, C, H, W) in [−1, 1] (float32, on the CPU) from x_T ~ N(0, I), stepping down with
    `ddpm_step` (steps = T, all of them) or `ddim_step` (steps from `ddim_timesteps`; default 50, η = eta).

    labels: None (the null label ∅ for a conditional model: "unconditional"), an int, or (n,) int64.
    guidance w ≠ 1 with labels: ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) from ONE batched forward pass on
    [x; x] with labels [y; ∅] per step (`guided_eps`). clip_x0: clip x̂_0 to [−1, 1] (default: True for
    DDPM, False for DDIM, as in Ho et al. and Song et al.). generator: seeds x_T and the noise (drawn
    on the generator's device, the CPU by default). trajectory=True (or "xt"): also return about a
    dozen snapshots of x_t, from x_T to the final images; trajectory="x0": the predictions x̂_0 instead."""
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    _check_int("n", n), _check_int("batch_size", batch_size)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {list(SAMPLERS)}, got {sampler!r}")
    if trajectory not in (False, True, "xt", "x0"):
        raise ValueError(f"trajectory: expected False, True, 'xt' or 'x0', got {trajectory!r}")
    eta = _check_number("eta", eta)
    guidance = _check_number("guidance", guidance, low=-math.inf)
    n_classes = getattr(model, "n_classes", None)
    labels = _labels_arg(labels, n, n_classes)
    if guidance != 1.0 and labels is None:
        raise ValueError(f"guidance: a scale w != 1 (got {guidance:g}) needs labels to guide towards")
    if sampler == "ddpm":
        if steps not in (None, schedule.T):
            raise ValueError(f"steps: DDPM runs all T={schedule.T} steps; got steps={steps!r} (use sampler='ddim')")
        ts = list(range(schedule.T - 1, -1, -1))
        prevs = [t - 1 for t in ts]
    else:
        steps = 50 if steps is None else steps
        _check_int("steps", steps, high=schedule.T)
        ts = ddim_timesteps(schedule.T, steps)
        prevs = [t - schedule.T // steps for t in ts]  # the last one < 0: ᾱ_prev = 1
    if clip_x0 is None:
        clip_x0 = sampler == "ddpm"
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    c = getattr(model, "config", None)
    shape = (c.image_channels, c.image_size, c.image_size) if isinstance(c, UNetConfig) else (1, 28, 28)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    null = n_classes if n_classes else None

    def randn(k: int) -> Tensor:
        return torch.randn((k, *shape), generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)

    every = max(1, len(ts) // 10)
    was_training = model.training
    model.eval()
    outs, trajs = [], []
    bar = tqdm(total=len(ts) * math.ceil(n / batch_size), desc=f"{sampler} sampling", disable=not progress,
               dynamic_ncols=True)
    try:
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            y = labels[start : start + k].to(device) if labels is not None else None
            guided = y is not None and guidance != 1.0
            if guided:
                y_in = torch.cat([y, torch.full_like(y, null)])  # (2k,): [y; ∅]
            elif y is None and null is not None:
                y_in = torch.full((k,), null, dtype=torch.int64, device=device)  # ∅
            else:
                y_in = y
            x = randn(k)  # x_T ~ N(0, I), (k, C, H, W)
            snaps = [x.float().cpu()] if trajectory in (True, "xt") else []
            for i, (t, t_prev) in enumerate(zip(ts, prevs, strict=True)):
                tt = torch.full((2 * k if guided else k,), t, dtype=torch.int64, device=device)
                x_in = torch.cat([x, x]) if guided else x
                with autocast(device):
                    out = _call(model, x_in, tt, y_in).to(dtype)  # (k or 2k, C, H, W)
                if guided:
                    out = guided_eps(out[:k], out[k:], guidance)  # one forward, then eq. 6 of CFG
                last = i == len(ts) - 1
                if trajectory == "x0" and (i % every == 0 or last):
                    x0 = predict_x0(out, x, t, schedule, prediction)
                    snaps.append((x0.clamp(-1, 1) if clip_x0 else x0).float().cpu())
                if sampler == "ddpm":
                    noise = randn(k) if t > 0 else None
                    x = ddpm_step(out, x, t, schedule, noise, prediction=prediction, clip_x0=clip_x0)
                else:
                    noise = randn(k) if eta > 0 else None
                    x = ddim_step(out, x, t, t_prev, schedule, eta=eta, noise=noise, prediction=prediction,
                                  clip_x0=clip_x0)
                if trajectory in (True, "xt") and ((i + 1) % every == 0 or last):
                    snaps.append(x.float().cpu())
                bar.update()
            outs.append(x.float().clamp(-1, 1).cpu())
            trajs.append(snaps)
    finally:
        bar.close()
        model.train(was_training)
    images = torch.cat(outs)
    if not trajectory:
        return images
    return images, [torch.cat(parts) for parts in zip(*trajs, strict=True)]


def to_unit(x: Tensor) -> Tensor:
    """[−1, 1] -> [0, 1] (plots, digit metrics): (x + 1) / 2, clamped."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {_shape(x)}")
    return ((x + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_diffusion(model: nn.Module, images: Tensor, steps: int, *, schedule: NoiseSchedule,
                    labels: Tensor | None = None, p_uncond: float = 0.1, batch_size: int = 64, lr: float = 2e-3,
                    warmup: int | None = None, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                    ema_decay: float = 0.999, prediction: str = "eps", seed: int = 0,
                    checkpoint: str | os.PathLike | None = None, ckpt_every: int = 500, log_every: int = 50,
                    progress: bool = True, desc: str = "diffusion", on_log=None) -> tuple[History, EMA]:
    """Train `model` on L_simple (eq. 14) over shuffled epochs of `images` (N, C, H, W) in [0, 1]
    (scaled to [−1, 1] here), with AdamW(lr) after a linear warm-up of `warmup` steps (default:
    min(200, steps // 10)) and a cosine decay to lr/10, gradient clipping, and an EMA of the weights.

    labels (N,) int64 with a conditional model: each label is replaced by the null label ∅ with
    probability p_uncond (condition dropout, so one model also learns ε(x, ∅) for guidance).
    Each step's batch, labels, dropped labels, t and ε come from a generator seeded by (seed, step),
    so a run resumed from `checkpoint=` ends with the same weights (and EMA) as an uninterrupted one.
    `on_log` as in `fit` (e.g. a plots.LiveLossCurve).
    Returns (History with "loss" and "grad_norm", the EMA; sample from `ema.model`)."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"model: expected an nn.Module with parameters, got {type(model).__name__}")
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    _check_int("steps", steps), _check_int("batch_size", batch_size)
    lr = _check_number("lr", lr, inclusive=False)
    p_uncond = _check_number("p_uncond", p_uncond, 0.0, 1.0)
    weight_decay = _check_number("weight_decay", weight_decay)
    ema_decay = _check_number("ema_decay", ema_decay, 0.0, 1.0)
    warmup = min(200, steps // 10) if warmup is None else _check_int("warmup", warmup, low=0)
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images: expected a non-empty floating-point batch (N, C, H, W) in [0, 1], got {_shape(images)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"images: expected values in [0, 1] (they are scaled to [−1, 1] here), got [{lo:.3g}, {hi:.3g}]")
    n_classes = getattr(model, "n_classes", None)
    if labels is not None:
        if not n_classes:
            raise ValueError("labels: the model is unconditional (n_classes=None); pass labels=None")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (len(images),):
            raise ValueError(f"labels: expected an int64 tensor of shape ({len(images)},), got {_shape(labels)}")
        if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
            raise ValueError(f"labels: expected classes in [0, {n_classes - 1}], got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        labels = labels.cpu()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    data = (images.detach().to("cpu", torch.float32) * 2 - 1).contiguous()  # [0, 1] -> [−1, 1], (N, C, H, W)
    if cuda:
        data = data.pin_memory()
    order = epoch_indices(len(data), min(batch_size, len(data)), seed)
    T = schedule.T
    ema = EMA(model, ema_decay)
    optimizer, scheduler = adamw_warmup_cosine(model, lr, steps, warmup, weight_decay=weight_decay)

    def batches(step: int) -> dict:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step + 1)
        idx = order(step)  # (B,)
        x0 = data[idx]
        batch = {"x0": x0, "t": torch.randint(0, T, (len(idx),), generator=gen),
                 "eps": torch.randn(x0.shape, generator=gen), "step": step}
        if labels is not None:  # condition dropout: ∅ with probability p_uncond
            drop = torch.rand(len(idx), generator=gen) < p_uncond
            batch["labels"] = torch.where(drop, torch.full_like(idx, n_classes), labels[idx])
        return batch

    def loss_fn(m: nn.Module, batch: dict) -> Tensor:
        # the EMA folds in the weights after `step` updates (fit has no per-step hook: done here, before
        # this step's update; the last update is folded in after fit returns)
        if batch["step"] > ema.step:
            ema.update(m)
            ema.step = batch["step"]
        x0, eps = batch["x0"].to(dtype), batch["eps"].to(dtype)
        if cuda:
            x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
        return diffusion_loss(m, x0, schedule, labels=batch.get("labels"), prediction=prediction,
                              t=batch["t"], eps=eps)

    history = fit(model, optimizer, batches, loss_fn, steps, grad_clip=grad_clip if grad_clip is not None else math.inf,
                  scheduler=scheduler, checkpoint=checkpoint, ckpt_every=ckpt_every, log_every=log_every,
                  extra_state={"ema": ema}, desc=desc, progress=progress, on_log=on_log)
    if ema.step < steps:  # fold in the final weights
        ema.update(model)
        ema.step = steps
    return history, ema
