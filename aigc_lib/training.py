"""One small training loop for every chapter: `fit(model, optimizer, batches, loss_fn, steps)`.

What it does for you:
    - bf16 autocast on CUDA (`runtime.autocast`), optional gradient clipping, optional LR scheduler;
    - no host-device sync per step: losses stay on the device and are copied to the host once every
      `log_every` steps, where the progress bar is updated and NaN/inf is caught
      (`NonFiniteLossError`, which never lets a bad checkpoint reach the disk);
    - `checkpoint=path`: saves every `ckpt_every` steps, at the end and on Ctrl-C / kernel interrupt
      (an interrupt that lands inside the optimizer update waits for the update to finish);
      re-running the same call resumes where it stopped and gives the same final weights as a run
      that was never interrupted (a finished run just loads its weights and returns its history).

Contract:
    batches   -- a callable `step -> batch` (best: resuming is exact and free), or an iterable
                 (list, DataLoader, ...) restarted at the end of each epoch. On resume fit draws and
                 throws away the batches already trained on in the current epoch (all of them for a
                 one-pass iterator), so an iterable that yields the same sequence on every run resumes
                 exactly; a `DataLoader(shuffle=True)` re-shuffles, so its resume is close, not exact.
    loss_fn   -- `loss_fn(model, batch)` returns a scalar loss tensor, or a dict of scalar tensors
                 with key "loss" (what is minimised) plus extra metrics to log, e.g. a VAE's
                 {"loss": elbo, "recon": recon, "kl": kl}. It runs under autocast; fit does the
                 zero_grad / backward / clip / step.

Two optimizers (GAN): `loss_fn` makes the discriminator step itself and returns the generator loss;
fit steps the generator's optimizer and checkpoints the other one through `extra_state`:

    gan = nn.ModuleDict({"G": G, "D": D})          # one module, so both are checkpointed
    def gan_loss(gan, real):
        fake = gan["G"](torch.randn(len(real), z_dim, device=real.device))
        d_loss = bce(gan["D"](real), ones) + bce(gan["D"](fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True); d_loss.backward(); opt_d.step()
        g_loss = bce(gan["D"](fake), ones)         # fit backprops this and steps opt_g
        return {"loss": g_loss, "d_loss": d_loss.detach()}
    fit(gan, opt_g, batches, gan_loss, steps, extra_state={"opt_d": opt_d})

(grad_clip clips opt_g's parameters only; clip D inside gan_loss if it needs it. The D backward runs
under fit's bf16 autocast, which needs no GradScaler.)

Several processes (torchrun, `aigc_lib.distributed`): when a process group runs, fit wraps the loss in
DistributedDataParallel, gives rank r its slice of every batch (every tensor is split along its first
dimension, which must divide by the number of ranks), averages the logged metrics over the ranks, shows
progress, calls `on_log` and writes the checkpoint on rank 0 only (the others wait for the write), and
on resume sends rank 0's checkpoint to every rank. The checkpoint keeps every rank's random state (torch,
Python, NumPy), so a resumed run with the same number of ranks is exact. An interrupt saves nothing under several ranks (they
cannot meet to agree): the last periodic checkpoint stands. N ranks with the global batch reproduce one
process when the loss is a mean over the batch's examples; see `distributed` for what is not.

Carried state (LSTM, truncated BPTT): keep it in the closure, detach it every step and reset it at
steps the batch function names (e.g. each pass over the text). It is not in the checkpoint: a resumed
run starts it from zeros, which is exact at a reset step (make ckpt_every a multiple of the pass) and
otherwise gives one chunk a fresh state, harmless for training:

    carry = {"h": None}
    def lm_loss(model, batch):
        x, y, reset = batch                          # batches(step) -> (x, y, step % n_chunks == 0)
        logits, h = model(x, None if reset else carry["h"])
        carry["h"] = tuple(t.detach() for t in h)    # keep the values, cut the graph
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from aigc_lib import distributed, pretrained
from aigc_lib.runtime import autocast, checkpoint_path

CKPT_VERSION = 1
HINTS = (
    "Try: a lower learning rate, gradient clipping (grad_clip=1.0), "
    "or check the inputs and targets for nan/inf and a sensible scale."
)


def fused_optimizer_ok(device: torch.device) -> bool:
    """Whether torch's fused Adam/AdamW kernels run on `device` (CPU and CUDA): one kernel per update
    instead of a dozen element-wise passes per parameter; about 1.3x faster VAE training on 2 CPU cores."""
    return device.type in ("cpu", "cuda")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup (step+1)/warmup for the first `warmup_steps` steps, then a cosine
    from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class _WarmupCosine:
    """Picklable warmup_cosine for LambdaLR (its state_dict keeps a callable object's fields)."""

    total_steps: int
    warmup_steps: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_ratio)


def adamw_warmup_cosine(
    model: nn.Module,
    lr: float,
    steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.99),
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused where torch has the kernel) with weight decay on matrices only (not biases, norms,
    1-D tensors), and its warmup + cosine LambdaLR schedule, for language models."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused_optimizer_ok(device))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(steps, warmup_steps, min_lr_ratio))


def epoch_indices(n: int, batch_size: int, seed: int = 0) -> Callable[[int], torch.Tensor]:
    """step -> the indices (batch_size,) of that step's batch: each epoch is a fresh permutation of
    range(n) seeded by (seed, epoch), the last partial batch dropped. A function of the step alone,
    so a run resumed at any step draws the same batches; one permutation per epoch is cached."""
    _check_numbers(grad_clip=None, n=n, batch_size=batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most n={n}, got {batch_size}")
    per_epoch = n // batch_size
    cache: dict[int, torch.Tensor] = {}

    def indices(step: int) -> torch.Tensor:
        epoch, i = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return cache[epoch][i * batch_size : (i + 1) * batch_size]

    return indices


class RunOptions(TypedDict, total=False):
    """How a training run is run, not what it learns: every trainer takes these keyword arguments
    (`**run: Unpack[RunOptions]`) and passes them to `fit` unchanged."""

    checkpoint: str | os.PathLike | None
    ckpt_every: int
    log_every: int
    desc: str
    progress: bool
    on_log: Callable[[History], Any] | None


class NonFiniteLossError(FloatingPointError):
    """The loss (or a logged metric) became nan/inf; `.step` is where, `.history` what came before."""

    def __init__(self, message: str, step: int, history: History):
        super().__init__(message)
        self.step = step
        self.history = history


# how fit got a run's weights (History.source): for one run, and for several
_SOURCES = {
    "trained": "trained",
    "resumed": "trained (resumed from its checkpoint)",
    "checkpoint": "loaded its finished checkpoint",
    "pretrained": "loaded the pretrained weights",
}
_SOURCES_PLURAL = {
    "trained": "trained here",
    "resumed": "trained here (resumed from checkpoints)",
    "checkpoint": "loaded from finished checkpoints",
    "pretrained": "loaded from the pretrained weights",
}


def _phrase(table: Mapping[str, str], source: str) -> str:
    if source not in table:
        raise ValueError(f"History.source: expected one of {', '.join(table)}, got {source!r}")
    return table[source]


def describe_sources(histories: Iterable[History]) -> str:
    """How several runs were obtained, for a notebook's summary line: "both trained here", "all 9 loaded
    from the pretrained weights", or "2 trained here, 2 loaded from finished checkpoints"."""
    counts = Counter(h.source for h in histories)
    if not counts:
        raise ValueError("histories: expected at least one History")
    if len(counts) == 1:
        source, n = counts.popitem()
        return {1: "", 2: "both "}.get(n, f"all {n} ") + _phrase(_SOURCES_PLURAL, source)
    return ", ".join(f"{n} {_phrase(_SOURCES_PLURAL, source)}" for source, n in counts.items())


@dataclass
class History:
    """Per-step metrics on the host: `steps[i]` is the step at which `metrics[name][i]` was measured.
    `source`: how `fit` got the weights it returns with this History — "trained" (here, from step 0),
    "resumed" (trained here from an unfinished checkpoint), "checkpoint" (a finished one, loaded) or
    "pretrained" (the course's packaged weights, loaded)."""

    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    source: str = field(default="trained", compare=False)  # equal Histories: the same curves

    def how_obtained(self, seconds: float) -> str:
        """What a notebook prints after a run: "trained in 12 s", "loaded the pretrained weights in 1 s", ..."""
        return f"{_phrase(_SOURCES, self.source)} in {seconds:.0f} s"

    @property
    def losses(self) -> list[float]:
        return self.metrics.get("loss", [])

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, name: str) -> list[float]:
        return self.metrics[name]

    def append(self, step: int, values: Mapping[str, float]) -> None:
        self.steps.append(step)
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)

    def as_dict(self) -> dict[str, list]:
        """Plain lists only, so it goes into a checkpoint that `torch.load(weights_only=True)` reads."""
        return {"step": list(self.steps), **{k: list(v) for k, v in self.metrics.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, list]) -> History:
        d = dict(d)
        return cls(
            steps=[int(s) for s in d.pop("step")],
            metrics={k: [float(x) for x in v] for k, v in d.items()},
        )


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Any] | Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor | Mapping[str, torch.Tensor]],
    steps: int,
    *,
    grad_clip: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: str | os.PathLike | None = None,
    ckpt_every: int = 1000,
    log_every: int = 50,
    extra_state: Mapping[str, Any] | None = None,
    desc: str = "train",
    progress: bool = True,
    on_log: Callable[[History], Any] | None = None,
    on_step: Callable[[int], Any] | None = None,
) -> History:
    """Train `model` until `steps` optimizer steps are done in total; returns the per-step History.

    grad_clip   -- clip the global gradient norm of the optimizer's parameters to this value; the norm
                   before clipping is logged as "grad_norm" (math.inf: log it, clip nothing).
    scheduler   -- stepped once after every optimizer step (not ReduceLROnPlateau: that one needs the
                   loss on the host every step).
    checkpoint  -- path of a checkpoint file: resume from it if it exists, save to it as we go. With
                   AIGC_WEIGHTS=pretrained and packaged weights of that file name (aigc_lib.pretrained)
                   those are loaded instead and nothing trains.
    extra_state -- more objects with `state_dict()`/`load_state_dict()` to checkpoint (a second
                   optimizer, an EMA model, ...).
    on_log      -- called with the History after each flush (every `log_every` steps), e.g. a
                   `plots.LiveLossCurve` that redraws the loss while training runs.
    on_step     -- called with the number of steps done after every optimizer step, before the
                   checkpoint of that step is written: per-step work that is not the loss, such as
                   an EMA update (keep its state in `extra_state`) or a snapshot of samples.
    The run options (`RunOptions`: checkpoint, ckpt_every, log_every, desc, progress, on_log) are
    the same for every trainer of the course, which passes them through to this function.
    Batches are moved to the model's device (tensors inside tuples, lists and dicts too), so move
    the model with `model.to(device)` before creating the optimizer.
    """
    _check_objects(model, optimizer, batches, loss_fn, scheduler, extra_state, on_log, on_step)
    _check_numbers(steps=steps, ckpt_every=ckpt_every, log_every=log_every, grad_clip=grad_clip)
    device = next(model.parameters()).device
    path = checkpoint_path(checkpoint) if checkpoint is not None else None
    extra = dict(extra_state or {})
    ranks = distributed.context()
    if not ranks.is_main:  # rank 0 alone shows progress
        progress, on_log = False, None

    shipped = pretrained.wanted(path) if path is not None else None  # AIGC_WEIGHTS=pretrained
    if shipped is None and path is not None and pretrained.choice() == "pretrained":
        if pretrained.missing(path):
            raise ValueError(
                f"pretrained: {path.name} is listed in {pretrained.MANIFEST} but missing; {pretrained.FIX}"
            )
        if ranks.is_main:
            print(f"{desc}: the course has no pretrained weights named {path.name} (another budget or run): "
                  "this run trains (or resumes its own checkpoint)")  # fmt: skip
    if shipped is not None:
        loaded = _load_pretrained(shipped, model, optimizer, scheduler, steps, extra, desc, ranks)
        if loaded is not None:
            if on_log is not None:
                on_log(loaded)
            return loaded

    step, history = 0, History()
    state = _read_checkpoint(path, ranks) if path is not None else None
    if state is not None:
        step, history = _restore(path, state, model, optimizer, scheduler, extra, ranks)
        history.source = "checkpoint" if step >= steps else "resumed"
        if step >= steps:  # finished before: weights and RNG are now as they were at the end
            if on_log is not None:
                on_log(history)
            if progress:
                print(f"{desc}: loaded the finished run from {path} (step {step}); delete it to retrain")
            return history
    elif ranks.distributed:
        distributed.fork_rng_per_rank(ranks.rank)
    draw = _batch_fn(batches, start=step)
    forward = _distributed_loss(model, loss_fn, ranks) if ranks.distributed else None

    params = [p for group in optimizer.param_groups for p in group["params"]]
    log = _Log(log_every, device, history)
    was_training = model.training
    model.train()
    bar = tqdm(total=steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    rng = _torch_rng_state()  # torch RNG at the start of `step`: an interrupt rewinds to it
    hold_ctrl_c = _HoldCtrlC()
    try:
        while step < steps:
            batch = _to_device(distributed.shard(draw(step), ranks.rank, ranks.world_size), device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                metrics = _as_metrics(loss_fn(model, batch) if forward is None else forward(batch))
            metrics["loss"].backward()
            if grad_clip is not None:
                metrics["grad_norm"] = nn.utils.clip_grad_norm_(params, grad_clip)
            # Ctrl-C waits for this block: a half-applied update could not be resumed exactly.
            with hold_ctrl_c:
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                log.record(step, metrics)
                step += 1
                if on_step is not None:
                    on_step(step)
                rng = _torch_rng_state()
            bar.update()
            if log.full or step == steps:
                # The only host sync: once per `log_every` steps. Held, so that Ctrl-C cannot
                # drop half a window from the history.
                with hold_ctrl_c:
                    bar.set_postfix(log.flush(path))
                if on_log is not None:
                    on_log(log.history)
            if path is not None and (step % ckpt_every == 0 or step == steps):
                log.flush(path)
                _save(path, step, model, optimizer, scheduler, extra, log.history, rng, ranks, target=steps)
    except KeyboardInterrupt:
        bar.close()
        if ranks.distributed:
            if ranks.is_main:
                print(f"interrupted at step {step}; under {ranks.world_size} ranks an interrupt saves nothing: "
                      "re-run to resume from the last periodic checkpoint")  # fmt: skip
        elif path is None:
            print(f"interrupted at step {step}; nothing saved (no checkpoint= given)")
        else:
            log.flush(path)
            _save(path, step, model, optimizer, scheduler, extra, log.history, rng, target=steps)
            print(f"interrupted at step {step}; checkpoint saved to {path}; re-run to resume")
        raise
    finally:
        hold_ctrl_c.uninstall()
        bar.close()
        model.train(was_training)
        del forward  # DDP's gradient hooks go with it
    return log.history


def _distributed_loss(model: nn.Module, loss_fn: Callable, ranks: distributed.Context) -> nn.Module:
    if ranks.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        distributed.warn_not_equivalent(
            "fit",
            "the model has BatchNorm, whose batch statistics are per rank (B/N examples each); "
            "nn.SyncBatchNorm.convert_sync_batchnorm(model) computes them over the global batch",
        )
    return distributed.ddp_loss(model, loss_fn)


# --- logging: per-step metrics stay on the device until a flush -----------------------------------


def _to_host(t: torch.Tensor) -> list:
    """Every device -> host copy of the loop goes through here (tests count the calls)."""
    return t.tolist()


class _Log:
    """Keeps up to `size` steps of metrics as device tensors; `flush` copies them to the host at once."""

    def __init__(self, size: int, device: torch.device, history: History):
        self.size, self.device, self.history = size, device, history
        self.names: list[str] | None = None
        self.rows: list[list[torch.Tensor]] = []  # detached scalars: no graph, no sync
        self.first_step = 0

    @property
    def full(self) -> bool:
        return len(self.rows) == self.size

    def record(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        if self.names is None:
            self.names = list(metrics)
        if list(metrics) != self.names:
            raise ValueError(
                f"loss_fn: must return the same metrics every step; first {self.names}, now {list(metrics)}"
            )
        if not self.rows:
            self.first_step = step
        self.rows.append([metrics[k].detach() for k in self.names])

    def flush(self, path: Path | None) -> dict[str, str]:
        """Move buffered metrics to the history; raise NonFiniteLossError on nan/inf. Returns a postfix."""
        if not self.rows:
            return {}
        # One device -> host copy for the whole window (after one all-reduce under several ranks).
        flat = torch.cat([v.reshape(1).to(self.device, torch.float32) for row in self.rows for v in row])
        distributed.average_(flat)
        values, k = _to_host(flat), len(self.names)
        rows = [dict(zip(self.names, values[i : i + k], strict=True)) for i in range(0, len(values), k)]
        start, self.rows = self.first_step, []
        for i, row in enumerate(rows):
            bad = [name for name, x in row.items() if not math.isfinite(x)]
            if bad:
                self._raise_non_finite(start + i, start + len(rows) - 1, row, bad, path)
            self.history.append(start + i, row)
        return {name: f"{sum(r[name] for r in rows) / len(rows):.4g}" for name in self.names}

    def _raise_non_finite(self, step: int, last: int, row: dict, bad: list[str], path: Path | None) -> None:
        losses = self.history.losses
        last_ok = (
            f"last finite loss {losses[-1]:.4g} at step {self.history.steps[-1]}"
            if losses
            else "no finite loss before it"
        )
        saved = f"; the checkpoint {str(path)!r} was not updated" if path is not None else ""
        what = ", ".join(f"{name}={row[name]}" for name in bad)
        raise NonFiniteLossError(
            f"non-finite {what} at step {step} (found while checking steps {self.first_step}-{last}); "
            f"{last_ok}{saved}. {HINTS}",
            step,
            self.history,
        )


# --- batches and metrics ---------------------------------------------------------------------------


def _batch_fn(batches: Callable[[int], Any] | Iterable, start: int) -> Callable[[int], Any]:
    """Either way a function step -> batch; an iterable resumes `start` batches in."""
    if callable(batches):
        return batches
    it = _cycle(batches, skip=start)

    def draw(step: int) -> Any:
        return next(it)

    return draw


def _cycle(iterable: Iterable, skip: int) -> Iterator:
    """Yield batches forever, restarting `iterable` each epoch; skip the `skip` already trained on."""
    one_pass = isinstance(iterable, Iterator)  # a generator cannot be restarted
    if not one_pass and hasattr(iterable, "__len__") and len(iterable) > 0:
        skip %= len(iterable)  # every epoch yields the same sequence: only the current one matters
    drawn = 0
    while True:
        n = 0
        for batch in iterable:
            n += 1
            if drawn < skip:
                drawn += 1
                continue
            yield batch
        if n == 0:
            raise ValueError("batches: the iterable yielded no batches")
        if one_pass:
            raise ValueError(
                f"batches: the iterator ran out after {n} batches; pass a re-iterable "
                "(list, DataLoader) that is restarted every epoch, or a callable step -> batch"
            )


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        # non_blocking from host memory: the copy overlaps compute (and never syncs)
        return batch.to(device, non_blocking=batch.device.type == "cpu")
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(b, device) for b in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _as_metrics(out: Any) -> dict[str, torch.Tensor]:
    metrics = dict(out) if isinstance(out, Mapping) else {"loss": out}
    if "loss" not in metrics:
        raise ValueError(f"loss_fn: a returned dict must have the key 'loss'; got keys {list(metrics)}")
    if "step" in metrics:
        raise ValueError("loss_fn: 'step' is reserved for the step number; name the metric differently")
    for name, value in metrics.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"loss_fn: {name!r} must be a scalar tensor; got {got}")
    if not metrics["loss"].requires_grad:
        raise ValueError(
            "loss_fn: the loss does not require grad; was it computed under torch.no_grad(), "
            "or turned into a number with .item()?"
        )
    return metrics


class _HoldCtrlC:
    """While fit runs, SIGINT (Ctrl-C, Jupyter's stop button) acts at once, except inside
    `with hold:`, where it waits until the block has finished."""

    def __init__(self):
        self.holding = self.pending = False
        self.old = signal.getsignal(signal.SIGINT)
        # Only replace a Python handler (normally the one raising KeyboardInterrupt): an ignored
        # SIGINT stays ignored, and handlers can only be set from the main thread.
        self.installed = threading.current_thread() is threading.main_thread() and callable(self.old)
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.holding:
            self.pending = True
        else:
            self.old(signum, frame)  # normally signal.default_int_handler: raises KeyboardInterrupt

    def __enter__(self) -> None:
        self.holding = True

    def __exit__(self, exc_type, exc, tb) -> None:
        self.holding = False
        if self.pending and exc_type is None:
            self.pending = False
            raise KeyboardInterrupt

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.old)
            self.installed = False


# --- checkpoints -----------------------------------------------------------------------------------


def _torch_rng_state() -> dict[str, Any]:
    """Cheap (~1 us) so it can be taken every step; CUDA states only if CUDA is in use."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_state(torch_state: dict[str, Any]) -> dict[str, Any]:
    # numpy's state array becomes a tensor: torch.load(weights_only=True) refuses numpy arrays.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        **torch_state,
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper: save the plain model's keys


def _save(
    path: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    extra: dict,
    history: History,
    rng: dict,
    ranks: distributed.Context | None = None,
    target: int | None = None,
) -> None:
    """Write atomically (tmp file + os.replace): an interrupt mid-write leaves the old file intact.
    Under several ranks every rank checks the weights and sends its random state; rank 0 writes, and
    the others wait until it has (its outcome, an error too, reaches every rank)."""
    ranks = ranks or distributed.Context()
    _check_finite_weights(path, step, model, history)  # identical weights: every rank agrees
    # every rank's streams (torch, Python, NumPy), so a resume with as many ranks restores each rank's own
    rank_rngs = distributed.gather(_rng_state(rng)) if ranks.distributed else None
    error = None
    if ranks.is_main:
        try:
            _write(path, step, model, optimizer, scheduler, extra, history, rng, rank_rngs, target)
        except Exception as err:
            if not ranks.distributed:
                raise
            error = err
    if ranks.distributed:
        error = distributed.from_main(error)  # the barrier: no rank goes on before the file is written
    if error is not None:
        raise error


def _check_finite_weights(path: Path, step: int, model, history: History) -> None:
    # A checkpoint must never hold nan/inf weights: one sync per save to check them.
    tensors = [t for t in _unwrap(model).state_dict().values() if t.is_floating_point()]
    if tensors and not _to_host(torch.stack([t.isfinite().all() for t in tensors]).all()):
        raise NonFiniteLossError(
            f"the model's weights hold nan/inf after step {step} although the loss was finite; "
            f"the checkpoint {str(path)!r} was not updated. {HINTS}",
            step,
            history,
        )


def _write(path, step, model, optimizer, scheduler, extra, history, rng, rank_rngs, target=None) -> None:
    state = {
        "version": CKPT_VERSION,
        "step": step,
        "steps": target,  # the run's length: step < steps is an unfinished run (tools/export_pretrained.py)
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": {name: obj.state_dict() for name, obj in extra.items()},
        "history": history.as_dict(),
        "rng": _rng_state(rng),
    }
    if rank_rngs is not None:  # every rank's streams, so a resume with as many ranks is exact
        state["rank_rng"] = rank_rngs
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _hint(path: Path) -> str:
    return f"delete {str(path)!r} or pass another checkpoint= path to start from scratch"


def _read_checkpoint(path: Path, ranks: distributed.Context) -> dict | None:
    """The checkpoint at `path` (None if there is none). Under several ranks rank 0 reads it and sends
    it to all, so the other machines of a multi-node run need no copy of the file."""
    if not ranks.distributed:
        return _read(path) if path.exists() else None
    outcome: Any = None
    if ranks.is_main:
        try:
            outcome = _read(path) if path.exists() else None
        except ValueError as err:
            outcome = err
    outcome = distributed.from_main(outcome)
    if isinstance(outcome, ValueError):
        raise outcome
    return outcome


def _read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint: cannot read {str(path)!r} ({err}); {_hint(path)}") from err
    if not isinstance(state, dict) or state.get("version") != CKPT_VERSION:
        raise ValueError(f"checkpoint: {str(path)!r} is not a checkpoint written by fit(); {_hint(path)}")
    return state


def _restore(
    path: Path, state: dict, model, optimizer, scheduler, extra: dict, ranks: distributed.Context | None = None
) -> tuple[int, History]:
    hint = _hint(path)
    if (scheduler is None) != (state["scheduler"] is None) or set(extra) != set(state["extra"]):
        raise ValueError(
            f"checkpoint: {str(path)!r} was saved with scheduler={state['scheduler'] is not None} and "
            f"extra_state={sorted(state['extra'])}, but this call has scheduler={scheduler is not None} "
            f"and extra_state={sorted(extra)}; {hint}"
        )
    try:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        for name, obj in extra.items():
            obj.load_state_dict(state["extra"][name])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint: {str(path)!r} does not match this model/optimizer ({err}); {hint}") from err
    _set_rng_state(state["rng"])
    if ranks is not None and ranks.distributed:
        _set_rank_rng_state(state.get("rank_rng"), ranks)
    return state["step"], History.from_dict(state["history"])


def _load_pretrained(
    file: Path, model, optimizer, scheduler, steps: int, extra: dict, desc: str, ranks: distributed.Context
) -> History | None:
    """Load the packaged weights (aigc_lib.pretrained) into the model and its extra state, after checking
    that every part fits; None when they do not (then the run trains). Rank 0 says which, always: the
    notebook must show whether it trained."""
    state = pretrained.read(file)
    why = pretrained.unusable(state, steps, _unwrap(model).state_dict(), optimizer, scheduler, extra)
    if why is not None:
        if ranks.is_main:
            print(f"{desc}: the pretrained weights {file.name} are not used: {why}; this run trains "
                  "(or resumes its own checkpoint)")  # fmt: skip
        return None
    _unwrap(model).load_state_dict(state["model"])
    for name in state["extra"]:
        extra[name].load_state_dict(state["extra"][name])
    _set_rng_state(state["rng"])  # one process: the cells after training draw what they would have drawn
    if ranks.distributed:
        distributed.fork_rng_per_rank(ranks.rank)
    if ranks.is_main:
        print(f"{desc}: loaded the pretrained weights shipped with the course ({file.name}: {steps} steps at the "
              f"{pretrained.BUDGET} budget, stored in float16), not trained here; AIGC_WEIGHTS=train trains it")  # fmt: skip
    history = History.from_dict(state["history"])
    history.source = "pretrained"
    return history


def _set_rank_rng_state(rank_rngs: list | None, ranks: distributed.Context) -> None:
    """This rank's own streams (torch, Python, NumPy), saved by a run with as many ranks; else a fresh
    stream per rank."""
    if rank_rngs is None or len(rank_rngs) != ranks.world_size:
        distributed.fork_rng_per_rank(ranks.rank)
        return
    mine = rank_rngs[ranks.rank]
    if "python" in mine:
        _set_rng_state(mine)
        return
    # a checkpoint written before the ranks' Python and NumPy states were kept: torch's alone
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and torch.cuda.is_available() and len(mine["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(mine["cuda"])


# --- argument checks -------------------------------------------------------------------------------


def _check_objects(model, optimizer, batches, loss_fn, scheduler, extra_state, on_log, on_step=None) -> None:
    def kind(x: Any) -> str:
        return type(x).__name__

    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"model: expected an nn.Module with parameters, got {kind(model)}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer: expected a torch.optim.Optimizer, got {kind(optimizer)}")
    if not callable(batches) and not isinstance(batches, Iterable):
        raise ValueError(f"batches: expected a callable step -> batch or an iterable, got {kind(batches)}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn: expected a callable (model, batch) -> loss, got {kind(loss_fn)}")
    if on_log is not None and not callable(on_log):
        raise ValueError(f"on_log: expected a callable History -> None or None, got {kind(on_log)}")
    if on_step is not None and not callable(on_step):
        raise ValueError(f"on_step: expected a callable step -> None or None, got {kind(on_step)}")
    if scheduler is not None and not hasattr(scheduler, "state_dict"):
        raise ValueError(f"scheduler: expected a torch LR scheduler or None, got {kind(scheduler)}")
    for name, obj in (extra_state or {}).items():
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise ValueError(
                f"extra_state[{name!r}]: expected an object with state_dict() and load_state_dict(), got {kind(obj)}"
            )


def _check_numbers(*, grad_clip: Any, **counts: Any) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if grad_clip is not None and (
        isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not 0 < grad_clip <= math.inf
    ):
        raise ValueError(
            f"grad_clip: expected a positive number (math.inf: log the norm only) or None, got {grad_clip!r}"
        )
