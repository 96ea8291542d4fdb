"""Data-parallel scaling of two chapter recipes under torchrun: throughput at 1, 2, ... processes.

    python benchmarks/distributed.py                           # CPU, gloo: 1 and 2 processes, one thread each
    python benchmarks/distributed.py --quick                   # seconds: proves the code paths, numbers NOT meaningful
    python benchmarks/distributed.py --procs 1 2 4 8 --device cuda   # GPUs, NCCL: one process per GPU
    python benchmarks/distributed.py --scaling strong          # the recipe's global batch split (default: weak)

Models: chapter 04's char GPT (recipe "04.char_gpt", standard sizes: 3 layers of width 96, context 64,
batch 12) in tokens/s and chapter 05's U-Net (recipe "05.unet", standard sizes: width 12, batch 32) in
images/s, each trained by its recipe's own train function, i.e. the library loop `fit` wrapped in
DDP by `aigc_lib.distributed`, launched by a real `torchrun --standalone --nproc_per_node=N`.

Weak scaling (default): every process keeps the recipe's batch, so N processes train a global batch of
N·B per step; strong scaling: the recipe's global batch B is split into N shards of B/N.
Throughput = global examples (GPT: tokens) per second over --steps timed steps, after --warmup steps
run and thrown away in the same process (start-up, allocator, DDP buckets). Scaling efficiency =
throughput(N) / (N · throughput(1)). Each point is the median of --repeats launches.
On a 2-core CPU, 2 processes of 1 thread use both cores; compare with 1 process of 1 thread. Run it
alone: another job on the cores shows up as poor scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # recipe, unit of throughput, the size that is the batch
    "gpt": ("04.char_gpt", "tokens", "batch"),
    "unet": ("05.unet", "images", "batch_size"),
}


def worker(args: argparse.Namespace) -> None:
    """One rank under torchrun: train the recipe twice (warm-up, then timed) and let rank 0 report."""
    import torch

    from aigc_lib import distributed, recipes

    torch.set_num_threads(args.threads)
    ranks, device = distributed.setup(args.device)
    recipe_name, unit, batch_key = MODELS[args.worker]
    recipe = recipes.get(recipe_name)
    sizes = recipe.sizes_for("standard")
    if args.scaling == "weak":
        sizes[batch_key] *= ranks.world_size
    data = recipe.data(sizes)
    run = {"checkpoint": None, "progress": False, "log_every": 10}
    recipe.train({**sizes, "steps": args.warmup}, data, device, **run)
    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    recipe.train({**sizes, "steps": args.steps}, data, device, **run)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    seconds = time.perf_counter() - start
    if ranks.is_main:
        per_step = sizes[batch_key] * (sizes.get("block_size", 1) if unit == "tokens" else 1)
        result = {"seconds": seconds, "throughput": per_step * args.steps / seconds, "global_batch": sizes[batch_key]}
        Path(args.out).write_text(json.dumps(result))
    distributed.teardown()


def launch(model: str, procs: int, args: argparse.Namespace, out: Path) -> dict:
    """One torchrun launch of `procs` processes on this machine; its rank 0's result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT), "AIGC_BUDGET": "standard"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    command += [__file__, "--worker", model, "--out", str(out), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--scaling", args.scaling]
    command += ["--device", args.device]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"torchrun with {procs} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def strong_scaling_problems(models: list[str], procs: list[int]) -> list[str]:
    """Under strong scaling every process count must divide each recipe's global batch: one line per pair that does not."""
    from aigc_lib import recipes

    problems = []
    for model in models:
        recipe_name, _, batch_key = MODELS[model]
        batch = recipes.get(recipe_name).sizes_for("standard")[batch_key]
        bad = [n for n in procs if batch % n]
        if bad:
            fits = [n for n in range(1, batch + 1) if batch % n == 0]
            problems.append(
                f"{model} ({recipe_name}): a global batch of {batch} cannot be split among {', '.join(map(str, bad))} "
                f"processes (it divides by {', '.join(map(str, fits))})"
            )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2], help="process counts; the first is the base")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one GPU per process, NCCL")
    parser.add_argument("--scaling", choices=("weak", "strong"), default="weak")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="launches per point; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--quick", action="store_true", help="a few steps, one repeat: the code paths only")
    parser.add_argument("--worker", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.warmup, args.repeats = 4, 1, 1
    if any(n < 1 for n in args.procs):
        parser.error(f"--procs: expected positive process counts, got {args.procs}")
    if args.scaling == "strong" and (problems := strong_scaling_problems(args.models, args.procs)):
        parser.error("--scaling strong splits each recipe's batch among the processes:\n  " + "\n  ".join(problems)
                     + "\nchoose --procs that divide it, or --scaling weak (every process keeps the whole batch)")  # fmt: skip

    print(f"device {args.device} ({'NCCL' if args.device == 'cuda' else 'gloo'}), {args.scaling} scaling, "
          f"{args.threads} thread(s) per process, {args.steps} timed steps, median of {args.repeats}")  # fmt: skip
    print(f"{'model':<6}{'procs':>6}{'global batch':>14}{'throughput':>16}{'speed-up':>10}{'efficiency':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            unit, base = MODELS[model][1], None
            for procs in args.procs:
                runs = [
                    launch(model, procs, args, Path(tmp) / f"{model}_{procs}_{i}.json") for i in range(args.repeats)
                ]
                throughput = statistics.median(r["throughput"] for r in runs)
                base = base or (throughput / procs)  # the first count's throughput per process
                speedup = throughput / (base * args.procs[0])
                print(
                    f"{model:<6}{procs:>6}{runs[0]['global_batch']:>14}{throughput:>11,.0f} {unit[:6]:<4}/s"
                    f"{speedup:>9.2f}x{throughput / (procs * base):>11.0%}"
                )


if __name__ == "__main__":
    main()
