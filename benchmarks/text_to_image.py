"""Chapter 07's text-to-image model: prompt following against training compute, latents against pixels.

    python benchmarks/text_to_image.py                         # latent 1,250/2,500/5,000 steps, pixel 2,500
    python benchmarks/text_to_image.py --latent 3000 --pixel   # chosen points
    python benchmarks/text_to_image.py --quick                 # a smoke check (numbers not meaningful)

Every latent run is the recipe `07.latent_unet` (recipes/ch07.py: same U-Net, captions, optimizer and
seed, on the recipe's autoencoder `07.autoencoder` and chapter 06's CLIP text tower) with only the
number of steps changed, each with its own warm-up + cosine schedule. `--pixel STEPS` adds the
fallback the issue names: chapter 05's U-Net shape (base 16, levels 32-16-8, attention at 8 × 8)
on the 32 × 32 × 3 pixels, with the same cross-attention, pooled text, captions, optimizer and batch
of 64, so one step reads as many images as a latent step.

Scored by one protocol, the chapter's (`text_to_image.prompt_following`): the first N test images'
full English captions (every attribute named; held-out combinations included), one image each,
DDIM 50 with η = 1 and guidance w = 3, sampling seed 5; the digit read by the attribute judge
(recipe `07.judge`), size, position, thickness and colour by `captions.measure_attributes`. Reported:
each attribute, all five at once, and the held-out captions' "all five" apart from the seen ones.
Compute is training FLOPs (FlopCounterMode over one step, times the steps; the frozen text tower's
forward included); the autoencoder's own training (paid once, before any latent run) is reported
apart as autoencoder_train_tflop. Throughput: training images/s of each model's step (median of 5), sampling
images/s of the guided DDIM-50 sampler. Checkpoints go to checkpoints/bench_t2i_*.pt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import check_load, matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import captions, diffusion, recipes
from aigc_lib.recipes import ch07
from aigc_lib.text_to_image import autoencoder as ae
from aigc_lib.text_to_image import pipeline as t2i


def pixel_config() -> diffusion.UNetConfig:
    return diffusion.UNetConfig(
        image_channels=3, image_size=32, base=16, mults=(1, 2, 2), attn_res=(8,), context_dim=64, groups=4,
        heads=2, upsample="transpose",
    )  # fmt: skip


def train_pixel(steps: int, train: captions.CaptionedDigits, clip_model, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusion.UNet(pixel_config())
    context = t2i.caption_context(clip_model, train, seed=seed, **ch07.CAPTIONS)
    _, ema = diffusion.train_diffusion(
        model, train.images, steps, schedule=diffusion.linear_schedule(ch07.T), context=context,
        batch_size=ch07.UNET_BATCH, seed=seed, checkpoint=f"checkpoints/bench_t2i_pixel_{steps}.pt", desc="pixel U-Net",
        **ch07.TRAINING,
    )  # fmt: skip
    return model, ema


def score(model: t2i.TextToImage, judge, rows: captions.CaptionedDigits) -> dict:
    r = t2i.prompt_following(model, judge, rows, lang="en", guidance=3.0, seed=5)
    held = captions.matches_holdout(rows)
    out = {a: r[a].float().mean().item() for a in (*captions.ATTRIBUTES, "all")}
    out["all_seen"] = r["all"][~held].float().mean().item()
    out["all_held_out"] = r["all"][held].float().mean().item()
    return out


def step_cost(model: diffusion.UNet, data: torch.Tensor, context, batch: int) -> tuple[float, float]:
    """(training FLOPs of one step, median seconds of one step over 5) for `model` on `data`'s shape."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x0 = data[:batch]
    idx = torch.arange(batch)

    def one() -> None:
        states, real = context(0, idx)
        t = torch.randint(0, ch07.T, (batch,))
        loss = model(x0, t, context=states, mask=real).pow(2).mean()  # the network's cost; the loss is cheap
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        one()
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    return float(counter.get_total_flops()), statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, nargs="*", default=[1250, 2500, 5000], help="latent U-Net training steps")
    p.add_argument("--pixel", type=int, nargs="*", default=[2500], help="pixel U-Net training steps")
    p.add_argument("--rows", type=int, default=500, help="test captions scored per model")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.latent, args.pixel, args.rows = [20], [20], 20
    check_load()
    out: dict = {"matmul_gflops": matmul_gflops(), "protocol": "first N test captions, en, w=3, DDIM 50 eta 1, seed 5"}
    clip_recipe = recipes.get("06.clip")
    train = captions.captioned_digits("train", n=ch07.IMAGES["standard"])
    clip_model = t2i.frozen(clip_recipe.run(train, budget="standard")[0])
    judge = (
        recipes.get("07.judge")
        .run(captions.captioned_digits("train", n=ch07.IMAGES["standard"], include_holdout="both"), budget="standard")[
            0
        ]
        .eval()
    )
    autoencoder = recipes.get("07.autoencoder").run(train, budget="standard")[0].eval()
    rows = captions.captioned_digits("test").subset(torch.arange(args.rows))
    latents = ae.encode_latents(autoencoder, train.images)
    scale = ae.latent_scale(latents)
    context = t2i.caption_context(clip_model, train, **ch07.CAPTIONS)
    schedule = diffusion.linear_schedule(ch07.T)
    sizes = recipes.get("07.latent_unet").sizes_for("standard")
    ae_sizes = recipes.get("07.autoencoder").sizes_for("standard")
    probe = ae.LatentAutoencoder(autoencoder.config)
    with FlopCounterMode(display=False) as counter:  # one training step of the first stage
        ae.autoencoder_loss(probe, train.images[: ae_sizes["batch"]], 1e-3)["loss"].backward()
    out["autoencoder_train_tflop"] = counter.get_total_flops() * ae_sizes["steps"] / 1e12  # paid once, for every run
    torch.manual_seed(0)
    flops, sec = step_cost(diffusion.UNet(ch07.unet_config(sizes["base"])), latents * scale, context, sizes["batch"])
    out["latent_step"] = {"flops": flops, "seconds": sec, "images_per_s": sizes["batch"] / sec}
    torch.manual_seed(0)
    flops_p, sec_p = step_cost(diffusion.UNet(pixel_config()), train.images * 2 - 1, context, sizes["batch"])
    out["pixel_step"] = {"flops": flops_p, "seconds": sec_p, "images_per_s": sizes["batch"] / sec_p}
    print(out, flush=True)
    out["latent"], out["pixel"] = {}, {}
    for steps in args.latent:
        unet, _, ema, s = recipes.get("07.latent_unet").train(
            {**sizes, "steps": steps}, train, "cpu", clip_model=clip_model, autoencoder=autoencoder,
            checkpoint=f"checkpoints/bench_t2i_latent_{steps}.pt",
        )  # fmt: skip
        model = t2i.TextToImage(clip_model, ema.model, schedule, autoencoder, s)
        t0 = time.perf_counter()
        out["latent"][steps] = {"train_tflop": flops * steps / 1e12, **score(model, judge, rows)}
        out["latent"][steps]["sampling_images_per_s"] = args.rows / (time.perf_counter() - t0)
        print("latent", steps, out["latent"][steps], flush=True)
    for steps in args.pixel:
        _, ema = train_pixel(steps, train, clip_model)
        model = t2i.TextToImage(clip_model, ema.model, schedule)
        t0 = time.perf_counter()
        out["pixel"][steps] = {"train_tflop": flops_p * steps / 1e12, **score(model, judge, rows)}
        out["pixel"][steps]["sampling_images_per_s"] = args.rows / (time.perf_counter() - t0)
        print("pixel", steps, out["pixel"][steps], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
