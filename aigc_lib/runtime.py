"""Runtime: device choice, seeding, compute budgets and the `setup()` every notebook calls first.

Budgets (`AIGC_BUDGET`):
    smoke    -- CI: proves the code paths in seconds, not the quality;
    standard -- default without a GPU: each chapter in <= 10 minutes on a 2-core CPU;
    full     -- default with CUDA: the quality the chapter's benchmark promises.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from aigc_lib import pretrained

BUDGETS = ("smoke", "standard", "full")
DEVICE_ENV = "AIGC_DEVICE"
BUDGET_ENV = "AIGC_BUDGET"
SEED_ENV = "AIGC_SEED"
DEFAULT_SEED = 0

T = TypeVar("T")


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def get_device(name: str | None = None) -> torch.device:
    """The device to compute on: `name`, else `$AIGC_DEVICE`, else cuda -> mps -> cpu."""
    name = name or os.environ.get(DEVICE_ENV) or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps' (from argument or ${DEVICE_ENV}), got {name!r}"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was requested but torch sees no CUDA GPU; unset ${DEVICE_ENV} or use 'cpu'")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device: {name!r} was requested but MPS is not available; unset ${DEVICE_ENV} or use 'cpu'")
    return device


NBGRADER_ENV = "NBGRADER_EXECUTION"  # set by nbgrader while it autogrades or validates a notebook


def current_budget() -> str:
    """The compute budget: `$AIGC_BUDGET` if set; else 'smoke' while nbgrader runs the notebook
    (grading needs the code paths, not the quality), 'standard' under AIGC_WEIGHTS=pretrained (the
    packaged weights' budget), 'full' with CUDA and 'standard' otherwise."""
    value = os.environ.get(BUDGET_ENV, "").strip().lower()
    if not value:
        if os.environ.get(NBGRADER_ENV):
            return "smoke"
        if pretrained.choice() == "pretrained":  # the packaged weights are the standard budget's
            return pretrained.BUDGET
        return "full" if torch.cuda.is_available() else "standard"
    if value not in BUDGETS:
        raise ValueError(f"${BUDGET_ENV}: expected one of {', '.join(BUDGETS)}, got {value!r}")
    return value


def checkpoint_path(path: str | os.PathLike) -> Path:
    """Where a checkpoint named by a notebook goes. While nbgrader runs a learner's notebook a
    relative path goes to a temporary folder of this process, so checkpoints never land in the
    learner's feedback folder."""
    path = Path(path)
    if path.is_absolute() or not os.environ.get(NBGRADER_ENV):
        return path
    global _NBGRADER_CKPT
    if _NBGRADER_CKPT is None:
        _NBGRADER_CKPT = Path(tempfile.mkdtemp(prefix="aigc-nbgrader-checkpoints-"))
        atexit.register(shutil.rmtree, _NBGRADER_CKPT, True)
    return _NBGRADER_CKPT / path


_NBGRADER_CKPT: Path | None = None


def budget(*, smoke: T, standard: T, full: T) -> T:
    """Pick a size by the current budget, e.g. `steps = budget(smoke=20, standard=3_000, full=20_000)`."""
    return {"smoke": smoke, "standard": standard, "full": full}[current_budget()]


def seed_everything(seed: int = DEFAULT_SEED, *, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels.

    Deterministic mode trades speed for bit-identical reruns on the same hardware.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting before deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return seed


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU bf16 is slower than fp32 on most laptops)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """`model.eval()` and no autograd inside the block; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def channels_last(model: torch.nn.Module):
    """On the CPU, lay the model's 4-D (convolution) weights out channels-last (NHWC) inside the block and
    put the original tensors back after: oneDNN then runs this course's U-Nets about 1.3-1.5x faster
    (part 3 of benchmarks/diffusion.py times `sample` both ways). Outputs are equal up to rounding (the
    order of the sums). A no-op on other devices (train_diffusion already lays CUDA models out NHWC) and
    when the weights already are NHWC. Buffers and other parameters are left as they are."""
    swapped = []  # (parameter, its original tensor)
    try:
        convs = [p for p in model.parameters() if p.dim() == 4]
        nhwc = any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
        if convs and convs[0].device.type == "cpu" and not nhwc:
            for p in convs:
                swapped.append((p, p.data))
                # .to, not .contiguous: a 1x1 kernel is "contiguous" in both layouts, and only .to gives it the
                # NHWC strides that keep its convolution on the NHWC path (7% of sampling time here)
                p.data = p.data.to(memory_format=torch.channels_last)
        yield model
    finally:
        for p, original in reversed(swapped):
            original.copy_(p.data)  # the same storage and strides as before (and any change made inside)
            p.data = original


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind a `torch.compile` wrapper (its state_dict keys have no `_orig_mod.`)."""
    return getattr(model, "_orig_mod", model)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training step's random draws, a function of (seed, step) alone, so a
    resumed run draws exactly what an uninterrupted one would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass(frozen=True)
class Runtime:
    """What `setup()` chose; notebooks keep it as `rt` and read `rt.device`, `rt.budget`."""

    device: torch.device
    budget: str
    seed: int

    def describe(self) -> str:
        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        return (
            f"device: {self.device}{gpu} | budget: {self.budget} | seed: {self.seed} | "
            f"python {platform.python_version()} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} | weights: {pretrained.choice()}"
        )


def setup(seed: int | None = None, *, deterministic: bool = False, quiet: bool = False) -> Runtime:
    """Call first in every notebook: picks device and budget, seeds everything, prints the choice."""
    if seed is None:
        seed = int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    rt = Runtime(device=get_device(), budget=current_budget(), seed=seed_everything(seed, deterministic=deterministic))
    if rt.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not quiet:
        print(rt.describe(), file=sys.stdout)
        if pretrained.choice() == "pretrained" and rt.budget != pretrained.BUDGET:
            print(f"note: the pretrained weights are the {pretrained.BUDGET} budget's; at budget {rt.budget} every "
                  f"model trains here (unset {BUDGET_ENV} to load them)")  # fmt: skip
    return rt
