"""Training a diffusion model: an exponential moving average of the weights, and `train_diffusion`.

    θ_ema ← d θ_ema + (1 − d) θ,   d = min(decay, (1 + n) / (10 + n))   after each optimizer step   EMA
    L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t, y)‖²  (Ho et al. eq. 14), with the
    label y replaced by the null label ∅ with probability p_uncond (classifier-free guidance)       train_diffusion

`train_diffusion` runs the course's one loop `training.fit`: the loss is `diffusion_loss`'s, the
EMA update is fit's per-step hook (`on_step`) and is checkpointed with the run (`extra_state`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Unpack

import torch
from torch import Tensor, nn

from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.diffusion.schedule import (
    NoiseSchedule,
    _check_prediction,
    _check_schedule,
    _diffusion_loss,
)
from aigc_lib.runtime import step_generator, unwrap
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit


class EMA:
    """θ_ema ← d θ_ema + (1 − d) θ after each update, with the warm-up d = min(decay, (1 + n) / (10 + n))
    (n = updates so far), so the average forgets the random initial weights quickly in short runs.

    `.model` is the averaged copy (eval mode, no gradients): sample from it. Buffers are copied.
    state_dict()/load_state_dict() let `fit` checkpoint it (extra_state)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.decay = check_number("decay", decay, 0.0, 1.0)
        self.warmup = bool(warmup)
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.updates = 0  # how many times update() ran
        self.step = 0  # the training step (optimizer updates) the average reflects, for train_diffusion

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = unwrap(model)
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
        unwrap(model).load_state_dict(self.model.state_dict())

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "decay": self.decay, "updates": self.updates, "step": self.step}

    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.updates, self.step = float(state["decay"]), int(state["updates"]), int(state["step"])


def train_diffusion(
    model: nn.Module,
    images: Tensor,
    steps: int,
    *,
    schedule: NoiseSchedule,
    labels: Tensor | None = None,
    context: Callable[[int, Tensor], tuple[Tensor, Tensor]] | None = None,
    p_uncond: float = 0.1,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.999,
    prediction: str = "eps",
    seed: int = 0,
    rescale: bool = True,
    **run: Unpack[RunOptions],
) -> tuple[History, EMA]:
    """Train `model` on L_simple (eq. 14) over shuffled epochs of `images` (N, C, H, W) in [0, 1]
    (scaled to [−1, 1] here), with AdamW(lr) after a linear warm-up of `warmup` steps (default:
    min(200, steps // 10)) and a cosine decay to lr/10, gradient clipping, and an EMA of the weights.

    labels (N,) int64 with a conditional model: each label is replaced by the null label ∅ with
    probability p_uncond (condition dropout, so one model also learns ε(x, ∅) for guidance).
    context with a text-conditional model (config.context_dim): a function (step, indices (B,)) ->
    (token states (B, L, D), mask (B, L) bool) of captions for those images, e.g.
    `text_to_image.caption_context`; a dropped caption becomes padding only (its mask row all False).
    It must depend on (step, indices) alone for exact resume. rescale=False: `images` are used as
    given (e.g. latents scaled to unit variance) instead of [0, 1] mapped to [−1, 1].
    Each step's batch, labels, dropped labels, t and ε come from a generator seeded by (seed, step),
    so a run resumed from `checkpoint=` ends with the same weights (and EMA) as an uninterrupted one.
    `run`: fit's run options (checkpoint, ckpt_every (here 500 by default), log_every, desc (here
    "diffusion"), progress, on_log, e.g. a plots.LiveLossCurve), passed through.
    Returns (History with "loss" and "grad_norm", the EMA; sample from `ema.model`)."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"model: expected an nn.Module with parameters, got {type(model).__name__}")
    schedule, prediction = _check_schedule(schedule), _check_prediction(prediction)
    check_int("steps", steps), check_int("batch_size", batch_size)
    lr = check_number("lr", lr, inclusive=False)
    p_uncond = check_number("p_uncond", p_uncond, 0.0, 1.0)
    weight_decay = check_number("weight_decay", weight_decay)
    ema_decay = check_number("ema_decay", ema_decay, 0.0, 1.0)
    warmup = min(200, steps // 10) if warmup is None else check_int("warmup", warmup, low=0)
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"images: expected a non-empty floating-point batch (N, C, H, W) in [0, 1], got {shape_of(images)}"
        )
    lo, hi = float(images.min()), float(images.max())
    if rescale and (lo < -1e-3 or hi > 1 + 1e-3):
        raise ValueError(
            f"images: expected values in [0, 1] (they are scaled to [−1, 1] here), got [{lo:.3g}, {hi:.3g}]"
        )
    n_classes = getattr(model, "n_classes", None)
    if labels is not None:
        if not n_classes:
            raise ValueError("labels: the model is unconditional (n_classes=None); pass labels=None")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (len(images),):
            raise ValueError(f"labels: expected an int64 tensor of shape ({len(images)},), got {shape_of(labels)}")
        if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
            raise ValueError(
                f"labels: expected classes in [0, {n_classes - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        labels = labels.cpu()
    if context is not None:
        if labels is not None:
            raise ValueError("context: pass labels or captions (context), not both")
        if getattr(getattr(model, "config", None), "context_dim", None) is None:
            raise ValueError("context: the model does not read text (config.context_dim=None)")
        if not callable(context):
            raise ValueError(f"context: expected a function (step, indices) -> (states, mask), got {context!r:.60}")
    run.setdefault("ckpt_every", 500)
    run.setdefault("desc", "diffusion")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    data = images.detach().to("cpu", torch.float32)
    data = (data * 2 - 1 if rescale else data).contiguous()  # [0, 1] -> [−1, 1], (N, C, H, W)
    if cuda:
        data = data.pin_memory()
    order = epoch_indices(len(data), min(batch_size, len(data)), seed)
    T = schedule.T
    ema = EMA(model, ema_decay)
    optimizer, scheduler = adamw_warmup_cosine(model, lr, steps, warmup, weight_decay=weight_decay)

    def batches(step: int) -> dict:
        gen = step_generator(seed, 7919 * step + 1)  # chapter 05's draws since its first release
        idx = order(step)  # (B,)
        x0 = data[idx]
        batch = {
            "x0": x0,
            "t": torch.randint(0, T, (len(idx),), generator=gen),
            "eps": torch.randn(x0.shape, generator=gen),
        }
        if labels is not None:  # condition dropout: ∅ with probability p_uncond
            drop = torch.rand(len(idx), generator=gen) < p_uncond
            batch["labels"] = torch.where(drop, torch.full_like(idx, n_classes), labels[idx])
        elif context is not None:  # caption dropout: padding only with probability p_uncond
            drop = torch.rand(len(idx), generator=gen) < p_uncond
            states, real = context(step, idx)
            batch["labels"] = {"context": states, "mask": real & ~drop[:, None]}
        return batch

    def loss_fn(m: nn.Module, batch: dict) -> Tensor:
        x0, eps = batch["x0"].to(dtype), batch["eps"].to(dtype)
        if cuda:
            x0, eps = (
                x0.contiguous(memory_format=torch.channels_last),
                eps.contiguous(memory_format=torch.channels_last),
            )
        cond = batch.get("labels")
        if isinstance(cond, dict):
            cond = {"context": cond["context"].to(device, dtype), "mask": cond["mask"].to(device)}
        return _diffusion_loss(m, x0, batch["t"], eps, schedule, cond, prediction)  # eq. 14

    def on_step(step: int) -> None:  # the weights after `step` optimizer updates join the average
        ema.update(model)
        ema.step = step

    history = fit(
        model,
        optimizer,
        batches,
        loss_fn,
        steps,
        grad_clip=grad_clip if grad_clip is not None else math.inf,
        scheduler=scheduler,
        extra_state={"ema": ema},
        on_step=on_step,
        **run,
    )
    return history, ema
