"""GANs on MNIST-5k: MLP GAN vs DCGAN vs conditional DCGAN at equal generator updates.

    python benchmarks/gan.py                       # full run (~10 min on 2 idle CPU cores)
    python benchmarks/gan.py --quick               # ~10 s smoke check (numbers NOT meaningful)
    python benchmarks/gan.py --steps 6000          # another number of generator updates
    python benchmarks/gan.py --models dcgan cdcgan # a subset (mlp, dcgan, cdcgan)
    python benchmarks/gan.py --width 64            # wider DCGANs (ngf = ndf = 64)
    python benchmarks/gan.py --skip-quality        # throughput only (parts 2 and 3)
    python benchmarks/gan.py --threads 1           # one torch thread (default: torch's; 1 with --quick)
    python benchmarks/gan.py --device cuda         # parts 1 and 2 on the GPU (default cpu)

Data: the 4,000 digits of aigc_lib.data.mnist5k("train"), scaled to [-1, 1] (G ends in tanh).

Models (all trained by the library loop `aigc_lib.gan.train_gan`: Adam lr 2e-4, betas (0.5, 0.999)
for both players, the non-saturating loss, batch 64, one D update per G update, for the same
--steps generator updates, default 3,000 = 48 passes over the 4,000 digits; torch.manual_seed(seed)
before each model is built):
  mlp     -- the sources' E1 configuration: MLPGenerator(z 100 -> 256 -> 512 -> 784, LeakyReLU 0.2,
             tanh) and MLPDiscriminator(784 -> 512 -> 256 -> 1);
  dcgan   -- DCGANConfig(z_dim=64, ngf=32, ndf=32): the DCGAN recipe of Radford et al. (ICLR 2016)
             for 28x28: strided transposed convolutions with BatchNorm and ReLU in G, strided
             convolutions with LeakyReLU(0.2) and BatchNorm in D, N(0, 0.02) init, Adam 2e-4,
             beta1 0.5 (the paper used batch 128; we use 64 for all three models);
  cdcgan  -- the same DCGAN, class-conditional (n_classes=10: a label embedding joins z in G, a
             projection term in D), trained on the digits' labels.

Parts 1 and 2 run on --device (default cpu: the issue asks for the share of the CPU's peak).

1. Quality. 1,000 samples from a fixed z (`gan.sample(G, 1000, seed=123)`, G in eval mode) go
   through `aigc_lib.metrics.evaluate_digits`: the Fréchet distance (FD) on the 128-d features of
   the course's digit classifier against mnist5k("test"), the real-vs-real floor at the same n
   (real train digits vs the same reference), recognisability (share classified with >= 0.9
   confidence) and the class shares (argmax; uniform = 10% each). The conditional G's samples
   cycle through the classes 0..9, so its coverage is uniform by construction unless a class is
   drawn badly.
   Target (the issue): at equal generator updates, DCGAN FD <= 0.5 x MLP GAN FD.
   Informational: for the DCGAN and the conditional DCGAN, recognisability >= 80% and every class
   between 7% and 13% of the samples.
   Training throughput: images/s = steps x batch / wall time of `train_gan(progress=False)` (our full
   loop: `fit`, diagnostics, gradient-norm logging); an "image" is one real image of the batch (each
   step also generates a batch of 64 fakes and scores 64 real + 2 x 64 fake images with D). Each
   model first trains for 2 throwaway steps, so one-off library start-up is not timed.

2. Throughput, interleaved. For each model, --tp-steps calls of `gan.gan_step` (one D update + one G
   update, the same recipe as train_gan without the loop) on a fixed batch and fixed z, timed in
   --repeats interleaved rounds (order reversed every other round), medians reported. Each round
   also times an fp32 matmul of two --matmul-n x --matmul-n matrices (default 2048; 2 n^3 FLOPs per
   call): the machine's matmul peak, taken in the same conditions as the models.
   FLOPs per training step are measured once per model, not estimated: FlopCounterMode (from
   torch.utils.flop_counter) around one `gan_step` call counts what PyTorch dispatches for matmuls and convolutions (2 FLOPs per
   multiply-add), forward AND backward of both players: G's forward, D on real and on detached fakes
   and its backward (weight gradients; no input gradient for real or detached inputs), D on the fakes
   again for G's loss and the backward through D and G (the library computes D's weight gradients
   there too and discards them at D's next zero_grad: counted, as they are work done). Element-wise
   work (activations, BatchNorm, losses, Adam) is not counted. Achieved GFLOP/s = FLOPs per step x
   steps/s; "% peak" = achieved / median matmul GFLOP/s.

3. GPU (only when torch.cuda.is_available()): images/s of the DCGAN's `gan_step` in fp32 (torch's
   defaults, printed: cuDNN may use TF32 for convolutions), under torch.autocast("cuda", bfloat16),
   and under autocast with channels_last models and inputs; torch.cuda.synchronize() around timings.

Timings on a shared machine are noisy: compare the ratios printed in one run, not absolute numbers
across runs. The script warns when the load average shows other work competing for the cores: then
multi-threaded steps can stall at every OpenMP barrier (seen while writing this script: --quick with
2 threads on 2 cores, one of them busy elsewhere, ran gan_step ~50x slower than with 1 thread, and
the matmul peak halved). Use --threads 1 there; --quick runs on one thread unless told otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from common import check_load, matmul_gflops, sync
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import gan, metrics
from aigc_lib.data import mnist5k
from aigc_lib.runtime import get_device
from aigc_lib.training import fused_optimizer_ok

MODELS = ("mlp", "dcgan", "cdcgan")
LABELS = {"mlp": "MLP GAN (E1)", "dcgan": "DCGAN", "cdcgan": "cond. DCGAN"}
FD_RATIO_TARGET = 0.5  # DCGAN FD <= 0.5 x MLP GAN FD at equal generator updates
RECOG_TARGET = 0.80  # informational: recognisability >= 80% ...
SHARE_RANGE = (0.07, 0.13)  # ... and every class 7%-13% of the samples
SAMPLE_SEED = 123
GPU = "cuda"  # part 3's device


# --------------------------------------------------------------------------------------- models


def build(name: str, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(G, D) of one model, seeded with args.seed, on `device`."""
    torch.manual_seed(args.seed)
    if name == "mlp":
        G = gan.MLPGenerator(z_dim=100, hidden=(256, 512), out_shape=(1, 28, 28))
        D = gan.MLPDiscriminator(in_shape=(1, 28, 28), hidden=(512, 256))
    else:
        n_classes = 10 if name == "cdcgan" else 0
        config = gan.DCGANConfig(z_dim=64, ngf=args.width, ndf=args.width, n_classes=n_classes)
        G, D = gan.DCGANGenerator(config), gan.DCGANDiscriminator(config)
    return G.to(device), D.to(device)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def adam(m: nn.Module) -> torch.optim.Adam:
    fused = fused_optimizer_ok(next(m.parameters()).device)
    return torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused)  # train_gan's optimizer


@dataclass
class StepBench:
    """One model's `gan_step` on a fixed batch: what parts 2 and 3 time."""

    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    real: Tensor  # (B, 1, 28, 28) in [-1, 1]
    z: Tensor  # (B, z_dim)
    labels: Tensor | None  # (B,) for the conditional model

    @classmethod
    def make(cls, G: nn.Module, D: nn.Module, real: Tensor, labels: Tensor | None) -> StepBench:
        z = torch.randn(len(real), G.z_dim, generator=torch.Generator().manual_seed(1))
        device = next(G.parameters()).device
        labels = labels.to(device) if labels is not None and G.n_classes else None
        return cls(G, D, adam(G), adam(D), real.to(device), z.to(device), labels)

    def step(self) -> None:
        gan.gan_step(self.G, self.D, self.opt_g, self.opt_d, self.real, self.z, self.labels)

    def run(self, n: int) -> float:
        """Seconds for n steps (device synchronised before and after)."""
        device = self.real.device
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(device)
        return time.perf_counter() - start

    def flops_per_step(self) -> int:
        """Matmul + convolution FLOPs of one gan_step (forward and backward), as PyTorch counts them."""
        with FlopCounterMode(display=False) as counter:
            self.step()
        return counter.get_total_flops()


# --------------------------------------------------------------------------------------- part 1


def tail_mean(values: list[float]) -> float:
    """Mean of the last ~10% of a logged training metric."""
    return statistics.fmean(values[-max(1, len(values) // 10) :])


def quality(args: argparse.Namespace, data: Tensor, labels: Tensor, device: torch.device) -> dict:
    """Train each model with train_gan for args.steps generator updates; evaluate its samples."""
    print(
        f"\n== 1. quality: {args.steps} generator updates of batch {args.batch} "
        f"({args.steps * args.batch / len(data):.1f} passes over {len(data):,} digits), "
        f"{args.n_eval} samples per model"
    )
    results = {}
    for name in args.models:  # warm-up: one-off library initialisation stays out of the timings
        gan.train_gan(
            *build(name, args, device),
            data,
            2,
            labels=labels if name == "cdcgan" else None,
            batch_size=args.batch,
            seed=args.seed,
            progress=False,
        )
    for name in args.models:
        G, D = build(name, args, device)
        start = time.perf_counter()
        run = gan.train_gan(
            G,
            D,
            data,
            args.steps,
            labels=labels if G.n_classes else None,
            batch_size=args.batch,
            seed=args.seed,
            progress=args.progress,
            desc=LABELS[name],
        )
        sync(device)
        wall = time.perf_counter() - start
        samples = gan.to_unit(gan.sample(G, args.n_eval, seed=SAMPLE_SEED))
        ev = metrics.evaluate_digits(samples, device=device)
        m = run.history.metrics
        results[name] = {
            "G": n_params(G),
            "D": n_params(D),
            "wall": wall,
            "img_s": args.steps * args.batch / wall,
            **ev,
        }
        print(
            f"   {LABELS[name]:<13} G {n_params(G):>9,} / D {n_params(D):>9,} params | "
            f"{wall:6.1f} s, {results[name]['img_s']:7,.0f} img/s | FD {ev['fd']:7.2f} "
            f"(floor {ev['fd_floor']:.2f}, {ev['fd_ratio']:.1f}x) | recognisable "
            f"{100 * ev['recognisability']:5.1f}% | classes {100 * ev['min_class_share']:.1f}%-"
            f"{100 * ev['max_class_share']:.1f}%"
        )
        print(
            f"   {'':<13} last 10% of training: G loss {tail_mean(m['loss']):.3f}, D loss "
            f"{tail_mean(m['d_loss']):.3f}, D(real) {tail_mean(m['d_real']):.3f}, D(fake) "
            f"{tail_mean(m['d_fake']):.3f}"
        )
    return results


# --------------------------------------------------------------------------------------- part 2


def throughput(args: argparse.Namespace, data: Tensor, labels: Tensor, device: torch.device) -> dict:
    """images/s, FLOPs per step and share of the matmul peak of gan_step, interleaved repeats."""
    real, ys = data[: args.batch], labels[: args.batch]
    benches = {name: StepBench.make(*build(name, args, device), real, ys) for name in args.models}
    n = args.tp_steps
    print(
        f"\n== 2. throughput of gan.gan_step on {device}: batch {args.batch}, {n} steps per timing, "
        f"{args.repeats} interleaved repeats, matmul {args.matmul_n}^2 x {args.matmul_reps}, "
        f"{torch.get_num_threads()} threads"
    )
    flops = {name: b.flops_per_step() for name, b in benches.items()}  # also the first warm-up step
    for b in benches.values():  # warm-up: oneDNN primitive creation, allocator
        b.run(2)
    times: dict[str, list[float]] = {name: [] for name in benches}
    peak = []
    for r in range(args.repeats):
        order = list(benches) if r % 2 == 0 else list(reversed(benches))
        for name in order:
            times[name].append(benches[name].run(n))
        peak.append(matmul_gflops(args.matmul_n, args.matmul_reps, device))
        print(
            f"   repeat {r + 1}: "
            + ", ".join(f"{name} {n * args.batch / t[-1]:,.0f} img/s" for name, t in times.items())
            + f", matmul {peak[-1]:.0f} GFLOP/s"
        )
    peak_med = statistics.median(peak)
    rows = {}
    for name, t in times.items():
        steps_s = n / statistics.median(t)
        gflops = flops[name] * steps_s / 1e9
        rows[name] = {"img_s": steps_s * args.batch, "flops": flops[name], "gflops": gflops, "share": gflops / peak_med}
    print(f"   {'model':<14}{'MFLOP/step':>11}{'img/s':>9}{'GFLOP/s':>9}{'% peak':>8}")
    for name, row in rows.items():
        print(
            f"   {LABELS[name]:<14}{row['flops'] / 1e6:>11.1f}{row['img_s']:>9,.0f}"
            f"{row['gflops']:>9.2f}{100 * row['share']:>7.2f}%"
        )
    return {"rows": rows, "peak": peak_med, "peak_all": peak}


# --------------------------------------------------------------------------------------- part 3


def timed(b: StepBench, bf16: bool, n: int) -> float:
    """Seconds for n gan_steps, under bf16 autocast when `bf16` (b.run synchronises around them)."""
    with torch.autocast(b.real.device.type, dtype=torch.bfloat16, enabled=bf16):
        return b.run(n)


def gpu_throughput(args: argparse.Namespace, data: Tensor) -> dict | None:
    """DCGAN gan_step images/s on CUDA: fp32 vs bf16 autocast vs bf16 autocast + channels_last."""
    if not torch.cuda.is_available():
        print("\n== 3. GPU: skipped (torch.cuda.is_available() is False)")
        return None
    device = torch.device(GPU)
    print(
        f"\n== 3. GPU ({torch.cuda.get_device_name(device)}): DCGAN (width {args.width}) gan_step, "
        f"{args.gpu_steps} steps per timing, {args.repeats} interleaved repeats; fp32 settings: "
        f"matmul allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
        f"cudnn allow_tf32={torch.backends.cudnn.allow_tf32}"
    )
    variants = {"fp32": (False, False), "bf16 autocast": (True, False), "bf16 + channels_last": (True, True)}
    results = {}
    for batch in args.gpu_batch:
        real = data[torch.arange(batch) % len(data)]  # (batch, 1, 28, 28)
        benches: dict[str, tuple[StepBench, bool]] = {}
        for name, (bf16, channels_last) in variants.items():
            G, D = build("dcgan", args, device)
            x = real.to(device)
            if channels_last:  # 4-D weights and the real images in NHWC, before Adam is built
                G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            benches[name] = (StepBench.make(G, D, x, None), bf16)
        for b, bf16 in benches.values():  # warm-up: cuDNN algorithm choice, allocator
            timed(b, bf16, 5)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name in variants if r % 2 == 0 else reversed(variants):
                times[name].append(timed(*benches[name], args.gpu_steps))
        img_s = {name: args.gpu_steps * batch / statistics.median(t) for name, t in times.items()}
        results[batch] = img_s
        print(
            f"   batch {batch:>5}: "
            + ", ".join(f"{name} {v:,.0f} img/s ({v / img_s['fp32']:.2f}x)" for name, v in img_s.items())
        )
    return results


# --------------------------------------------------------------------------------------- main


def fmt_params(k: int) -> str:
    return f"{k / 1e6:.2f}M" if k >= 1e5 else f"{k / 1e3:.0f}k"


def summary(args: argparse.Namespace, device: torch.device, q: dict | None, tp: dict | None, gpu: dict | None) -> None:
    print("\n" + "=" * 100)
    print(
        f"SUMMARY  (MNIST-5k train, {args.steps} generator updates x batch {args.batch}, "
        f"DCGAN width {args.width}, seed {args.seed}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)"
    )
    if args.quick:
        print("  --quick: tiny settings, the numbers are NOT meaningful (a smoke check of the script)")
    names = list(q or (tp or {}).get("rows", {}))
    if q:
        first = next(iter(q.values()))
        print(f"  FD floor (real vs real, n={first['n']}): {first['fd_floor']:.2f}")
    if tp:
        print(
            f"  fp32 matmul peak: {tp['peak']:.0f} GFLOP/s (median of {len(tp['peak_all'])}: "
            f"{', '.join(f'{p:.0f}' for p in tp['peak_all'])})"
        )
    if names:
        print(
            f"  {'model':<14}{'params G/D':>14}{'FD':>8}{'FD/floor':>9}{'recog.':>8}"
            f"{'class min/max':>16}{'train img/s':>12}{'step img/s':>11}{'GFLOP/s':>9}{'% peak':>8}"
        )
    for name in names:
        line = f"  {LABELS[name]:<14}"
        if q:
            r = q[name]
            line += (
                f"{fmt_params(r['G']) + ' / ' + fmt_params(r['D']):>14}{r['fd']:>8.2f}"
                f"{r['fd_ratio']:>9.1f}{100 * r['recognisability']:>7.1f}%"
                f"{100 * r['min_class_share']:>8.1f}-{100 * r['max_class_share']:>5.1f}%"
                f"{r['img_s']:>12,.0f}"
            )
        else:
            line += f"{'-':>14}{'-':>8}{'-':>9}{'-':>8}{'-':>16}{'-':>12}"
        if tp:
            t = tp["rows"][name]
            line += f"{t['img_s']:>11,.0f}{t['gflops']:>9.2f}{100 * t['share']:>7.2f}%"
        print(line)
    if q:
        if "mlp" in q and "dcgan" in q:
            ratio = q["dcgan"]["fd"] / q["mlp"]["fd"]
            met = "MET" if ratio <= FD_RATIO_TARGET else "NOT MET"
            print(
                f"  target: DCGAN FD <= {FD_RATIO_TARGET} x MLP GAN FD at equal updates: "
                f"{q['dcgan']['fd']:.2f} / {q['mlp']['fd']:.2f} = {ratio:.2f}x -> {met}"
            )
        else:
            print("  target DCGAN FD <= 0.5 x MLP GAN FD: not checked (needs --models mlp dcgan)")
        lo, hi = SHARE_RANGE
        for name in ("dcgan", "cdcgan"):
            if name in q:
                r = q[name]
                ok = r["recognisability"] >= RECOG_TARGET and r["min_class_share"] >= lo and r["max_class_share"] <= hi
                print(
                    f"  informational: {LABELS[name]} recognisable >= {100 * RECOG_TARGET:.0f}% and "
                    f"every class {100 * lo:.0f}%-{100 * hi:.0f}%: {'MET' if ok else 'NOT MET'}"
                )
    if gpu:
        for batch, img_s in gpu.items():
            print(
                f"  GPU DCGAN batch {batch}: "
                + ", ".join(f"{name} {v:,.0f} img/s ({v / img_s['fp32']:.2f}x)" for name, v in img_s.items())
            )
    print("=" * 100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny settings, well under a minute (numbers not meaningful)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (0: torch's default; default 0, or 1 with --quick)"
    )
    p.add_argument(
        "--device", default="cpu", help="device of parts 1 and 2 ('auto': $AIGC_DEVICE, else cuda -> mps -> cpu)"
    )
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-gpu", action="store_true")
    g = p.add_argument_group("training and evaluation")
    g.add_argument("--steps", type=int, default=3000, help="generator updates per model")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--width", type=int, default=32, help="ngf = ndf of the DCGANs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-eval", type=int, default=1000, help="samples per model for the metrics")
    g.add_argument("--progress", action="store_true", help="progress bars while training")
    t = p.add_argument_group("throughput")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--tp-steps", type=int, default=20, help="gan_step calls per timing")
    t.add_argument("--matmul-n", type=int, default=2048)
    t.add_argument("--matmul-reps", type=int, default=10)
    t.add_argument("--gpu-steps", type=int, default=100, help="gan_step calls per GPU timing")
    t.add_argument("--gpu-batch", type=int, nargs="+", default=[64, 1024], help="batch sizes of the GPU comparison")
    args = p.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))  # each model once, in the order given
    if args.quick:
        args.steps, args.width, args.n_eval = min(args.steps, 60), min(args.width, 8), 200
        args.repeats, args.tp_steps = min(args.repeats, 2), min(args.tp_steps, 5)
        args.matmul_reps, args.gpu_steps = min(args.matmul_reps, 3), min(args.gpu_steps, 10)
    if args.threads is None:  # one thread keeps the smoke check fast when another process holds a core
        args.threads = 1 if args.quick else 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(None if args.device == "auto" else args.device)
    check_load()
    train = mnist5k("train")
    data, labels = train.images * 2 - 1, train.labels  # (4000, 1, 28, 28) in [-1, 1], (4000,)
    print(
        f"data: mnist5k('train') {tuple(data.shape)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + ("; --quick: numbers NOT meaningful" if args.quick else "")
    )
    q = None if args.skip_quality else quality(args, data, labels, device)
    tp = None if args.skip_throughput else throughput(args, data, labels, device)
    gpu = None if args.skip_gpu else gpu_throughput(args, data)
    summary(args, device, q, tp, gpu)


if __name__ == "__main__":
    main()
