"""Diffusion on MNIST-5k: quality vs training compute, quality vs sampling steps, throughput, GPU.

    python benchmarks/diffusion.py                  # full CPU run (parts 1-3; see the cost note below)
    python benchmarks/diffusion.py --quick          # ~1 min smoke check (numbers NOT meaningful)
    python benchmarks/diffusion.py --steps 6000     # another training budget (points: steps/4, /2, 1)
    python benchmarks/diffusion.py --points 500 3000  # the training budgets of part 1
    python benchmarks/diffusion.py --n 500          # samples per evaluation (default 200)
    python benchmarks/diffusion.py --points 3000 --prediction v --skip-throughput  # part 1 on the v target
    python benchmarks/diffusion.py --skip-quality   # throughput only (part 3, and part 4 with --gpu)
    cd solutions && python ../benchmarks/diffusion.py --chapter-model --skip-throughput  # part 2 on chapter 05's model
    python benchmarks/diffusion.py --gpu            # also part 4 on CUDA (skipped cleanly without it)
    python benchmarks/diffusion.py --device cuda    # parts 1-3 on the GPU (default cpu)
    python benchmarks/diffusion.py --threads 1      # one torch thread (default: torch's)

The model is chapter 05's recipe "05.unet" (aigc_lib/recipes/ch05.py) at its standard budget:
UNetConfig(base=12, mults=(1, 2, 2), groups=base // 4 = 3, n_classes=10, upsample="transpose"),
linear_schedule(1000) (Ho et al.: beta 1e-4 .. 0.02), trained by the recipe's train function (the
library loop `aigc_lib.diffusion.train_diffusion`) on the 4,000 digits of mnist5k("train") with
their labels: batch 32, AdamW lr 1.5e-3 (linear warm-up of min(200, steps // 10) steps, then a cosine
decay to lr / 10 over the run), condition dropout p_uncond 0.3, gradient clipping 1.0, EMA 0.999 (with
the library's warm-up); torch.manual_seed(seed) before each model is built. Samples come from the EMA
weights. --base changes the width (groups stay base // 4, as in the chapter's budgets).

1. Quality vs training compute. One SEPARATE run per training budget in --points (default steps/4,
   steps/2, steps = 750, 1,500, 3,000), each from the same initial weights. Not one run evaluated at
   checkpoints: train_diffusion's warm-up and cosine schedule span the `steps` it is given, so the
   weights after 750 of 3,000 steps (lr still near its peak, EMA mid-way) are not what a 750-step
   training produces; resuming a checkpoint with a larger `steps` would splice two different
   schedules. Separate runs answer "what does this much training compute buy?" at 1.75x the training
   time of a single run. Per run:
     - training TFLOP = FLOPs of one training step x steps. The step's FLOPs are measured once, not
       estimated: FlopCounterMode (torch.utils.flop_counter) around diffusion_loss(...).backward()
       on a batch of 32 with labels counts the matmuls, convolutions and attention PyTorch dispatches
       (2 FLOPs per multiply-add), forward and backward (weight and input gradients). The U-Net's
       strided q/k/v send F.scaled_dot_product_attention on the CPU down its math path, whose bmm
       calls are counted; should it run the CPU flash kernel (aten._scaled_dot_product_flash_attention
       _for_cpu, missing from torch's table), the script maps that op and its backward to torch's own
       SDPA formulas. Element-wise work (GroupNorm, SiLU, the loss, AdamW, the EMA) is not counted.
     - wall time of train_diffusion(progress=False) (the whole library loop, EMA included), after a
       2-step throwaway run so one-off start-up is not timed;
     - unconditional quality: --n samples with the null label (DDIM 50 with eta = 1, the chapter's
       sampler, seed 5) through
       `metrics.evaluate_digits`: the Fréchet distance (FD) on the course's digit classifier's
       features against mnist5k("test"), the real-vs-real floor at the same n, recognisability
       (share classified with >= 0.9 confidence) and the range of the class shares (argmax);
     - prompted quality: --n samples asking for the digits 0..9 in turn with classifier-free
       guidance w = 3 (DDIM 50, eta = 1, seed 4): prompt accuracy = share whose classifier argmax is the
       requested digit, and their recognisability.

2. Samplers, on the EMA model of the largest budget of part 1 (or, with --chapter-model, on chapter 05's
   own standard-budget model, loaded from ./checkpoints when there). DDIM and DDPM differ in three ways
   at once (deterministic vs stochastic, x0 unclipped vs clipped, few steps vs 1,000), so the grid
   changes one at a time: DDIM 10/20/50/100 with eta 0 (deterministic) and with eta 1 (eq. 16's noise:
   DDPM-like ancestral steps over the larger gaps, i.e. "DDPM with fewer steps"), DDIM 50 with
   x0-clipping, DDIM 50 with eta 0.5, DDPM 1000 with and without clipping. Each draws --n samples with
   the same labels (0..9 in turn, guidance 1) at every seed of --compare-seeds (2 and 3), scored by
   evaluate_digits (FD: mean over seeds), timed (median over seeds, after a warm-up sample). Targets
   (the course's quality goals): DDIM 50's FD <= 1.2x DDPM 1000's, and DDIM 50 at least 15x faster
   (checked for the eta = 1 sampler; the deterministic one's ratio is printed beside it).

3. Throughput, interleaved. Training: --tp-steps steps of train_diffusion (the library loop) on a
   fresh standard model; sampling: one `sample` call of --tp-batch (256) images with DDIM
   --tp-sample-steps (50) in one batch, and the same call with the weights left NCHW (`sample` lays
   them out channels-last on the CPU: runtime.channels_last). All timed in --repeats rounds (order reversed every other
   round), medians reported; each round also times an fp32 matmul of two --matmul-n^2 matrices (2 n^3
   FLOPs per call): the machine's peak in the same conditions. Achieved GFLOP/s = counted FLOPs (a
   training step as in part 1; one forward of the sampling batch x the DDIM steps) / median time;
   "% peak" = achieved / median matmul GFLOP/s.

4. --gpu (only when torch.cuda.is_available(); otherwise a message and nothing else):
   a. images/s of one training step (the recipe of train_diffusion written out: zero_grad,
      diffusion_loss, backward, clip_grad_norm_ 1.0, fused AdamW + its scheduler, EMA update) on a
      fixed batch, and of one sampling forward pass (no_grad), in fp32 (torch's defaults, printed:
      cuDNN may use TF32 for convolutions), under bf16 autocast, and under bf16 autocast with a
      channels_last model and inputs (what train_diffusion and sample do on CUDA), plus the library's
      train_diffusion itself (bf16 + channels_last, batches copied from pinned host memory each step,
      its per-call set-up of optimizer and EMA copy included);
      --gpu-batch sizes, --repeats interleaved rounds, medians, torch.cuda.synchronize() around timings;
   b. the full budget (chapter 05's "full": base 64, groups 16, 20,000 steps of batch 32) trained on
      CUDA with train_diffusion, --gpu-n (1,000) unconditional samples (DDIM 50) and --gpu-n samples
      with the labels 0..9 in turn (guidance 1, DDIM 50) through evaluate_digits. Target (the course's quality goal): FD
      within 2x the real-vs-real floor (checked for both sets).

Cost: part 1 trains steps/4 + steps/2 + steps = 1.75 x steps (5,250 steps = 168,000 images) and
samples 3 x (50 + 2 x 50) forward passes of --n images; part 2 runs 2 x (2 x 180 + 100 + 2,000) forward
passes of --n images (two seeds; the two DDPM runs are nearly all of it). Extrapolated from --quick's
rates on 2 CPU cores (about 360 training images/s; not a measured full run), part 1 takes roughly 10
minutes there and part 2 about as long; part 4b takes several minutes on a recent GPU.

Timings on a shared machine are noisy: compare the ratios printed in one run, not absolute numbers
across runs. The script warns when the load average shows other work competing for the cores
(multi-threaded steps can then stall at every OpenMP barrier; try --threads 1).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from common import check_load, matmul_gflops, sync
from torch import Tensor, nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import diffusion as dm
from aigc_lib import metrics, recipes
from aigc_lib.data import ImageData, mnist5k
from aigc_lib.recipes import ch05
from aigc_lib.runtime import autocast, get_device
from aigc_lib.training import adamw_warmup_cosine

# the chapter's recipe: U-Net config, training settings and sizes per budget, written once
UNET = recipes.get("05.unet")
STANDARD, FULL = UNET.sizes_for("standard"), UNET.sizes_for("full")
BATCH, T = STANDARD["batch_size"], ch05.T
LR, P_UNCOND, EMA_DECAY = ch05.TRAINING["lr"], ch05.TRAINING["p_uncond"], ch05.TRAINING["ema_decay"]
GUIDANCE = 3.0  # part 1's prompted samples
EVAL_STEPS, EVAL_ETA = 50, 1.0  # part 1's sampler: DDIM 50 with eta = 1, the chapter's
UNCOND_SEED, PROMPT_SEED, COMPARE_SEED, TP_SEED = 5, 4, 2, 7  # the chapter's seeds where it has them
# the course's quality targets for this chapter
FD_VS_DDPM_TARGET = 1.2  # DDIM 50 FD <= 1.2 x DDPM 1000 FD
SPEEDUP_TARGET = 15.0  # DDIM 50 >= 15 x faster than DDPM 1000
FLOOR_TARGET = 2.0  # full budget on the GPU: FD <= 2 x real-vs-real floor
GPU = "cuda"


# --------------------------------------------------------------------------------------- helpers


def build(base: int, seed: int, device: torch.device) -> dm.UNet:
    """Chapter 05's U-Net at width `base` (standard budget: 12; full: 64), initialised from `seed`."""
    return ch05.build_unet(base, device, seed)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    steps: int,
    seed: int,
    progress: bool = False,
    desc: str = "diffusion",
    batch: int = BATCH,
    prediction: str = "eps",
) -> tuple[dm.EMA, float]:
    """The chapter's recipe (its train function: train_diffusion, the library loop) on `model` for
    `steps` steps; returns (EMA, wall seconds)."""
    device = next(model.parameters()).device
    sync(device)
    start = time.perf_counter()
    sizes = {"base": model.config.base, "steps": steps, "batch_size": batch}
    _, _, ema = UNET.train(
        sizes,
        ImageData(images, labels),
        device,
        model=model,
        seed=seed,
        progress=progress,
        desc=desc,
        prediction=prediction,
    )
    sync(device)
    return ema, time.perf_counter() - start


def _sdpa_cpu_mapping() -> dict:
    """FLOP formulas for the CPU flash-attention ops, which torch's flop table does not list."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):

        def fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(q, k, v)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):

        def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul + convolution + attention FLOPs PyTorch dispatches while fn() runs."""
    with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping()) as counter:
        fn()
    return counter.get_total_flops()


def fixed_batch(images: Tensor, labels: Tensor, batch: int, device: torch.device) -> dict:
    """A training batch as train_diffusion draws it: x0 in [-1, 1], t, eps, labels with dropout."""
    g = torch.Generator().manual_seed(TP_SEED)
    idx = torch.arange(batch) % len(images)
    y = labels[idx].clone()
    y[torch.rand(batch, generator=g) < P_UNCOND] = 10  # the null label
    return {
        "x0": (images[idx] * 2 - 1).to(device),
        "t": torch.randint(0, T, (batch,), generator=g).to(device),
        "eps": torch.randn(batch, 1, 28, 28, generator=g).to(device),
        "labels": y.to(device),
    }


def train_step_flops(
    base: int, images: Tensor, labels: Tensor, schedule: dm.NoiseSchedule, device: torch.device, batch: int = BATCH
) -> int:
    """FLOPs of one training step's forward + backward (diffusion_loss(...).backward())."""
    model = build(base, 0, device)
    b = fixed_batch(images, labels, batch, device)

    def step() -> None:
        with autocast(device):
            loss = dm.diffusion_loss(model, b["x0"], schedule, labels=b["labels"], t=b["t"], eps=b["eps"])
        loss.backward()

    return count_flops(step)


def forward_flops(model: nn.Module, batch: int, device: torch.device) -> int:
    """FLOPs of one sampling forward pass (no guidance) of `batch` images."""
    x = torch.randn(batch, 1, 28, 28, device=device)
    t = torch.full((batch,), 500, dtype=torch.int64, device=device)
    y = (torch.arange(batch) % 10).to(device)
    with torch.no_grad(), autocast(device):
        return count_flops(lambda: model(x, t, y))


def cycled(n: int) -> Tensor:
    return torch.arange(n) % 10  # (n,) the digits 0..9 in turn


def classes(ev: dict) -> str:
    return f"{100 * ev['min_class_share']:.1f}-{100 * ev['max_class_share']:.1f}%"


# --------------------------------------------------------------------------------------- part 1


def evaluate(
    model: nn.Module, n: int, schedule: dm.NoiseSchedule, device: torch.device, prediction: str = "eps"
) -> dict:
    """Unconditional (null label) metrics and prompted (w = 3) prompt accuracy, DDIM 50 with eta = 1."""
    sampler = {"steps": EVAL_STEPS, "eta": EVAL_ETA, "prediction": prediction, "progress": False}
    uncond = dm.sample(model, n, schedule, generator=torch.Generator().manual_seed(UNCOND_SEED), **sampler)
    ev = metrics.evaluate_digits(dm.to_unit(uncond), device=device)
    asked = cycled(n)
    prompted = dm.to_unit(
        dm.sample(
            model,
            n,
            schedule,
            labels=asked,
            guidance=GUIDANCE,
            generator=torch.Generator().manual_seed(PROMPT_SEED),
            **sampler,
        )
    )
    probs = metrics.digit_probs(prompted, device=device).cpu()  # (n, 10)
    return {
        "uncond": ev,
        "prompt_acc": (probs.argmax(1) == asked).float().mean().item(),
        "prompt_recog": (probs.max(1).values >= metrics.CONFIDENT).float().mean().item(),
    }


def quality_vs_compute(
    args: argparse.Namespace, images: Tensor, labels: Tensor, schedule: dm.NoiseSchedule, device: torch.device
) -> dict:
    flops = train_step_flops(args.base, images, labels, schedule, device)
    print(
        f"\n== 1. quality vs training compute: one separate run per budget {args.points} (each with its own "
        f"warm-up + cosine schedule), batch {BATCH}, {n_params(build(args.base, args.seed, device)):,} "
        f"parameters, {flops / 1e9:.3f} GFLOP per training step (fwd + bwd); {args.n} samples per evaluation; "
        f"target {args.prediction}"
    )
    train(build(args.base, args.seed, device), images, labels, 2, args.seed)  # warm-up, not timed
    rows, final = {}, None
    for steps in args.points:
        model = build(args.base, args.seed, device)
        ema, wall = train(
            model, images, labels, steps, args.seed, args.progress, f"{steps} steps", prediction=args.prediction
        )
        r = evaluate(ema.model, args.n, schedule, device, args.prediction)
        r |= {"steps": steps, "tflop": flops * steps / 1e12, "wall": wall, "img_s": steps * BATCH / wall}
        rows[steps], final = r, ema.model
        u = r["uncond"]
        print(
            f"   {steps:>6} steps ({steps * BATCH / len(images):5.1f} passes) {r['tflop']:8.2f} TFLOP "
            f"{wall:7.1f} s | uncond.: FD {u['fd']:7.2f} ({u['fd_ratio']:5.2f}x floor {u['fd_floor']:.2f}), "
            f"recognisable {100 * u['recognisability']:5.1f}%, classes {classes(u)} | w={GUIDANCE:g}: "
            f"prompt acc. {100 * r['prompt_acc']:5.1f}%, recognisable {100 * r['prompt_recog']:5.1f}%",
            flush=True,
        )
    return {"rows": rows, "flops_step": flops, "model": final}


# --------------------------------------------------------------------------------------- part 2


def sampler_runs(ddim: list[int], fast: int) -> dict[str, dict]:
    """Part 2's grid: every difference between DDIM and DDPM changed alone (stochasticity eta, x0-clipping,
    step count), on the same model, x_T and labels."""
    runs = {f"DDIM {k}, eta 0": {"sampler": "ddim", "steps": k} for k in ddim}
    runs |= {f"DDIM {k}, eta 1": {"sampler": "ddim", "steps": k, "eta": 1.0} for k in ddim}
    runs[f"DDIM {fast}, eta 0, clip"] = {"sampler": "ddim", "steps": fast, "clip_x0": True}
    runs[f"DDIM {fast}, eta 0.5"] = {"sampler": "ddim", "steps": fast, "eta": 0.5}
    runs["DDPM 1000"] = {"sampler": "ddpm"}
    runs["DDPM 1000, no clip"] = {"sampler": "ddpm", "clip_x0": False}
    return runs


def quality_vs_steps(
    args: argparse.Namespace, model: nn.Module, schedule: dm.NoiseSchedule, device: torch.device, prediction: str
) -> dict:
    asked = cycled(args.n)
    runs = sampler_runs(args.ddim, args.fast)
    print(
        f"\n== 2. samplers on one model: {args.n} samples each, labels 0..9 in turn, guidance 1, "
        f"seeds {args.compare_seeds} (the same x_T and noise for every sampler at a seed)"
    )
    dm.sample(model, args.n, schedule, steps=2, labels=asked, progress=False, prediction=prediction)  # warm-up
    rows = {}
    for name, kw in runs.items():
        walls, evs = [], []
        for seed in args.compare_seeds:
            sync(device)
            start = time.perf_counter()
            x = dm.sample(
                model,
                args.n,
                schedule,
                labels=asked,
                generator=torch.Generator().manual_seed(seed),
                progress=False,
                prediction=prediction,
                **kw,
            )
            sync(device)
            walls.append(time.perf_counter() - start)
            evs.append(metrics.evaluate_digits(dm.to_unit(x), device=device))
        fds = [e["fd"] for e in evs]
        rows[name] = {
            "wall": statistics.median(walls),
            "fd": statistics.mean(fds),
            "fds": fds,
            "fd_floor": evs[0]["fd_floor"],
            "recognisability": statistics.mean(e["recognisability"] for e in evs),
            "precision": statistics.mean(e["precision"] for e in evs),
            "recall": statistics.mean(e["recall"] for e in evs),
        }
        r = rows[name]
        print(
            f"   {name:<22} {r['wall']:8.2f} s | FD {' / '.join(f'{f:6.1f}' for f in fds)} (mean {r['fd']:6.1f}, "
            f"floor {r['fd_floor']:.1f}) | recognisable {100 * r['recognisability']:5.1f}% | "
            f"P {r['precision']:.2f} R {r['recall']:.2f}",
            flush=True,
        )
    fast = f"DDIM {args.fast}, eta 1"
    ratio = rows[fast]["fd"] / rows["DDPM 1000"]["fd"]
    speed = rows["DDPM 1000"]["wall"] / rows[fast]["wall"]
    print(
        f"   {fast} vs DDPM 1000: FD ratio {ratio:.2f} (target <= {FD_VS_DDPM_TARGET}), speed-up {speed:.1f}x "
        f"(target >= {SPEEDUP_TARGET:g}x); deterministic DDIM {args.fast}: FD ratio "
        f"{rows[f'DDIM {args.fast}, eta 0']['fd'] / rows['DDPM 1000']['fd']:.2f}"
    )
    return {"rows": rows, "fast": fast, "fd_ratio": ratio, "speedup": speed}


# --------------------------------------------------------------------------------------- part 3


def throughput(
    args: argparse.Namespace,
    images: Tensor,
    labels: Tensor,
    schedule: dm.NoiseSchedule,
    device: torch.device,
    flops_step: int | None,
) -> dict:
    model = build(args.base, args.seed, device)
    if flops_step is None:
        flops_step = train_step_flops(args.base, images, labels, schedule, device)
    fwd = forward_flops(model, args.tp_batch, device)
    ys = cycled(args.tp_batch)
    print(
        f"\n== 3. throughput on {device}: training {args.tp_steps} steps of train_diffusion (batch {BATCH}), "
        f"sampling {args.tp_batch} images by DDIM {args.tp_sample_steps} in one batch; {args.repeats} interleaved "
        f"repeats, matmul {args.matmul_n}^2 x {args.matmul_reps}, {torch.get_num_threads()} threads"
    )

    def run_train() -> float:
        return train(model, images, labels, args.tp_steps, args.seed)[1]

    def run_sample(layout: Callable = dm.sampling.channels_last) -> float:
        sync(device)
        start = time.perf_counter()
        with mock.patch.object(dm.sampling, "channels_last", layout):
            dm.sample(
                model,
                args.tp_batch,
                schedule,
                steps=args.tp_sample_steps,
                labels=ys,
                progress=False,
                generator=torch.Generator().manual_seed(TP_SEED),
                batch_size=args.tp_batch,
            )
        sync(device)
        return time.perf_counter() - start

    def run_sample_nchw() -> float:  # sample's weights left as they are: what channels_last saves
        return run_sample(lambda model: contextlib.nullcontext(model))

    runs = {"train": run_train, "sample": run_sample, "sample NCHW": run_sample_nchw}
    train(model, images, labels, 2, args.seed)  # warm-up
    dm.sample(model, args.tp_batch, schedule, steps=2, labels=ys, progress=False, batch_size=args.tp_batch)
    times: dict[str, list[float]] = {k: [] for k in runs}
    peak = []
    for r in range(args.repeats):
        for name in runs if r % 2 == 0 else reversed(runs):
            times[name].append(runs[name]())
        peak.append(matmul_gflops(args.matmul_n, args.matmul_reps, device))
        print(
            f"   repeat {r + 1}: training {args.tp_steps * BATCH / times['train'][-1]:,.1f} img/s, sampling "
            f"{args.tp_batch / times['sample'][-1]:,.1f} img/s ({args.tp_batch / times['sample NCHW'][-1]:,.1f} "
            f"with NCHW weights), matmul {peak[-1]:.0f} GFLOP/s",
            flush=True,
        )
    peak_med = statistics.median(peak)
    t_train, t_sample = statistics.median(times["train"]), statistics.median(times["sample"])
    t_nchw = statistics.median(times["sample NCHW"])
    rows = {
        "train": {
            "img_s": args.tp_steps * BATCH / t_train,
            "gflops": flops_step * args.tp_steps / t_train / 1e9,
            "flop_img": flops_step / BATCH,
        },
        "sample": {
            "img_s": args.tp_batch / t_sample,
            "gflops": fwd * args.tp_sample_steps / t_sample / 1e9,
            "flop_img": fwd * args.tp_sample_steps / args.tp_batch,
        },
        "sample NCHW": {
            "img_s": args.tp_batch / t_nchw,
            "gflops": fwd * args.tp_sample_steps / t_nchw / 1e9,
            "flop_img": fwd * args.tp_sample_steps / args.tp_batch,
        },
    }
    for row in rows.values():
        row["share"] = row["gflops"] / peak_med
    print(f"   {'':<12}{'MFLOP/img':>11}{'img/s':>10}{'GFLOP/s':>9}{'% peak':>8}")
    for name, row in rows.items():
        print(
            f"   {name:<12}{row['flop_img'] / 1e6:>11.2f}{row['img_s']:>10,.1f}{row['gflops']:>9.2f}"
            f"{100 * row['share']:>7.2f}%"
        )
    return {"rows": rows, "peak": peak_med, "peak_all": peak}


# --------------------------------------------------------------------------------------- part 4


class GPUStep:
    """train_diffusion's step on a fixed batch, in one precision / memory format."""

    def __init__(self, args: argparse.Namespace, b: dict, schedule: dm.NoiseSchedule, bf16: bool, cl: bool):
        self.model = build(args.base, args.seed, torch.device(GPU))
        fmt = torch.channels_last if cl else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.b = {k: v.contiguous(memory_format=fmt) if v.ndim == 4 else v for k, v in b.items()}
        self.schedule, self.bf16 = schedule, bf16
        self.ema = dm.EMA(self.model, EMA_DECAY)
        self.opt, self.sched = adamw_warmup_cosine(self.model, LR, 10**6, 0)
        self.params = list(self.model.parameters())

    def ctx(self):
        return torch.autocast(GPU, dtype=torch.bfloat16, enabled=self.bf16)

    def train(self, n: int) -> None:
        b = self.b
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with self.ctx():
                loss = dm.diffusion_loss(self.model, b["x0"], self.schedule, labels=b["labels"], t=b["t"], eps=b["eps"])
            loss.backward()
            nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.sched.step()
            self.ema.update(self.model)

    @torch.no_grad()
    def forward(self, n: int) -> None:
        b = self.b
        for _ in range(n):
            with self.ctx():
                self.model(b["x0"], b["t"], b["labels"])


def gpu_part(args: argparse.Namespace, images: Tensor, labels: Tensor, schedule: dm.NoiseSchedule) -> dict | None:
    if not args.gpu:
        return None
    if not torch.cuda.is_available():
        print("\n== 4. GPU: skipped (torch.cuda.is_available() is False)")
        return None
    device = torch.device(GPU)
    print(
        f"\n== 4. GPU ({torch.cuda.get_device_name(device)}), base {args.base}: {args.gpu_steps} steps per timing, "
        f"{args.repeats} interleaved repeats; fp32 settings: matmul allow_tf32="
        f"{torch.backends.cuda.matmul.allow_tf32}, cudnn allow_tf32={torch.backends.cudnn.allow_tf32}"
    )
    variants = {"fp32": (False, False), "bf16 autocast": (True, False), "bf16 + channels_last": (True, True)}
    out: dict = {"speed": {}}
    for batch in args.gpu_batch:
        b = fixed_batch(images, labels, batch, device)
        steps = {name: GPUStep(args, b, schedule, *v) for name, v in variants.items()}
        lib_model = build(args.base, args.seed, device)
        k = min(len(images), max(batch, 64))  # a few batches of real digits: train_diffusion pins them per call
        sub_x, sub_y = images[:k], labels[:k]

        def lib(n: int, lib_model=lib_model, sub_x=sub_x, sub_y=sub_y, batch=batch) -> None:
            train(lib_model, sub_x, sub_y, n, 0, batch=batch)

        jobs: dict[str, Callable[[int], None]] = {f"train {k}": s.train for k, s in steps.items()}
        jobs["train: library train_diffusion"] = lib
        jobs |= {f"forward {k}": s.forward for k, s in steps.items()}
        for job in jobs.values():  # warm-up: cuDNN algorithm choice, allocator
            job(3)
        times: dict[str, list[float]] = {k: [] for k in jobs}
        for r in range(args.repeats):
            for name in jobs if r % 2 == 0 else reversed(jobs):
                sync(device)
                start = time.perf_counter()
                jobs[name](args.gpu_steps)
                sync(device)
                times[name].append(time.perf_counter() - start)
        img_s = {k: args.gpu_steps * batch / statistics.median(t) for k, t in times.items()}
        out["speed"][batch] = img_s
        for kind in ("train", "forward"):
            ref = img_s[f"{kind} fp32"]
            print(
                f"   batch {batch:>4} {kind:<8}: "
                + ", ".join(
                    f"{k.split(' ', 1)[1].lstrip(': ')} {v:,.0f} img/s ({v / ref:.2f}x)"
                    for k, v in img_s.items()
                    if k.startswith(kind)
                ),
                flush=True,
            )
    # b. the full budget
    model = build(args.gpu_base, args.seed, device)
    print(
        f"   full budget: base {args.gpu_base} ({n_params(model):,} parameters), {args.gpu_full_steps} steps of "
        f"batch {BATCH} on the GPU, {args.gpu_n} samples per set (DDIM {EVAL_STEPS})",
        flush=True,
    )
    ema, wall = train(model, images, labels, args.gpu_full_steps, args.seed, args.progress, "full budget")
    full = {"wall": wall, "steps": args.gpu_full_steps}
    for name, kw in (("unconditional", {}), ("labels 0..9, w=1", {"labels": cycled(args.gpu_n)})):
        x = dm.sample(
            ema.model,
            args.gpu_n,
            schedule,
            steps=EVAL_STEPS,
            eta=EVAL_ETA,
            progress=False,
            generator=torch.Generator().manual_seed(UNCOND_SEED),
            **kw,
        )
        full[name] = ev = metrics.evaluate_digits(dm.to_unit(x), device=device)
        print(
            f"   full budget ({wall:.0f} s training), {name:<16}: FD {ev['fd']:7.2f} = {ev['fd_ratio']:.2f}x floor "
            f"{ev['fd_floor']:.2f} (target <= {FLOOR_TARGET:g}x), recognisable {100 * ev['recognisability']:5.1f}%, "
            f"classes {classes(ev)}",
            flush=True,
        )
    out["full"] = full
    return out


# --------------------------------------------------------------------------------------- main


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def summary(
    args: argparse.Namespace, device: torch.device, q: dict | None, s: dict | None, tp: dict | None, gpu: dict | None
) -> None:
    print("\n" + "=" * 100)
    print(
        f"SUMMARY  (MNIST-5k train, chapter 05 U-Net base {args.base}, batch {BATCH}, lr {LR:g}, p_uncond {P_UNCOND}, "
        f"EMA {EMA_DECAY}, seed {args.seed}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    if args.quick:
        print("  --quick: tiny settings, the numbers are NOT meaningful (a smoke check of the script)")
    if q:
        first = next(iter(q["rows"].values()))["uncond"]
        print(
            f"  1. quality vs training compute ({args.n} samples, DDIM {EVAL_STEPS}; FD floor {first['fd_floor']:.2f}; "
            f"separate runs, each with its own warm-up + cosine schedule):"
        )
        print(
            f"     {'steps':>7}{'TFLOP':>9}{'wall s':>9}{'FD':>9}{'FD/floor':>9}{'recog.':>8}{'classes':>13}"
            f"{'prompt acc. w=' + format(GUIDANCE, 'g'):>19}"
        )
        for steps, r in q["rows"].items():
            u = r["uncond"]
            print(
                f"     {steps:>7}{r['tflop']:>9.2f}{r['wall']:>9.1f}{u['fd']:>9.2f}{u['fd_ratio']:>9.2f}"
                f"{100 * u['recognisability']:>7.1f}%{classes(u):>13}{100 * r['prompt_acc']:>18.1f}%"
            )
    if s:
        print(f"  2. samplers ({args.n} samples, labels 0..9, guidance 1; FD: mean over seeds {args.compare_seeds}):")
        print(f"     {'sampler':<22}{'wall s':>9}{'img/s':>9}{'FD':>9}{'FD/floor':>9}{'recog.':>8}{'P':>6}{'R':>6}")
        for name, r in s["rows"].items():
            print(
                f"     {name:<22}{r['wall']:>9.2f}{args.n / r['wall']:>9.1f}{r['fd']:>9.2f}"
                f"{r['fd'] / r['fd_floor']:>9.2f}{100 * r['recognisability']:>7.1f}%{r['precision']:>6.2f}"
                f"{r['recall']:>6.2f}"
            )
        print(
            f"     target: {s['fast']} FD <= {FD_VS_DDPM_TARGET} x DDPM 1000 FD: {s['fd_ratio']:.2f}x -> "
            f"{verdict(s['fd_ratio'] <= FD_VS_DDPM_TARGET)}"
        )
        print(
            f"     target: {s['fast']} >= {SPEEDUP_TARGET:g}x faster than DDPM 1000: {s['speedup']:.1f}x -> "
            f"{verdict(s['speedup'] >= SPEEDUP_TARGET)}"
        )
    if tp:
        print(
            f"  3. throughput (medians of {len(tp['peak_all'])}); fp32 matmul peak {tp['peak']:.0f} GFLOP/s "
            f"({', '.join(f'{p:.0f}' for p in tp['peak_all'])}):"
        )
        for name, label in (
            ("train", f"training (batch {BATCH})"),
            ("sample", f"sampling (DDIM {args.tp_sample_steps}, batch {args.tp_batch})"),
            ("sample NCHW", "  same, weights not made NHWC"),
        ):
            r = tp["rows"][name]
            print(
                f"     {label:<34}{r['img_s']:>10,.1f} img/s {r['flop_img'] / 1e6:>9.2f} MFLOP/img "
                f"{r['gflops']:>8.2f} GFLOP/s = {100 * r['share']:5.2f}% of peak"
            )
    if gpu:
        for batch, img_s in gpu["speed"].items():
            for kind in ("train", "forward"):
                ref = img_s[f"{kind} fp32"]
                print(
                    f"  4. GPU batch {batch} {kind}: "
                    + ", ".join(
                        f"{k.split(' ', 1)[1].lstrip(': ')} {v:,.0f} img/s ({v / ref:.2f}x)"
                        for k, v in img_s.items()
                        if k.startswith(kind)
                    )
                )
        full = gpu["full"]
        for name in ("unconditional", "labels 0..9, w=1"):
            ev = full[name]
            print(
                f"  4. GPU full budget ({full['steps']} steps, base {args.gpu_base}, {full['wall']:.0f} s), {name}: "
                f"FD {ev['fd']:.2f} = {ev['fd_ratio']:.2f}x floor; target <= {FLOOR_TARGET:g}x -> "
                f"{verdict(ev['fd_ratio'] <= FLOOR_TARGET)}"
            )
    print("=" * 100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny settings, about a minute (numbers not meaningful)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--device", default="cpu", help="device of parts 1-3 ('auto': $AIGC_DEVICE, else cuda -> mps -> cpu)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--skip-quality", action="store_true", help="skip parts 1 and 2")
    p.add_argument("--skip-throughput", action="store_true", help="skip part 3")
    g = p.add_argument_group("quality (parts 1 and 2)")
    g.add_argument("--steps", type=int, default=STANDARD["steps"], help="the largest training budget")
    g.add_argument(
        "--points",
        type=int,
        nargs="+",
        default=None,
        help="training budgets of part 1, one run each (default: steps/4, steps/2, steps)",
    )
    g.add_argument("--base", type=int, default=STANDARD["base"], help="U-Net width (groups = base // 4)")
    g.add_argument(
        "--prediction", choices=dm.PREDICTIONS, default="eps", help="part 1's training target: eps (the chapter's) or v"
    )
    g.add_argument("--n", type=int, default=200, help="samples per evaluation")
    g.add_argument("--ddim", type=int, nargs="+", default=[10, 20, 50, 100], help="DDIM step counts of part 2")
    g.add_argument("--compare-seeds", type=int, nargs="+", default=[2, 3], help="sampling seeds of part 2")
    g.add_argument(
        "--chapter-model",
        action="store_true",
        help="part 2 only, on chapter 05's trained model at the standard budget (its checkpoint under "
        "./checkpoints when there, e.g. run from solutions/; trained otherwise)",
    )
    t = p.add_argument_group("throughput (part 3)")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--tp-steps", type=int, default=50, help="train_diffusion steps per timing")
    t.add_argument("--tp-batch", type=int, default=256, help="sampling batch")
    t.add_argument("--tp-sample-steps", type=int, default=50, help="DDIM steps per sampling timing")
    t.add_argument("--matmul-n", type=int, default=2048)
    t.add_argument("--matmul-reps", type=int, default=10)
    u = p.add_argument_group("GPU (part 4)")
    u.add_argument("--gpu", action="store_true", help="run part 4 (needs CUDA; skipped cleanly without it)")
    u.add_argument("--gpu-steps", type=int, default=50, help="steps per GPU timing")
    u.add_argument("--gpu-batch", type=int, nargs="+", default=[32, 256])
    u.add_argument("--gpu-base", type=int, default=FULL["base"], help="U-Net width of the full budget")
    u.add_argument("--gpu-full-steps", type=int, default=FULL["steps"], help="training steps of the full budget")
    u.add_argument("--gpu-n", type=int, default=1000, help="samples per set of the full budget")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.n, args.ddim = min(args.steps, 40), min(args.n, 20), [5, 10]
        args.repeats, args.tp_steps, args.tp_sample_steps = min(args.repeats, 2), min(args.tp_steps, 5), 3
        args.matmul_reps, args.gpu_steps = min(args.matmul_reps, 3), min(args.gpu_steps, 5)
        args.gpu_full_steps, args.gpu_n = min(args.gpu_full_steps, 50), min(args.gpu_n, 50)
    if args.points is None:
        args.points = sorted({max(1, args.steps // 4), max(1, args.steps // 2), args.steps})
    args.points = sorted(set(args.points))
    if args.base % 4 or args.base < 8 or args.gpu_base % 4 or args.gpu_base < 8:
        p.error("--base and --gpu-base: expected multiples of 4, at least 8 (groups = base // 4, >= 2 channels each)")
    args.ddim = sorted(set(args.ddim))
    args.fast = 50 if 50 in args.ddim else max([k for k in args.ddim if k <= 50] or args.ddim[:1])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(None if args.device == "auto" else args.device)
    check_load()
    data = mnist5k("train")
    images, labels = data.images, data.labels  # (4000, 1, 28, 28) in [0, 1], (4000,)
    schedule = dm.linear_schedule(T)
    print(
        f"data: mnist5k('train') {tuple(images.shape)}; {schedule}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + ("; --quick: numbers NOT meaningful" if args.quick else "")
    )
    q = s = None
    if args.chapter_model:
        _, _, ema = UNET.run(ImageData(images, labels), device=device, budget="standard", progress=args.progress)
        s = quality_vs_steps(args, ema.model, schedule, device, "eps")  # the chapter's model predicts eps
    elif not args.skip_quality:
        q = quality_vs_compute(args, images, labels, schedule, device)
        s = quality_vs_steps(args, q["model"], schedule, device, args.prediction)
    tp = (
        None
        if args.skip_throughput
        else throughput(args, images, labels, schedule, device, q["flops_step"] if q else None)
    )
    gpu = gpu_part(args, images, labels, schedule)
    summary(args, device, q, s, tp, gpu)


if __name__ == "__main__":
    main()
