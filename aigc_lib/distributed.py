"""Data parallelism with PyTorch's own engine: `torch.distributed`, `DistributedDataParallel` (DDP),
launched by `torchrun`. `training.fit` uses this module when a process group is running, so every
trainer of the course scales out without a second loop:

    torchrun --nproc_per_node=2 -m aigc_lib train 05.unet          # 2 processes (CPU: gloo, GPUs: NCCL)

What happens in a run of N processes (ranks), each with its own copy of the model:
    1. `setup()` reads the launcher's RANK / WORLD_SIZE / LOCAL_RANK (one process when they are
       absent), joins the group (NCCL on CUDA, gloo on CPU) and gives rank r the GPU cuda:LOCAL_RANK;
    2. fit wraps the loss in DDP; DDP broadcasts rank 0's weights once, so every rank starts equal
       (a static graph: parameters the loss never uses, as WaveNet's last residual convolution, are
       found in the first step, see `ddp_loss`);
    3. every step each rank draws the same global batch from the step-indexed batch function and keeps
       its own slice (`shard`): rank r takes rows [r·B/N, (r+1)·B/N) of every tensor;
    4. backward: as gradient buckets fill, DDP all-reduces them (sum / N) while backward still runs, so
       every rank holds the gradient of the global batch's mean loss, and the identical optimizer
       steps keep the weights identical;
    5. logged losses are averaged over the ranks; rank 0 alone shows the progress bar and writes the
       checkpoint, the others wait for it (a barrier), and on resume rank 0 reads the checkpoint and
       sends it to all.

Equivalence: a loss that is a plain mean over the batch's examples gives N ranks the gradient of one
process with the whole batch (mean of N equal-sized shard means = the mean), so the run reproduces the
single-process run to float rounding. Random draws made in the batch function for the global batch
(diffusion's t and ε, the latent autoencoder's ε, binarisation, crops) are sliced with it and stay
exact; draw them from a generator of the step's own, never by reseeding the global one (that would
give every rank the same numbers). Draws from torch's global generator inside the loss (a VAE's ε,
dropout) are made per rank from a rank-specific stream (`fork_rng_per_rank`): the same distribution,
not the same numbers. Losses that couple the examples of a
batch are not equivalent and their trainers say so (`warn_not_equivalent`) or refuse (`require_one_process`).
"""

from __future__ import annotations

import io
import os
import random
import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for every process it starts


class NotEquivalentWarning(UserWarning):
    """A trainer's loss couples the examples of a batch: N ranks do not reproduce one process."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank r of `world_size`, the `local_rank`-th on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" or "gloo"; None: one process, no group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, draws progress bars and writes checkpoints."""
        return self.rank == 0


def launch_context(environ: Mapping[str, str] | None = None) -> Context:
    """The launcher's RANK / WORLD_SIZE / LOCAL_RANK (torchrun sets all three), or one process if unset."""
    env = os.environ if environ is None else environ
    present = [name for name in LAUNCH_ENV if name in env]
    if not present:
        return Context()
    if len(present) != len(LAUNCH_ENV):
        missing = sorted(set(LAUNCH_ENV) - set(present))
        raise ValueError(
            f"environment: expected all of {', '.join(LAUNCH_ENV)} (as torchrun sets them), missing {missing}"
        )
    try:
        rank, world, local = (int(env[name]) for name in LAUNCH_ENV)
    except ValueError as err:
        raise ValueError(f"environment: expected integers in {', '.join(LAUNCH_ENV)}, got {err}") from err
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(
            f"environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got {rank}, {world}, {local}"
        )
    return Context(rank, world, local, None)


def backend_for(device: torch.device | str) -> str:
    """NCCL between GPUs (all-reduce over NVLink / InfiniBand), gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup(device: torch.device | str | None = None) -> tuple[Context, torch.device]:
    """Join the process group torchrun prepared (MASTER_ADDR / MASTER_PORT in the environment) and
    return (context, this rank's device). `device`: "cpu" or "cuda" (default: CUDA when torch sees a
    GPU); under torchrun rank r computes on cuda:LOCAL_RANK. Not launched: one process, no group."""
    launched = launch_context()
    wanted = torch.device(device) if device is not None else None
    if wanted is None:
        wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was requested but torch sees no CUDA GPU; use 'cpu' (gloo)")
        if launched.distributed and launched.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK: {launched.local_rank}, but this machine has {torch.cuda.device_count()} GPUs; "
                "give torchrun --nproc_per_node at most the number of GPUs"
            )
        wanted = torch.device("cuda", launched.local_rank if launched.distributed else (wanted.index or 0))
        torch.cuda.set_device(wanted)  # NCCL's collectives and all_gather_object use the current device
    if not launched.distributed:
        return launched, wanted
    backend = backend_for(wanted)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Context(launched.rank, launched.world_size, launched.local_rank, backend), wanted


def teardown() -> None:
    """Leave the process group (call once at the end of a launched script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def context() -> Context:
    """This process's place in the running group, or one process when no group runs."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Context(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def is_main() -> bool:
    return context().is_main


def world_size() -> int:
    return context().world_size


# --- the pieces fit uses ---------------------------------------------------------------------------


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s slice of a global batch: rows [rank·n/world, (rank+1)·n/world) of every tensor
    with a batch dimension (dim 0), inside tuples, lists, namedtuples and dicts; other values as they are."""
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            return batch
        n = len(batch)
        if n % world:
            raise ValueError(
                f"batch: a tensor of {n} rows (shape {tuple(batch.shape)}) cannot be split evenly among {world} "
                f"processes; make the batch size a multiple of {world}"
            )
        size = n // world
        return batch[rank * size : (rank + 1) * size]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(shard(b, rank, world) for b in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(b, rank, world) for b in batch)
    if isinstance(batch, Mapping):
        return {k: shard(v, rank, world) for k, v in batch.items()}
    if hasattr(batch, "__dataclass_fields__"):  # e.g. a padded speech batch
        fields = {name: shard(getattr(batch, name), rank, world) for name in batch.__dataclass_fields__}
        return type(batch)(**fields)
    return batch


class _Loss(nn.Module):
    """The loss as a module, so DDP's forward runs `loss_fn(model, batch)` on the plain model: loss
    functions that call other methods (CLIP's `_logits`) or index submodules work unchanged, and DDP
    still sees every parameter's gradient."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(self.model, batch)


def ddp_loss(model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any]) -> nn.Module:
    """`batch -> loss_fn(model, batch)` wrapped in DistributedDataParallel (rank 0's weights are
    broadcast to every rank here). Call it inside the running group.

    `static_graph=True`: DDP records which parameters the first backward reaches and, from then on,
    expects that same set every step. A loss that leaves parameters without a gradient then works
    (WaveNet's last residual convolution feeds nothing: only its skip output is used), where plain DDP
    stops at step 2 waiting for their gradients. The alternatives cost more: find_unused_parameters walks
    the autograd graph after every forward, and a dry run to find the unused parameters would cost a
    step and disturb what a loss keeps between steps (random streams, an LSTM's carried state). The
    course's losses use the same parameters every step; one whose used set changed from step to step
    would need find_unused_parameters instead. `no_sync()` gradient accumulation works as without it."""
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    _ignore_1x1_stride_warning()
    return nn.parallel.DistributedDataParallel(_Loss(model, loss_fn), device_ids=ids, static_graph=True)


# DDP warns when a gradient's strides differ from its bucket's. On the CPU, a 1×1 convolution whose input
# is laid out channels-last (the U-Net's attention output projection, fed a reshaped attention result)
# gets its weight gradient (C_out, C_in, 1, 1) with strides (C_in, 1, C_in, C_in) where the bucket has
# (C_in, 1, 1, 1): strides of dimensions of size 1 never address anything, so the two are the same memory
# layout and the copy into the bucket is a plain one. Only that case is silenced; any other mismatch warns.
_STRIDES_1X1 = r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, \d+, 1, 1\]"


def _ignore_1x1_stride_warning() -> None:
    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == _STRIDES_1X1 for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_STRIDES_1X1, category=UserWarning)


def average_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `tensor` over all ranks (one all-reduce)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (rank 0 pickles it once and broadcasts it)."""
    if world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fork_rng_per_rank(rank: int) -> None:
    """Give rank r > 0 a random stream of its own (torch on every device, python, numpy), derived
    from the stream all ranks share, so ranks do not draw the same dropout masks or noise. Rank 0
    keeps the shared stream: one process behaves exactly as without a group."""
    if rank == 0:
        return
    base = int(torch.randint(0, 2**62, (1,)))  # the same number on every rank: their streams are equal
    seed = (base + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def warn_not_equivalent(trainer: str, why: str) -> None:
    """Under N > 1 ranks, warn (rank 0, once per call) that `trainer`'s loss is not the mean of per-example
    terms, so the run is not the single-process run with the whole batch; say `why` and what it is instead."""
    ctx = context()
    if ctx.distributed and ctx.is_main:
        warnings.warn(f"{trainer} on {ctx.world_size} processes: {why}", NotEquivalentWarning, stacklevel=2)


def require_one_process(trainer: str, why: str) -> None:
    """Refuse to run `trainer` under N > 1 ranks, saying why."""
    ctx = context()
    if ctx.distributed:
        raise ValueError(f"{trainer}: runs in one process only, not under {ctx.world_size} ranks ({why})")


def free_port() -> int:
    """A TCP port nobody listens on now, for a local rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- several processes on this machine, without torchrun (tests, the notebook's demonstration) ----


def run_local(fn: Callable[..., Any], world_size: int, *args: Any, threads: int = 1, timeout: float = 300) -> list[Any]:
    """Run `fn(context, device, *args)` in `world_size` fresh CPU processes joined by gloo (what
    torchrun does on one machine, in miniature) and return their results in rank order. `fn` and
    `args` must be picklable and `fn` importable by a fresh process: a function of a module, not one
    defined in a notebook cell or at an interactive prompt (refused at once, with a ValueError).
    A rank that raises is reported with its traceback, one that dies without a word (killed, out of
    memory, a crash) with its exit code, as soon as it happens (RuntimeError); TimeoutError when the
    ranks are alive but none has reported for `timeout` seconds."""
    import multiprocessing as mp
    import pickle
    import queue as queues
    import time

    from aigc_lib.checks import check_int, check_number

    check_int("world_size", world_size), check_int("threads", threads)
    check_number("timeout", timeout, inclusive=False)
    if not callable(fn):
        raise ValueError(f"fn: expected a function (context, device, *args) -> result, got {type(fn).__name__}")
    _check_importable(fn)
    try:  # here, not in the children: what cannot be sent fails at once, with its reason
        payload = pickle.dumps((fn, args))
    except Exception as err:
        raise ValueError(f"run_local: fn and args must be picklable to reach the processes ({err})") from err
    spawn = mp.get_context("spawn")
    results: Any = spawn.Queue()
    port = free_port()
    procs = [
        spawn.Process(target=_local_rank, args=(rank, world_size, port, threads, payload, results), daemon=True)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    last_news = time.monotonic()
    try:
        while len(out) < world_size:
            try:  # short waits: between them, look for ranks that died without a result
                rank, error, value = results.get(timeout=0.5)
            except queues.Empty:
                dead = {r: p.exitcode for r, p in enumerate(procs) if r not in out and p.exitcode is not None}
                if dead:
                    try:  # its last message (a traceback, a result) may still be on its way
                        rank, error, value = results.get(timeout=2)
                    except queues.Empty:
                        raise RuntimeError(f"run_local: {_exits(dead)} of {world_size} ended without a result; "
                                           "its output, if any, went to this process's terminal") from None  # fmt: skip
                elif time.monotonic() - last_news > timeout:
                    missing = sorted(set(range(world_size)) - set(out))
                    raise TimeoutError(f"run_local: no result from ranks {missing} within {timeout} s") from None
                else:
                    continue
            if error is not None:
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{error}")
            out[rank] = torch.load(io.BytesIO(value), weights_only=False)  # our own child's bytes
            last_news = time.monotonic()
    finally:
        for p in procs:  # a failed rank leaves the others waiting in a collective: stop them
            p.join(timeout=10 if len(out) == world_size else 0)
            if p.is_alive():
                p.terminate()
                p.join()
    return [out[r] for r in range(world_size)]


def _check_importable(fn: Callable[..., Any]) -> None:
    """A fresh process finds `fn` by its module and name; one defined in an interactive `__main__` (a
    notebook, a prompt, `python -c`) has no file that process could import."""
    import sys

    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    if getattr(fn, "__module__", None) == "__main__" and getattr(sys.modules.get("__main__"), "__file__", None) is None:
        raise ValueError(
            f"run_local: fn {name!r} is defined in __main__ (a notebook cell or an interactive session), which the "
            "fresh processes cannot import; put it in a module (a .py file next to the notebook) and import it from there"
        )
    if "<locals>" in name or "<lambda>" in name:
        raise ValueError(f"run_local: fn {name!r} is a lambda or a function inside a function; the fresh processes "
                         "can only import a module's top-level functions")  # fmt: skip


def _exits(codes: Mapping[int, int]) -> str:
    """'rank 1 (exit code 3)', 'rank 0 (killed by signal 9)', ..."""
    return ", ".join(
        f"rank {r} ({f'killed by signal {-c}' if c < 0 else f'exit code {c}'})" for r, c in sorted(codes.items())
    )


def _local_rank(rank: int, world: int, port: int, threads: int, payload: bytes, results) -> None:
    import pickle
    import traceback

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(threads)
    try:
        fn, args = pickle.loads(payload)  # inside the try: a function this process cannot import is reported
        ctx, device = setup("cpu")
        # As bytes: a tensor put on a queue as itself is shared memory that dies with this process.
        value = io.BytesIO()
        torch.save(fn(ctx, device, *args), value)
        results.put((rank, None, value.getvalue()))
    except BaseException:  # noqa: BLE001 - the parent reports it with the traceback
        results.put((rank, traceback.format_exc(), None))
    finally:
        teardown()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if world_size() > 1:
        dist.barrier()


# --- a demonstration for the course: what DDP sends, and gradient accumulation with no_sync --------


def accumulation_demo(
    ranks: Context, device: torch.device, micro_batches: int = 4, bucket_cap_mb: float = 0.02
) -> dict:
    """`run_local` worker. A small MLP in DDP (buckets of `bucket_cap_mb`) takes one global batch three
    ways and counts the all-reduces (a communication hook): in one piece; in `micro_batches` pieces with
    `no_sync()` on all but the last (gradients add up locally, one all-reduce at the end); and in pieces
    without no_sync (an all-reduce per piece). Returns the counts and how far each way's averaged
    gradient is from the first's."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    sent = {"calls": 0, "numbers": 0}

    def counting_allreduce(state, bucket):  # no annotations: DDP checks them against its own types
        sent["calls"] += 1
        sent["numbers"] += bucket.buffer().numel()
        return default_hooks.allreduce_hook(None, bucket)  # the default: all-reduce, then divide by N

    ddp.register_comm_hook(None, counting_allreduce)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16 * ranks.world_size, 32, generator=g), torch.randn(16 * ranks.world_size, 1, generator=g)
    x, y = shard(x, ranks.rank, ranks.world_size).to(device), shard(y, ranks.rank, ranks.world_size).to(device)

    def gradient(pieces: int, skip_sync: bool) -> tuple[torch.Tensor, int, int]:
        model.zero_grad(set_to_none=True)
        sent.update(calls=0, numbers=0)
        for i, (xi, yi) in enumerate(zip(x.chunk(pieces), y.chunk(pieces), strict=True)):
            last = i == pieces - 1
            with ddp.no_sync() if skip_sync and not last else _nothing():
                loss = nn.functional.mse_loss(ddp(xi), yi) / pieces  # the mean over the whole shard
                loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), sent["calls"], sent["numbers"]

    gradient(1, False)  # DDP re-buckets the gradients after its first backward, in the order they came
    whole, calls, numbers = gradient(1, False)
    accumulated, calls_no_sync, _ = gradient(micro_batches, True)
    naive, calls_naive, _ = gradient(micro_batches, False)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "all-reduces, one batch": calls,
        "numbers sent per rank, one batch": numbers,
        f"all-reduces, {micro_batches} micro-batches with no_sync": calls_no_sync,
        f"all-reduces, {micro_batches} micro-batches without": calls_naive,
        "gradient difference, no_sync": float((accumulated - whole).abs().max()),
        "gradient difference, without": float((naive - whole).abs().max()),
    }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
