"""Sample quality against training compute for chapter 02's DCGAN and chapter 05's U-Net (their recipes).

    python benchmarks/quality_curves.py dcgan 1500 3000 4500 6000     # generator updates
    python benchmarks/quality_curves.py unet 1500 3000 6000 3000:p0.5  # training steps[:p<p_uncond>][:v]
    python benchmarks/quality_curves.py dcgan 3000 --workdir /tmp/q    # checkpoints there (default ./quality_runs)
    python benchmarks/quality_curves.py dcgan 10000 --budget full      # the full budget's width (64)

Both are scored exactly as the chapters score them, by `metrics.evaluate_digits` (the course's digit
classifier: FD against mnist5k("test"), recognisability = share classified with confidence >= 0.9,
class shares among those, precision/recall):

dcgan -- recipe "02.dcgan" (z 64, width 32, batch 64, Adam 2e-4, non-saturating loss), 1,000 samples
    from `gan.sample(G, 1000, seed=123)` as in chapter 02. The learning rate is constant and every
    step's batch is seeded by the step, so one trajectory serves every point: each budget resumes the
    previous one's checkpoint with a larger `steps` and continues exactly the run a longer budget would
    make (the 3,000-update point is the chapter's own model when its checkpoint is copied into the
    workdir as dcgan_w32.pt, or retrained). The smallest budget is trained from scratch.
unet -- recipe "05.unet" (base 12, batch 32, lr 1.5e-3 with warm-up and a cosine decay over the run,
    p_uncond 0.3 unless given, the eps target unless ":v" asks for v-prediction), one SEPARATE run per
    budget (the learning-rate schedule spans the run, so a shorter run is not a prefix of a longer
    one), all from seed 0. Unconditional samples: 500 per
    sampling seed 5 and 6, DDIM 50 with eta = 1 (the chapter's sampler); prompts: 200 samples (digits
    0-9, 20 each, seed 4) at guidance 1 and 3, share whose classifier argmax is the requested digit.

Results go to <workdir>/<model>.json. Timings are not the point here (see the other benchmarks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from aigc_lib import data, gan, metrics, recipes
from aigc_lib import diffusion as dm
from aigc_lib.recipes import ch05

KEYS = ("fd", "recognisability", "min_confident_share", "max_confident_share", "precision", "recall")


def summary(ev: dict) -> dict:
    return {k: ev[k] for k in KEYS}


def dcgan_curve(budgets: list[int], workdir: Path, budget: str = "standard") -> dict:
    recipe, train = recipes.get("02.dcgan"), data.mnist5k("train")
    width = recipe.sizes_for(budget)["width"]
    out = {}
    first, rest = budgets[0], budgets[1:]
    G, _, _ = recipe.train(
        {"width": width, "steps": first}, train, "cpu", checkpoint=workdir / f"dcgan_w{width}_{first}.pt"
    )
    out[first] = summary(metrics.evaluate_digits(gan.to_unit(gan.sample(G, 1000, seed=123))))
    print(first, out[first], flush=True)
    trajectory = workdir / f"dcgan_w{width}.pt"  # resumed and extended budget after budget
    if not trajectory.exists():
        shutil.copy(workdir / f"dcgan_w{width}_{first}.pt", trajectory)
    for steps in rest:
        t0 = time.perf_counter()
        G, _, _ = recipe.train({"width": width, "steps": steps}, train, "cpu", checkpoint=trajectory)
        out[steps] = summary(metrics.evaluate_digits(gan.to_unit(gan.sample(G, 1000, seed=123))))
        out[steps]["seconds"] = time.perf_counter() - t0
        print(steps, out[steps], flush=True)
    return out


def unet_curve(runs: list[str], workdir: Path) -> dict:
    train, schedule = data.mnist5k("train"), dm.linear_schedule(ch05.T)
    base = recipes.get("05.unet").sizes_for("standard")["base"]
    out = {}
    for spec in runs:
        steps, *options = spec.split(":")
        settings = dict(ch05.TRAINING)
        prediction = "v" if "v" in options else "eps"
        for option in options:
            if option.startswith("p"):
                settings["p_uncond"] = float(option[1:])
            elif option != "v":
                raise SystemExit(f"unet: unknown option {option!r} in {spec!r} (expected p<p_uncond> or v)")
        model = ch05.build_unet(base, "cpu", 0)
        t0 = time.perf_counter()
        _, ema = dm.train_diffusion(
            model, train.images, int(steps), schedule=schedule, labels=train.labels, batch_size=32, seed=0,
            checkpoint=workdir / f"unet_{spec.replace(':', '_')}.pt", prediction=prediction, **settings,
        )  # fmt: skip
        row: dict = {"steps": int(steps), "p_uncond": settings["p_uncond"], "prediction": prediction}
        row["seconds"] = time.perf_counter() - t0
        for seed in (5, 6):
            x = dm.sample(ema.model, 500, schedule, steps=50, eta=1.0, prediction=prediction,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
            row[f"uncond_seed{seed}"] = summary(metrics.evaluate_digits(dm.to_unit(x)))
        asked = torch.arange(10).repeat_interleave(20)
        for w in (1.0, 3.0):
            x = dm.sample(ema.model, 200, schedule, labels=asked, guidance=w, steps=50, eta=1.0, prediction=prediction,
                          generator=torch.Generator().manual_seed(4))  # fmt: skip
            row[f"match_w{w:g}"] = (metrics.digit_probs(dm.to_unit(x)).argmax(1).cpu() == asked).float().mean().item()
        out[spec] = row
        print(spec, row, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=("dcgan", "unet"))
    p.add_argument("budgets", nargs="+", help="dcgan: generator updates; unet: steps[:p<p_uncond>][:v]")
    p.add_argument("--workdir", type=Path, default=Path("quality_runs"))
    p.add_argument(
        "--budget", choices=("standard", "full"), default="standard", help="dcgan: the recipe's width at this budget"
    )
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.model == "dcgan":
        budgets = sorted(int(b) for b in args.budgets)
        result = dcgan_curve(budgets, args.workdir, args.budget)
    else:
        result = unet_curve(args.budgets, args.workdir)
    (args.workdir / f"{args.model}_{args.budget}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
