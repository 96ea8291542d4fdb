"""Char GPT on tiny Shakespeare: quality at a fixed training compute, KV-cache generation, GPU run.

    python benchmarks/transformer.py                  # full CPU run (~9 min with one thread, see below)
    python benchmarks/transformer.py --quick          # ~30 s smoke check (numbers not meaningful)
    python benchmarks/transformer.py --threads 1      # pin torch to one thread (config search, busy CPU)
    python benchmarks/transformer.py --skip-kv        # part 1 only
    python benchmarks/transformer.py --only half --lr 6e-3 --block 128   # a pilot: one run, overrides
    python benchmarks/transformer.py --gpu            # part 3 too: nanoGPT's GPU config (needs CUDA)
    python benchmarks/transformer.py --gpu --skip-quality --skip-kv      # part 3 only

Data: tiny Shakespeare (`--text PATH`, default benchmarks/data/tinyshakespeare.txt; get it from
common.TEXT_URL, Karpathy's char-rnn repository), split as nanoGPT's shakespeare_char: the first 90% of
characters train, the last 10% validate, the character vocabulary from the whole text (65). Without
the file the script says so and stops (the anchors below are for that text only).

1. Quality at fixed training compute. Anchor: nanoGPT's small CPU config (4 layers x 4 heads x width
   128, block 64, batch 12, 2000 iters, lr 1e-3 with 100 warmup steps and cosine to 1e-4, weight decay
   0.1, no dropout; ~7.3 TFLOP) reaches val loss 1.88 (nanoGPT README). We re-run it with our `GPT`
   and `train_gpt` (same schedule and optimizer settings) side by side with our own configs, and ask:
       ours at <= half the compute (3.65 TFLOP)  -> val loss <= 1.88
       ours at <= equal compute    (7.3 TFLOP)   -> val loss <= 1.75
   Training FLOPs are COUNTED, not estimated: `torch.utils.flop_counter.FlopCounterMode` around one
   training step (forward, loss, backward) of the real batch shape, times the number of steps. On CPU
   FlopCounterMode has no formula for PyTorch's CPU flash-attention kernels
   (aten._scaled_dot_product_flash_attention_for_cpu and its backward) and silently counts them as 0;
   we register torch's own SDPA formulas for them, so the attention score and value matmuls are
   counted too (as the full T x T square, causal or not, as torch counts them on GPU). The matmul-only
   count of the reference is the quoted 7.32 TFLOP; with attention it is 8.03 TFLOP. Our budgets are
   checked against the count WITH attention (the stricter reading): a longer block is charged for it.
   steps = floor(budget / FLOPs per step). Val loss: `evaluate_loss` on the validation text in
   consecutive windows of the model's block (nanoGPT's estimate_loss uses random windows of the same
   length). The reference uses its fixed 2000 steps.

   Our config (OURS_HALF / OURS_EQUAL: the same model and schedule, the budget sets the steps): 3 layers
   x 4 heads x width 96 (348k params), block 64, batch 12, lr 4e-3 (4x nanoGPT's), 100 warmup steps,
   cosine to 0.1x, weight decay 0.1. Found with 1-thread pilots (torch.set_num_threads(1), seed 0, on a
   busy machine; val loss at the budget, FLOPs counted as above):
       3.65 TFLOP  4L x 128, block 128, batch 16, lr 4e-3:  313 steps, 0.64M tokens -> 2.275
                   4L x 128, block 256, batch  8, lr 4e-3:  269 steps, 0.55M tokens -> 2.460
                   4L x 128, block  64, batch  6, lr 3e-3: 1818 steps, 0.70M tokens -> 1.929
                   3L x  96, block  64, batch 12, lr 4e-3: 2078 steps, 1.60M tokens -> 1.778  (chosen)
       7.3 TFLOP   4L x  96, block 128, batch  8, lr 4e-3: 2109 steps, 2.16M tokens -> 1.750
                   3L x  96, block  64, batch 12, lr 4e-3: 4157 steps, 3.19M tokens -> 1.668  (chosen)
   At these budgets the number of optimizer steps comes first (a few hundred steps of big batches stay
   far from the target whatever the lr), then tokens: a smaller model that sees twice the reference's
   tokens in as many steps beats it at half the compute; a longer block does not pay for its
   attention FLOPs and the steps it costs. A 4x higher learning rate with warmup + cosine is safe at
   this size.

   Speed: each run's own wall time gives tokens/s and achieved GFLOP/s; a side-by-side throughput
   table times a few training steps of every config in interleaved repeats (medians), together with
   the CPU's fp32 matmul peak (median GFLOP/s of a large torch.matmul in the same rounds): "% peak" is
   achieved / measured peak.

2. KV-cache generation. `aigc_lib.rnn.generate` streams tokens through the GPT's KVCache protocol: the
   prompt is read once, then each new token attends to the cached keys/values. The baseline re-runs
   the model over the whole context for every new token (no cache), with the same sampling code. Same
   model (our equal-compute model's trained weights in a GPT with block 1024: position rows past the
   trained block keep their initialisation, so text past it is out of distribution; the point is
   speed and equality), same prompt (the start of the validation text), prompt + 500 new tokens <=
   block so the cache never slides. Both must give the same tokens under greedy decoding (top_k=1)
   and under seeded sampling (T=0.8, same generator seed). Timed in interleaved repeats, medians;
   target: cache >= 5x faster.

3. --gpu: nanoGPT's GPU config (6 layers x 6 heads x 384, block 256, batch 64, 5000 iters, lr 1e-3,
   warmup 100, cosine to 1e-4, dropout 0.2, weight decay 0.1; target val <= 1.47) trained through
   `train_gpt` (fit runs it under bf16 autocast on CUDA; F.scaled_dot_product_attention dispatches to
   the fused flash kernel), optionally torch.compile'd (--compile). Reports tokens/s and MFU: counted
   FLOPs/s over the GPU's dense bf16 peak (the datasheet value for known GPUs, and the measured bf16
   matmul peak). Skipped with a message when CUDA is not available.

Timings on a shared machine are noisy: compare the ratios printed in one run, not absolute numbers
across runs; the script prints the load average before and after. Threads: on the 2-core test machine
with other jobs keeping the load at 4-7, torch's default 2 threads were pathological (every op ends in
an OpenMP barrier and a thread that loses its core stalls the other): the throughput table gave 2,364
reference tokens/s with 2 threads against 9,934 with --threads 1 (load ~4), and a 2-thread full run
had not finished the reference's 2000 steps after 9.5 minutes (164 s with one thread). On a busy
machine use --threads 1; the script warns when the load average is high.

Result (full run, --threads 1, load average 5.1 before / 4.1 after on 2 cores; fp32 matmul peak
104 GFLOP/s):
    reference   8.03 TFLOP (7.32 without attention)  val 1.8798  164 s   9,382 tok/s  47% of peak
    ours, half  3.65 TFLOP                            val 1.7780   94 s  17,066 tok/s  38% of peak
    ours, equal 7.30 TFLOP                            val 1.6679  187 s  17,042 tok/s  37% of peak
    KV cache: 500 tokens after a 512-token prompt, block 1024: 1.09 s vs 12.41 s recomputing = 11.4x,
    identical tokens greedy and with seeded sampling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from common import DEFAULT_TEXT, TEXT_URL, Data, char_split, matmul_gflops
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib.generation import generate, sample_probs
from aigc_lib.transformer import GPT, GPTConfig, evaluate_loss, random_windows, train_gpt

REF_TFLOP, REF_VAL = 7.3, 1.88  # nanoGPT small CPU config: ~7.3 TFLOP of training -> val 1.88
HALF_TARGET, EQUAL_TARGET = 1.88, 1.75  # ours at <= REF_TFLOP / 2, and at <= REF_TFLOP
KV_TARGET = 5.0  # KV-cache generation speed-up over recomputing the context
GPU_TARGET = 1.47  # nanoGPT's GPU config val loss
# dense bf16 TFLOP/s from the datasheets (SXM parts); the first key found in the device name wins
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "4090": 165.0,
    "3090": 71.0,
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: model shape, batch, schedule, and either a step count or a FLOP budget."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block: int
    batch: int
    lr: float
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    dropout: float = 0.0
    steps: int | None = None  # fixed step count (the references) ...
    tflop: float | None = None  # ... or the largest step count within this budget (ours)
    target: float | None = None

    def describe(self) -> str:
        return (
            f"{self.n_layer} layers x {self.n_head} heads x width {self.n_embd}, block {self.block}, "
            f"batch {self.batch}, lr {self.lr:g} (warmup {self.warmup}, cosine to {self.min_lr_ratio:g}x), "
            f"wd {self.weight_decay:g}, dropout {self.dropout:g}"
        )


REFERENCE = RunSpec("ref", 4, 4, 128, 64, 12, lr=1e-3, steps=2000, target=REF_VAL)
OURS_HALF = RunSpec("half", 3, 4, 96, 64, 12, lr=4e-3, tflop=REF_TFLOP / 2, target=HALF_TARGET)
OURS_EQUAL = RunSpec("equal", 3, 4, 96, 64, 12, lr=4e-3, tflop=REF_TFLOP, target=EQUAL_TARGET)
GPU_REF = RunSpec("gpu", 6, 6, 384, 256, 64, lr=1e-3, dropout=0.2, steps=5000, target=GPU_TARGET)
LABELS = {
    "ref": "nanoGPT CPU config (reference)",
    "half": "ours, <= half compute",
    "equal": "ours, <= equal compute",
    "gpu": "nanoGPT GPU config",
}


# --------------------------------------------------------------------------------------- data


def load_data(path: Path) -> Data | None:
    """tinyshakespeare, tokenized (vocab from the whole text) and split 90/10; None if missing."""
    if not path.exists():
        return None
    return char_split(path.read_text(encoding="utf-8"), str(path))


# --------------------------------------------------------------------------------------- FLOPs


def _sdpa_fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _sdpa_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


def _attention_formulas() -> dict:
    """torch's SDPA formulas for the CPU flash-attention ops it has none for (counted as 0 otherwise)."""
    aten, out = torch.ops.aten, {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_fwd),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_bwd),
    ):
        if hasattr(aten, name) and getattr(aten, name) not in flop_counter.FlopCounterMode().flop_registry:
            out[getattr(aten, name)] = fn
    return out


def train_step_flops(model: GPT, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(total, attention) FLOPs of one training step -- forward, loss, backward -- on batch (x, y)."""
    counter = FlopCounterMode(display=False, custom_mapping=_attention_formulas())
    with counter, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits, _ = model(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
    model.zero_grad(set_to_none=True)
    attn = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" in str(op))
    return counter.get_total_flops(), attn


# --------------------------------------------------------------------------------------- part 1


def build(spec: RunSpec, vocab_size: int, seed: int, device: str = "cpu") -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size,
        block_size=spec.block,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_embd=spec.n_embd,
        dropout=spec.dropout,
    )
    return GPT(config).to(device)


def plan(spec: RunSpec, data: Data, seed: int, device: str = "cpu") -> dict:
    """Model, counted FLOPs per step and the number of steps of a run (no training yet)."""
    model = build(spec, data.tokenizer.vocab_size, seed, device)
    x, y = random_windows(data.train_ids.to(device), spec.batch, spec.block, seed)(0)
    per_step, attn = train_step_flops(model, x, y)
    steps = spec.steps if spec.steps is not None else int(spec.tflop * 1e12 // per_step)
    if steps < 1:
        raise SystemExit(f"{spec.name}: budget {spec.tflop} TFLOP is less than one step ({per_step / 1e9:.2f} GFLOP)")
    return {"model": model, "per_step": per_step, "attn_per_step": attn, "steps": steps}


def train_run(spec: RunSpec, data: Data, args: argparse.Namespace, device: str = "cpu") -> dict:
    """Train one config for its steps (or budget); return counted FLOPs, val loss, speed."""
    p = plan(spec, data, args.seed, device)
    model, steps = p["model"], p["steps"]
    tokens = steps * spec.batch * spec.block
    flops = steps * p["per_step"]
    print(f"\n== {LABELS.get(spec.name, spec.name)}: {spec.describe()}")
    print(
        f"   {model.num_params():,} params; {p['per_step'] / 1e9:.3f} GFLOP per training step "
        f"(fused attention {100 * p['attn_per_step'] / p['per_step']:.1f}%), {steps} steps = "
        f"{tokens / 1e6:.3f}M tokens ({tokens / len(data.train_ids):.2f} passes) = {flops / 1e12:.3f} TFLOP"
        + (f" (budget {spec.tflop:g})" if spec.tflop is not None else "")
    )
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    history = train_gpt(
        model,
        data.train_ids,
        steps,
        batch_size=spec.batch,
        block=spec.block,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup,
        min_lr_ratio=spec.min_lr_ratio,
        grad_clip=1.0,
        seed=args.seed,
        compile=args.compile and device == "cuda",
        progress=not args.no_progress,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    start = time.perf_counter()
    val = evaluate_loss(model, data.val_ids)
    eval_s = time.perf_counter() - start
    last = history.losses[-max(1, len(history.losses) // 20) :]
    r = {
        "spec": spec,
        "model": model,
        "params": model.num_params(),
        "steps": steps,
        "tokens": tokens,
        "tflop": flops / 1e12,
        "attn_tflop": steps * p["attn_per_step"] / 1e12,
        "val": val,
        "wall": wall,
        "tok_s": tokens / wall,
        "gflops": flops / wall / 1e9,
        "train_loss": statistics.fmean(last),
    }
    verdict = (
        "" if spec.target is None else f"  (target <= {spec.target}: {'MET' if val <= spec.target else 'NOT met'})"
    )
    print(
        f"   {wall:.1f} s, {r['tok_s']:,.0f} tokens/s, {r['gflops']:.1f} GFLOP/s; train loss (end) "
        f"{r['train_loss']:.4f}; val loss {val:.4f}{verdict} (eval {eval_s:.1f} s)"
    )
    return r


def throughput(specs: list[RunSpec], data: Data, args: argparse.Namespace) -> dict:
    """Training tokens/s of every config (a few steps through train_gpt), interleaved with the matmul
    peak; medians over the repeats."""
    models = {s.name: plan(s, data, args.seed) for s in specs}
    n = args.tp_steps

    def run(s: RunSpec, steps: int) -> None:
        train_gpt(
            models[s.name]["model"],
            data.train_ids,
            steps,
            batch_size=s.batch,
            block=s.block,
            lr=s.lr,
            weight_decay=s.weight_decay,
            warmup_steps=0,
            seed=args.seed + 1,
            log_every=steps,
            progress=False,
        )

    print(
        f"\n== throughput: {n} training steps per timing, {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} threads"
    )
    for s in specs:
        run(s, 2)  # warm-up
    times: dict[str, list[float]] = {s.name: [] for s in specs}
    peak = []
    for r in range(args.repeats):
        for s in specs if r % 2 == 0 else specs[::-1]:
            start = time.perf_counter()
            run(s, n)
            times[s.name].append(time.perf_counter() - start)
        peak.append(matmul_gflops(args.matmul_n, args.matmul_reps))
        print(
            f"   repeat {r + 1}: "
            + ", ".join(f"{s.name} {n * s.batch * s.block / times[s.name][-1]:,.0f} tok/s" for s in specs)
            + f", matmul {peak[-1]:.0f} GFLOP/s"
        )
    peak_med = statistics.median(peak)
    rows = {}
    for s in specs:
        t = statistics.median(times[s.name])
        gflops = n * models[s.name]["per_step"] / t / 1e9
        rows[s.name] = {"tok_s": n * s.batch * s.block / t, "gflops": gflops, "share": gflops / peak_med}
    return {"rows": rows, "peak": peak_med, "peak_all": peak}


# --------------------------------------------------------------------------------------- part 2


@torch.no_grad()
def generate_recompute(
    model: GPT,
    prompt: list[int],
    n: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The no-cache baseline: every new token re-runs the model over the whole context; sampling
    exactly as `rnn.generate` does it (sample_probs, then one multinomial draw)."""
    was_training = model.training
    model.eval()
    try:
        ctx = torch.tensor([prompt])
        out = []
        for _ in range(n):
            logits, _ = model(ctx[:, -model.config.block_size :])
            probs = sample_probs(logits[0, -1].float(), temperature, top_k)
            token = torch.multinomial(probs, 1, generator=generator)
            out.append(int(token))
            ctx = torch.cat([ctx, token.view(1, 1)], dim=1)
    finally:
        model.train(was_training)
    return out


def kv_model(trained: GPT | None, block: int, spec: RunSpec, vocab_size: int, seed: int) -> GPT:
    """A GPT with `block` positions: the trained model's weights (position rows past its block keep
    their initialisation), or a fresh one."""
    model = build(replace(spec, block=block, dropout=0.0), vocab_size, seed)
    if trained is not None:
        state = {k: v for k, v in trained.state_dict().items() if k != "pos.weight"}
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            rows = trained.config.block_size
            model.pos.weight[:rows] = trained.pos.weight
    return model.eval()


def kv_generation(args: argparse.Namespace, data: Data, trained: GPT | None, spec: RunSpec) -> dict:
    model = kv_model(trained, args.kv_block, spec, data.tokenizer.vocab_size, args.seed)
    prompt = data.val_ids[: args.kv_prompt].tolist()
    n = args.kv_new
    if len(prompt) + n > model.config.block_size:
        raise SystemExit(f"--kv-prompt {len(prompt)} + --kv-new {n} exceeds --kv-block {args.kv_block}")
    print(
        f"\n== KV-cache generation: {n} new tokens after a {len(prompt)}-token prompt, block "
        f"{model.config.block_size}, {spec.n_layer} layers x width {spec.n_embd} "
        f"({'trained weights of ' + LABELS[spec.name] if trained is not None else 'untrained weights'}), "
        f"{args.kv_repeats} interleaved repeats, {torch.get_num_threads()} threads"
    )

    def cached(temperature=1.0, top_k=None, seed=None):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        return list(generate(model, prompt, n, temperature=temperature, top_k=top_k, generator=gen))

    def recompute(temperature=1.0, top_k=None, seed=None):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        return generate_recompute(model, prompt, n, temperature=temperature, top_k=top_k, generator=gen)

    greedy = (cached(top_k=1), recompute(top_k=1))  # also the warm-up
    sampled = (cached(0.8, seed=args.seed), recompute(0.8, seed=args.seed))
    same = {"greedy": greedy[0] == greedy[1], "sampled": sampled[0] == sampled[1]}
    for kind, (a, b) in (("greedy", greedy), ("sampled", sampled)):
        first = next((i for i, (u, v) in enumerate(zip(a, b, strict=True)) if u != v), None)
        print(
            f"   {kind:8}: cache and recompute give {'the same' if same[kind] else 'DIFFERENT'} {n} tokens"
            + ("" if first is None else f" (first difference at new token {first})")
        )
    times: dict[str, list[float]] = {"cache": [], "recompute": []}
    for r in range(args.kv_repeats):
        for name in ("cache", "recompute") if r % 2 == 0 else ("recompute", "cache"):
            fn = cached if name == "cache" else recompute
            start = time.perf_counter()
            fn(top_k=1)
            times[name].append(time.perf_counter() - start)
        print(f"   repeat {r + 1}: cache {times['cache'][-1]:.2f} s, recompute {times['recompute'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["recompute"] / med["cache"]
    print(
        f"   median: cache {med['cache']:.3f} s ({n / med['cache']:,.0f} tokens/s), recompute "
        f"{med['recompute']:.3f} s ({n / med['recompute']:,.0f} tokens/s): {speedup:.1f}x "
        f"(target >= {KV_TARGET:g}x: {'MET' if speedup >= KV_TARGET else 'NOT met'})"
    )
    if trained is not None:  # the KV model runs past its trained positions: show the trained one
        gen = torch.Generator().manual_seed(args.seed)
        ids = list(generate(trained, data.tokenizer.encode("ROMEO:").tolist(), 300, temperature=0.8, generator=gen))
        text = "ROMEO:" + data.tokenizer.decode(ids)
        print(
            f"   sample of the trained model itself (block {trained.config.block_size}, T=0.8):\n"
            + "\n".join("   | " + line for line in text.splitlines())
        )
    return {
        "same": same,
        "median": med,
        "speedup": speedup,
        "n": n,
        "prompt": len(prompt),
        "block": model.config.block_size,
    }


# --------------------------------------------------------------------------------------- part 3


def gpu_run(args: argparse.Namespace, data: Data) -> dict | None:
    if not torch.cuda.is_available():
        print("\n== --gpu: skipped: CUDA is not available on this machine")
        return None
    spec = GPU_REF if args.gpu_steps is None else replace(GPU_REF, steps=args.gpu_steps)
    name = torch.cuda.get_device_name()
    print(
        f"\n== GPU: {name}; bf16 autocast (fit), F.scaled_dot_product_attention: flash "
        f"{torch.backends.cuda.flash_sdp_enabled()}, mem-efficient "
        f"{torch.backends.cuda.mem_efficient_sdp_enabled()}; compile {args.compile}"
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    measured = statistics.median(matmul_gflops(8192, 20, "cuda", torch.bfloat16) for _ in range(3)) / 1e3
    nominal = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    r = train_run(spec, data, args, device="cuda")
    tflops = r["gflops"] / 1e3
    r.update(
        measured_peak=measured,
        nominal_peak=nominal,
        mfu_measured=tflops / measured,
        mfu_nominal=None if nominal is None else tflops / nominal,
        device_name=name,
    )
    print(
        f"   {tflops:.1f} TFLOP/s achieved; bf16 matmul peak measured {measured:.0f} TFLOP/s"
        + (f", datasheet {nominal:.0f}" if nominal else "")
        + f"; MFU {100 * r['mfu_measured']:.1f}% of measured"
        + (f", {100 * r['mfu_nominal']:.1f}% of datasheet" if nominal else "")
    )
    r.pop("model")
    return r


# --------------------------------------------------------------------------------------- main


def summary(args, data, runs: dict, tp: dict | None, kv: dict | None, gpu: dict | None, load0) -> None:
    print(
        "\n" + "=" * 100 + f"\nSUMMARY  ({data.source}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average before {load0:.2f}, after {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores)"
    )
    if runs:
        print(
            f"  {'run':<32}{'params':>9}{'steps':>6}{'tokens':>8}{'TFLOP':>7}{'(attn)':>7}{'val':>8}"
            f"{'target':>13}{'wall s':>8}{'tok/s':>8}{'GFLOP/s':>8}"
        )
        for name, r in runs.items():
            s = r["spec"]
            t = "" if s.target is None else f"<={s.target} {'MET' if r['val'] <= s.target else 'NOT'}"
            print(
                f"  {LABELS[name]:<32}{r['params']:>9,}{r['steps']:>6}{r['tokens'] / 1e6:>7.2f}M"
                f"{r['tflop']:>7.2f}{r['attn_tflop']:>7.2f}{r['val']:>8.4f}{t:>13}{r['wall']:>8.1f}"
                f"{r['tok_s']:>8,.0f}{r['gflops']:>8.1f}"
            )
        for name, r in runs.items():
            print(f"    {name:<6}: {r['spec'].describe()}")
        for name, r in runs.items():
            if r["spec"].tflop is not None:
                ok = r["tflop"] <= r["spec"].tflop
                print(
                    f"    {name:<6}: counted {r['tflop']:.3f} TFLOP (attention included) <= budget "
                    f"{r['spec'].tflop:g}: {'yes' if ok else 'NO'}"
                )
    if tp is not None:
        print(
            f"  fp32 matmul peak: {tp['peak']:.0f} GFLOP/s (median of {len(tp['peak_all'])}: "
            f"{', '.join(f'{p:.0f}' for p in tp['peak_all'])})"
        )
        print(
            f"  {'throughput (interleaved medians)':<36}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}"
            f"{'  | full run: % peak':>20}"
        )
        for name, row in tp["rows"].items():
            full = f"{100 * runs[name]['gflops'] / tp['peak']:.1f}%" if name in runs else "-"
            print(
                f"  {LABELS[name]:<36}{row['tok_s']:>10,.0f}{row['gflops']:>9.1f}{100 * row['share']:>7.1f}%{full:>20}"
            )
    if kv is not None:
        print(
            f"  KV cache: {kv['n']} new tokens after {kv['prompt']} (block {kv['block']}): cache "
            f"{kv['median']['cache']:.3f} s vs recompute {kv['median']['recompute']:.3f} s = "
            f"{kv['speedup']:.1f}x (target >= {KV_TARGET:g}x: {'MET' if kv['speedup'] >= KV_TARGET else 'NOT met'}); "
            f"same tokens: greedy {kv['same']['greedy']}, seeded sampling {kv['same']['sampled']}"
        )
    if gpu is not None:
        print(
            f"  GPU ({gpu['device_name']}): val {gpu['val']:.4f} (target <= {GPU_TARGET}: "
            f"{'MET' if gpu['val'] <= GPU_TARGET else 'NOT met'}), {gpu['tok_s']:,.0f} tokens/s, "
            f"MFU {100 * gpu['mfu_measured']:.1f}% of measured bf16 peak"
            + (f", {100 * gpu['mfu_nominal']:.1f}% of datasheet" if gpu["mfu_nominal"] else "")
        )
    print("=" * 100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="tinyshakespeare.txt")
    p.add_argument("--quick", action="store_true", help="~1 minute smoke check (budgets / 20)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only",
        nargs="+",
        choices=["ref", "half", "equal"],
        default=["ref", "half", "equal"],
        help="which part-1 runs",
    )
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-kv", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("overrides for OUR runs (half and equal), for pilots")
    for flag, field, typ in (
        ("--layers", "n_layer", int),
        ("--heads", "n_head", int),
        ("--width", "n_embd", int),
        ("--block", "block", int),
        ("--batch", "batch", int),
        ("--lr", "lr", float),
        ("--warmup", "warmup", int),
        ("--min-lr-ratio", "min_lr_ratio", float),
        ("--wd", "weight_decay", float),
    ):
        g.add_argument(flag, dest=field, type=typ, default=None)
    t = p.add_argument_group("throughput")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--tp-steps", type=int, default=10, help="training steps per timing")
    t.add_argument("--matmul-n", type=int, default=2048)
    t.add_argument("--matmul-reps", type=int, default=10)
    k = p.add_argument_group("KV cache")
    k.add_argument("--kv-block", type=int, default=1024)
    k.add_argument("--kv-prompt", type=int, default=512, help="prompt length (start of the val text)")
    k.add_argument("--kv-new", type=int, default=500)
    k.add_argument("--kv-repeats", type=int, default=3)
    u = p.add_argument_group("GPU (--gpu)")
    u.add_argument("--gpu", action="store_true", help="also run nanoGPT's GPU config (skipped without CUDA)")
    u.add_argument("--gpu-steps", type=int, default=None, help="instead of 5000 (a shorter check)")
    u.add_argument("--compile", action="store_true", help="torch.compile the model on GPU")
    args = p.parse_args(argv)
    args.overrides = {
        f: getattr(args, f)
        for f in ("n_layer", "n_head", "n_embd", "block", "batch", "lr", "warmup", "min_lr_ratio", "weight_decay")
        if getattr(args, f) is not None
    }
    if args.quick:
        args.repeats, args.tp_steps, args.matmul_reps = min(args.repeats, 2), min(args.tp_steps, 3), 3
        args.kv_block, args.kv_prompt = min(args.kv_block, 256), min(args.kv_prompt, 32)
        args.kv_new, args.kv_repeats = min(args.kv_new, 100), min(args.kv_repeats, 2)
        args.gpu_steps = args.gpu_steps or 100
    return args


def specs_for(args: argparse.Namespace) -> dict[str, RunSpec]:
    specs = {
        "ref": REFERENCE,
        "half": replace(OURS_HALF, **args.overrides),
        "equal": replace(OURS_EQUAL, **args.overrides),
    }
    if args.quick:  # budgets / 20: a smoke check of the whole pipeline, not a result
        specs = {
            k: replace(
                s,
                steps=None if s.steps is None else s.steps // 20,
                tflop=None if s.tflop is None else s.tflop / 20,
                warmup=min(s.warmup, 10),
            )
            for k, s in specs.items()
        }
    return {k: specs[k] for k in args.only}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    if load0 > 0.5:
        print(
            f"WARNING: load average {load0:.1f} on {os.cpu_count()} cores before we start: other work "
            "competes for the CPU, so timings are noisy"
        )
    data = load_data(args.text)
    if data is None:
        print(
            f"SKIPPED: {args.text} not found. This benchmark needs tiny Shakespeare (the nanoGPT anchors are "
            f"for that text): download {TEXT_URL} to that path, or pass --text PATH."
        )
        return
    print(
        f"text: {data.source}: {len(data.train_ids):,} train / {len(data.val_ids):,} val characters, "
        f"vocab {data.tokenizer.vocab_size}; torch {torch.__version__}, {torch.get_num_threads()} threads"
        + ("; --quick: budgets / 20, numbers not meaningful" if args.quick else "")
    )
    specs = specs_for(args)
    runs = {} if args.skip_quality else {name: train_run(s, data, args) for name, s in specs.items()}
    tp = None if args.skip_throughput else throughput(list(specs.values()), data, args)
    kv = None
    if not args.skip_kv:
        spec = specs.get("equal", replace(OURS_EQUAL, **args.overrides))
        trained = runs["equal"]["model"] if "equal" in runs else None
        kv = kv_generation(args, data, trained, spec)
    gpu = gpu_run(args, data) if args.gpu else None
    summary(args, data, runs, tp, kv, gpu, load0)


if __name__ == "__main__":
    main()
