"""Chapter 06's CLIP: zero-shot accuracy against training compute and batch size, and throughput.

    python benchmarks/clip.py                    # compute curve 750…6,000 steps, batch 16/64/256, throughput
    python benchmarks/clip.py --quick            # a smoke check (numbers not meaningful)
    python benchmarks/clip.py --steps 3000 12000 --batches 64 --json out.json

Every run is the recipe `06.clip` (recipes/ch06.py: same model, captions, optimizer and seed) with
only the number of steps or the batch size changed, each with its own full warm-up + cosine
schedule (a run to 3,000 steps is not the first half of one to 6,000). Each is scored by the same
protocol on the 1,000 test images of `captioned_digits("test")` (held-out combinations included):

  zero-shot accuracy  -- digit (English and Chinese), size, position, thickness, colour, each with
                         prompt ensembling (`clip.zero_shot_accuracy`), and the digit from one prompt;
  linear probe        -- the digit from frozen image features, logistic regression fitted on the
                         5,000 first training renders (`clip.linear_probe`);
  retrieval           -- text -> image recall@1 among 100 test images, full captions, 20 draws;
  compositions        -- `clip.composition_accuracy` for each held-out entry: held-out vs seen images.

The batch-size comparison adds a control: batch 64 contrasted within groups of 16 (train_clip's
`group`), which keeps batch 64's steps and gradients and gives each image batch 16's 15 negatives.
Retrieval pools hold images with distinct full captions (`clip.retrieval_recall`).

Compute is reported as training FLOPs (forward + backward of one step counted with
torch.utils.flop_counter.FlopCounterMode, times the steps). Batch sizes are compared at equal
samples: steps = samples / batch. Throughput: training images/s of the recipe's step, median of
interleaved repeats, and its share of this CPU's fp32 matmul peak measured in the same run.
Checkpoints go to checkpoints/bench_clip_*.pt, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from common import check_load, matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import captions, clip
from aigc_lib.recipes import ch06


def evaluate(model: clip.CLIP, train: captions.CaptionedDigits, test: captions.CaptionedDigits) -> dict:
    out = {}
    for lang in captions.LANGS:
        out[f"digit_{lang}"] = clip.zero_shot_accuracy(model, test, "digit", lang)
    out["digit_one_prompt"] = clip.zero_shot_accuracy(model, test, "digit", ensemble=False)
    for attr in captions.ATTRIBUTES[1:]:
        out[attr] = clip.zero_shot_accuracy(model, test, attr)
    with torch.no_grad():
        n = min(5000, len(train))
        feats = [model._encode_image(x.images) for x in (train, test)]
    out["probe_digit"] = clip.linear_probe(feats[0][:n], train.attrs["digit"][:n], feats[1], test.attrs["digit"])
    out["t2i_recall1_of_100"] = clip.retrieval_recall(model, test)["text_to_image"]
    for k, entry in enumerate(captions.HOLDOUT):
        r = clip.composition_accuracy(model, test, entry)
        out[f"composition{k}"] = {"entry": [list(p) for p in entry], "held_out": r["held_out"], "seen": r["seen"]}
    return out


def step_flops(model: clip.CLIP, train: captions.CaptionedDigits, batch: int) -> float:
    images = train.images[:batch]
    ids, _ = captions.encode_captions(captions.captions_for({a: t[:batch] for a, t in train.attrs.items()}, seed=0))
    with FlopCounterMode(display=False) as counter:
        clip.clip_loss(model(images, ids)).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def throughput(train: captions.CaptionedDigits, batch: int, repeats: int, steps: int) -> float:
    """Training images/s of the recipe's step (fresh model, no checkpoint), median of `repeats`."""
    rates = []
    for r in range(repeats):
        torch.manual_seed(0)
        model = clip.CLIP(clip.CLIPConfig())
        sampler = clip.caption_sampler(train, seed=r, **ch06.CAPTIONS)
        start = time.perf_counter()
        clip.train_clip(model, train, sampler, steps, batch_size=batch, lr=ch06.LR, progress=False)
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[750, 1500, 3000, 6000], help="compute curve, batch 64")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256], help="at the samples of 3,000 x 64")
    p.add_argument("--samples", type=int, default=3000 * 64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.batches, args.samples = [20, 40], [16, 64], 40 * 64
    check_load()
    images = ch06.IMAGES["smoke" if args.quick else "standard"]
    train, test = captions.captioned_digits("train", n=images), captions.captioned_digits("test")
    os.makedirs("checkpoints", exist_ok=True)
    flops = {b: step_flops(clip.CLIP(clip.CLIPConfig()), train, b) for b in sorted({64, *args.batches})}
    runs = {}

    def run(steps: int, batch: int, group: int | None = None) -> dict:
        if (steps, batch, group) not in runs:
            start = time.perf_counter()
            ckpt = f"checkpoints/bench_clip_{images}_{steps}_b{batch}" + (f"_g{group}" if group else "") + ".pt"
            sizes = {"images": images, "steps": steps, "batch": batch, "group": group}
            model, _ = ch06.train_clip_model(sizes, train, "cpu", checkpoint=ckpt, progress=False)
            took = time.perf_counter() - start
            result = {"steps": steps, "batch": batch, "group": group, "samples": steps * batch}
            result |= {"train_flops": flops[batch] * steps, "train_s": round(took, 1)} | evaluate(model, train, test)
            runs[(steps, batch, group)] = result
            print(json.dumps({k: v for k, v in result.items() if not k.startswith("composition")}))
        return runs[(steps, batch, group)]

    curve = [run(s, 64) for s in args.steps]
    batches = [run(args.samples // b, b) for b in args.batches]
    if 64 in args.batches and 16 in args.batches:  # the control: batch 64's steps, batch 16's negatives
        batches.append(run(args.samples // 64, 64, group=16))
    peak = matmul_gflops(reps=5)
    rate = throughput(train, 64, repeats=1 if args.quick else 3, steps=20 if args.quick else 200)
    report = {
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "train_images": images,
        "step_flops_b64": flops[64],
        "images_per_s": rate,
        "matmul_peak_gflops": peak,
        "share_of_peak": rate / 64 * flops[64] / 1e9 / peak,
        "compute_curve": curve,
        "batch_sizes": batches,
    }
    print(
        f"\ntraining: {rate:.0f} images/s = {rate / 64 * flops[64] / 1e9:.1f} GFLOP/s, "
        f"{report['share_of_peak']:.0%} of the fp32 matmul peak ({peak:.0f} GFLOP/s, {args.threads} threads)"
    )
    print("\nsteps  batch group  TFLOP  digit en/zh   1-prompt probe  size  pos  thick colour R@1/100")
    for r in curve + batches:
        print(
            f"{r['steps']:6d} {r['batch']:5d} {r['group'] or r['batch']:5d} {r['train_flops'] / 1e12:6.2f}"
            f"  {r['digit_en']:6.1%} {r['digit_zh']:6.1%}"
            f" {r['digit_one_prompt']:6.1%} {r['probe_digit']:6.1%} {r['size']:5.1%} {r['position']:5.1%}"
            f" {r['thickness']:5.1%} {r['colour']:5.1%} {r['t2i_recall1_of_100']:6.1%}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
