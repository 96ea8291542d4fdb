"""Sampling: the reverse steps of DDPM and DDIM, classifier-free guidance, and `sample`.

Ancestral sampling (Ho, Jain & Abbeel, NeurIPS 2020), written through x̂_0 (`predict_x0`, eq. 15):

    x_{t−1} = μ̃_t(x_t, x̂_0) + √β̃_t z                                   Alg. 2   ddpm_step

DDIM (Song, Meng & Ermon, ICLR 2021, eq. 12) jumps from t to an earlier t' on a sub-sequence
(`ddim_timesteps`):

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε_θ + σ_t z,
    σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'})             eq. 16   ddim_step
    (η = 0: deterministic; η = 1 and t' = t − 1: DDPM without x̂_0 clipping. DDIM's clip_x0 clips x̂_0
    only and keeps the network's ε̂, as diffusers does by default; DDPM's clipping also changes the ε it implies)

Classifier-free guidance (Ho & Salimans, 2022): ONE network is trained with the label replaced by a
null token with probability p_uncond, and sampled with

    ε̃ = ε_θ(x_t, ∅) + w (ε_θ(x_t, y) − ε_θ(x_t, ∅))                                   guided_eps

(w = 1: the conditional model; w = 0: the unconditional one; w > 1: sharper, more "on prompt").

`sample` draws images from x_T ~ N(0, I) with either step, with or without guidance. Images live in
[−1, 1]; `to_unit` maps them to [0, 1] for plots and the metrics.

These step functions agree with the reference implementation in the `diffusers` library
(DDPMScheduler with variance_type="fixed_small", DDIMScheduler with timestep_spacing="leading",
set_alpha_to_one=True); tests/test_diffusion.py checks them step by step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.diffusion.schedule import (
    NoiseSchedule,
    _call,
    _check_images,
    _check_like,
    _check_model,
    _check_prediction,
    _check_schedule,
    _check_step_t,
    _predict_eps,
    _predict_x0,
)
from aigc_lib.diffusion.unet import UNetConfig
from aigc_lib.runtime import autocast, channels_last, eval_mode

SAMPLERS = ("ddim", "ddpm")
# On the CPU the U-Nets run a forward pass fastest per image at batches of about 100-200 (a batch of 400 is
# ~20% slower per image: its activations leave the caches), so `sample` calls them on slices of this size.
CPU_FORWARD_CHUNK = 200


# ---------------------------------------------------------------------------------------------
# Reverse steps: DDPM (ancestral) and DDIM
# ---------------------------------------------------------------------------------------------


def ddpm_step(
    model_output: Tensor,
    xt: Tensor,
    t: int,
    schedule: NoiseSchedule,
    noise: Tensor | None,
    *,
    prediction: str = "eps",
    clip_x0: bool = True,
) -> Tensor:
    """One ancestral step x_t -> x_{t−1} (Ho et al. Algorithm 2, written through x̂_0):

        x̂_0 = predict_x0(...)  (clipped to [−1, 1] if clip_x0)                    eq. 15
        μ̃   = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t   eq. 7
        x_{t−1} = μ̃ + √β̃_t · noise   (no noise at t = 0)                              eq. 6, σ_t² = β̃_t

    The same as diffusers' DDPMScheduler.step (variance_type="fixed_small", clip_sample=clip_x0)
    given the same noise. noise (B, C, H, W), or None to draw it."""
    _check_images("xt", xt), _check_like("model_output", model_output, "xt", xt)
    schedule = _check_schedule(schedule)
    t = _check_step_t("t", t, schedule.T)
    prediction = _check_prediction(prediction)
    if t > 0 and noise is not None:
        _check_like("noise", noise, "xt", xt)
    return _ddpm_step(model_output, xt, t, schedule, noise, prediction, clip_x0)


def _ddpm_step(
    model_output: Tensor,
    xt: Tensor,
    t: int,
    schedule: NoiseSchedule,
    noise: Tensor | None,
    prediction: str,
    clip_x0: bool,
) -> Tensor:
    x0 = _predict_x0(model_output, xt, t, schedule, prediction)  # (B, C, H, W)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars_prev[t])
    beta = float(schedule.betas[t])
    mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * xt
    if t == 0:
        return mean
    if noise is None:
        noise = torch.randn_like(xt)
    return mean + math.sqrt(float(schedule.posterior_variance[t])) * noise


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """The DDIM sub-sequence, descending: (steps − 1)·k, ..., k, 0 with k = T // steps
    (diffusers' "leading" spacing, steps_offset=0). steps = T gives T − 1, ..., 0 (every step)."""
    check_int("T", T)
    check_int("steps", steps, high=T)
    return _ddim_timesteps(T, steps)


def _ddim_timesteps(T: int, steps: int) -> list[int]:
    k = T // steps
    return [i * k for i in range(steps - 1, -1, -1)]


def ddim_step(
    model_output: Tensor,
    xt: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    noise: Tensor | None = None,
    prediction: str = "eps",
    clip_x0: bool = False,
) -> Tensor:
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
    eta = check_number("eta", eta)
    prediction = _check_prediction(prediction)
    if noise is not None and _ddim_sigma(t, t_prev, schedule, eta) > 0:
        _check_like("noise", noise, "xt", xt)
    return _ddim_step(model_output, xt, t, t_prev, schedule, eta, noise, prediction, clip_x0)


def _ddim_sigma(t: int, t_prev: int, schedule: NoiseSchedule, eta: float) -> float:
    """σ of eq. 16 (0 for η = 0, and at the last step, where ᾱ_prev = 1)."""
    ab = float(schedule.alpha_bars[t])
    ab_prev = float(schedule.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    return eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))


def _ddim_step(
    model_output: Tensor,
    xt: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    eta: float,
    noise: Tensor | None,
    prediction: str,
    clip_x0: bool,
) -> Tensor:
    x0 = _predict_x0(model_output, xt, t, schedule, prediction)  # (B, C, H, W)
    eps = _predict_eps(model_output, xt, t, schedule, prediction)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    ab_prev = float(schedule.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    sigma = _ddim_sigma(t, t_prev, schedule, eta)  # eq. 16
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps  # eq. 12
    if sigma > 0:
        if noise is None:
            noise = torch.randn_like(xt)
        out = out + sigma * noise
    return out


def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)).

    w is diffusers' guidance_scale; the paper writes (1 + w') ε(x, y) − w' ε(x, ∅), i.e. w' = w − 1.

    scale w = 1: the conditional prediction; 0: the unconditional one; > 1: pushed further towards y.
    (Works the same on v-predictions: the combination is linear.)"""
    if not isinstance(eps_cond, Tensor) or not eps_cond.is_floating_point():
        raise ValueError(f"eps_cond: expected a floating-point tensor, got {shape_of(eps_cond)}")
    _check_like("eps_uncond", eps_uncond, "eps_cond", eps_cond)
    scale = check_number("scale", scale, low=-math.inf)
    return _guided_eps(eps_cond, eps_uncond, scale)


def _guided_eps(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    return eps_uncond + scale * (eps_cond - eps_uncond)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample(
    model: nn.Module,
    n: int,
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    labels: Tensor | int | None = None,
    context: Tensor | None = None,
    mask: Tensor | None = None,
    guidance: float = 1.0,
    prediction: str = "eps",
    clip_x0: bool | None = None,
    generator: torch.Generator | None = None,
    trajectory: bool | str = False,
    progress: bool = True,
    batch_size: int = 500,
    clamp: bool = True,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """n images (n, C, H, W) in [−1, 1] (float32, on the CPU) from x_T ~ N(0, I), stepping down with
    `ddpm_step` (steps = T, all of them) or `ddim_step` (steps from `ddim_timesteps`; default 50, η = eta).

    labels: None (the null label ∅ for a conditional model: "unconditional"), an int, or (n,) int64.
    context (n, L, D) and mask (n, L) bool: a caption's token states for a text-conditional U-Net (mask
    True for real tokens); the unconditional branch is the caption of padding only (mask all False).
    guidance w ≠ 1 with labels or a caption: ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) from ONE batched
    forward pass on [x; x] with labels [y; ∅] (or masks [mask; none]) per step (`guided_eps`).
    clip_x0: clip x̂_0 to [−1, 1] (default: True for DDPM, False for DDIM, as in Ho et al. and Song et al.).
    generator: seeds x_T and the noise (drawn on the generator's device, the CPU by default).
    trajectory=True (or "xt"): also return about a dozen snapshots of x_t, from x_T to the final images;
    trajectory="x0": the predictions x̂_0 instead. clamp: clip the final samples to [−1, 1], the range of
    pixels; pass False for latents, which are not bounded (a third of unit-variance latents lie beyond ±1)."""
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    _check_model(model)
    check_int("n", n), check_int("batch_size", batch_size)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {list(SAMPLERS)}, got {sampler!r}")
    if trajectory not in (False, True, "xt", "x0"):
        raise ValueError(f"trajectory: expected False, True, 'xt' or 'x0', got {trajectory!r}")
    eta = check_number("eta", eta)
    guidance = check_number("guidance", guidance, low=-math.inf)
    n_classes = getattr(model, "n_classes", None)
    labels = _check_labels(labels, n, n_classes)
    context, mask = _check_context(context, mask, n, getattr(getattr(model, "config", None), "context_dim", None))
    if labels is not None and context is not None:
        raise ValueError("labels: pass labels or a caption (context), not both")
    if guidance != 1.0 and labels is None and context is None:
        raise ValueError(f"guidance: a scale w != 1 (got {guidance:g}) needs labels or a caption to guide towards")
    if sampler == "ddpm":
        if steps not in (None, schedule.T):
            raise ValueError(f"steps: DDPM runs all T={schedule.T} steps; got steps={steps!r} (use sampler='ddim')")
        ts = list(range(schedule.T - 1, -1, -1))
        prevs = [t - 1 for t in ts]
    else:
        steps = 50 if steps is None else steps
        check_int("steps", steps, high=schedule.T)
        ts = _ddim_timesteps(schedule.T, steps)
        prevs = [t - schedule.T // steps for t in ts]  # the last one < 0: ᾱ_prev = 1
    if clip_x0 is None:
        clip_x0 = sampler == "ddpm"
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    c = getattr(model, "config", None)
    shape = (c.image_channels, c.image_size, c.image_size) if isinstance(c, UNetConfig) else (1, 28, 28)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    chunk = CPU_FORWARD_CHUNK if device.type == "cpu" else None
    null = n_classes if n_classes else None

    def randn(k: int) -> Tensor:
        return torch.randn((k, *shape), generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)

    every = max(1, len(ts) // 10)
    outs, trajs = [], []
    bar = tqdm(
        total=len(ts) * math.ceil(n / batch_size), desc=f"{sampler} sampling", disable=not progress, dynamic_ncols=True
    )
    with eval_mode(model), channels_last(model), bar:
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            y = labels[start : start + k].to(device) if labels is not None else None
            guided = (y is not None or context is not None) and guidance != 1.0
            if context is not None:
                c, m = context[start : start + k].to(device, dtype), mask[start : start + k].to(device)
                y_in = {"context": c, "mask": m}
                if guided:  # [caption; the same caption as padding only = ∅]
                    y_in = dict(zip(("context", "mask"), _caption_guidance_batch(c, m), strict=True))
            elif guided:
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
                    out = _forward(model, x_in, tt, y_in, chunk).to(dtype)  # (k or 2k, C, H, W)
                if guided:
                    out = _guided_eps(out[:k], out[k:], guidance)  # one forward, then eq. 6 of CFG
                last = i == len(ts) - 1
                if trajectory == "x0" and (i % every == 0 or last):
                    x0 = _predict_x0(out, x, t, schedule, prediction)
                    snaps.append((x0.clamp(-1, 1) if clip_x0 else x0).float().cpu())
                if sampler == "ddpm":
                    noise = randn(k) if t > 0 else None
                    x = _ddpm_step(out, x, t, schedule, noise, prediction, clip_x0)
                else:
                    noise = randn(k) if eta > 0 else None
                    x = _ddim_step(out, x, t, t_prev, schedule, eta, noise, prediction, clip_x0)
                if trajectory in (True, "xt") and ((i + 1) % every == 0 or last):
                    snaps.append(x.float().cpu())
                bar.update()
            outs.append((x.float().clamp(-1, 1) if clamp else x.float()).cpu())
            trajs.append(snaps)
    images = torch.cat(outs)
    if not trajectory:
        return images
    return images, [torch.cat(parts) for parts in zip(*trajs, strict=True)]


def _forward(model: nn.Module, x: Tensor, t: Tensor, cond: Tensor | dict | None, chunk: int | None) -> Tensor:
    """The network on a batch, in slices of at most `chunk` images: the same result (each image is computed
    on its own), and the random draws of `sample` stay per batch."""
    if chunk is None or len(x) <= chunk:
        return _call(model, x, t, cond)
    parts = []
    for s in range(0, len(x), chunk):
        part = slice(s, s + chunk)
        c = {k: v[part] for k, v in cond.items()} if isinstance(cond, dict) else None if cond is None else cond[part]
        parts.append(_call(model, x[part], t[part], c))
    return torch.cat(parts)


def _check_labels(labels: object, n: int, n_classes: int | None) -> Tensor | None:
    """sample's labels: None, an int, or (n,) int64 classes in [0, n_classes] (n_classes: ∅); on the CPU."""
    if labels is None:
        return None
    if not n_classes:
        raise ValueError("labels: the model is unconditional (n_classes=None); pass labels=None")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.int64)
    elif isinstance(labels, (list, tuple)):
        labels = torch.tensor(labels, dtype=torch.int64)
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(f"labels: expected an int, or an int64 tensor of shape ({n},), got {shape_of(labels)}")
    labels = labels.cpu()
    if n and (int(labels.min()) < 0 or int(labels.max()) > n_classes):
        raise ValueError(
            f"labels: expected classes in [0, {n_classes - 1}] (or {n_classes}: no label), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def caption_guidance_batch(context: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Classifier-free guidance with captions in ONE network call: the batch of 2B captions whose first B
    are the captions and whose last B are the same token states with every token masked — a caption of
    padding only, which the U-Net reads as ∅ (no cross-attention update, nothing pooled). Not zero
    states with a True mask: the network would attend to them like any caption. Returns
    (context (2B, L, D), mask (2B, L)); the images and timesteps are simply repeated: [x; x], [t; t]."""
    if not isinstance(context, Tensor) or not context.is_floating_point() or context.ndim != 3:
        raise ValueError(f"context: expected float token states (B, L, D), got {shape_of(context)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(f"mask: expected a bool tensor {tuple(context.shape[:2])}, got {shape_of(mask)}")
    return _caption_guidance_batch(context, mask)


def _caption_guidance_batch(context: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cat([context, context]), torch.cat([mask, torch.zeros_like(mask)])


def _check_context(context: object, mask: object, n: int, width: int | None) -> tuple[Tensor | None, Tensor | None]:
    """sample's caption: None, or token states (n, L, width) with a bool mask (n, L), True for real tokens."""
    if context is None and mask is None:
        return None, None
    if width is None:
        raise ValueError("context: the model does not read text (config.context_dim=None); pass context=None")
    if not isinstance(context, Tensor) or not context.is_floating_point() or context.ndim != 3:
        raise ValueError(f"context: expected float token states ({n}, L, {width}), got {shape_of(context)}")
    if len(context) != n or context.shape[-1] != width:
        raise ValueError(f"context: expected token states ({n}, L, {width}), got {shape_of(context)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(
            f"mask: expected a bool tensor {tuple(context.shape[:2])}, True for real tokens, got {shape_of(mask)}"
        )
    return context, mask


def to_unit(x: Tensor) -> Tensor:
    """[−1, 1] -> [0, 1] (plots, digit metrics): (x + 1) / 2, clamped."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {shape_of(x)}")
    return ((x + 1) / 2).clamp(0, 1)
