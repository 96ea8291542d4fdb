"""The course's command line: `python -m aigc_lib COMMAND` (`--help` lists the commands).

doctor | workspace [DIR] | build-chapters [--check] [--force] | grade ... (= aigc-grade) |
gradescope-autograder NN ZIP | classifier [--retrain] | train [RECIPE] [--budget B] [--steps N] [--batch N] |
book [--no-execute] [--strict] [--budget B] [--chapters 00 03 ...] [--out DIR] [--fresh] [--repo-url URL]

`book` builds the course's website with Jupyter Book (the optional toolchain: pip install -r
requirements-book.txt) into build/book/_build/html/, executing the chapters at the budget with a cache.

`train` trains a chapter's recipe, the model its notebook uses, and writes the notebook's checkpoint under
checkpoints/ of the current folder, which is where a notebook looks when it runs in that folder: run it in
the folder your notebooks run in (`cd workspace`, or `cd solutions`). The same command runs on N processes
or GPUs under PyTorch's launcher (one process per GPU, NCCL; gloo on CPU):

    torchrun --nproc_per_node=4 -m aigc_lib train 05.unet
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m aigc_lib train 05.unet
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def classifier(args: argparse.Namespace) -> int:
    """Show the shipped digit classifier (the metrics' feature extractor), or retrain it."""
    from aigc_lib import metrics
    from aigc_lib.data import mnist5k

    if args.retrain:
        model, acc = metrics.train_digit_classifier(epochs=args.epochs, seed=args.seed, device=args.device)
        path = metrics.save_digit_classifier(model, acc, args.seed, args.out)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB), test accuracy {acc:.4f}")
        return 0
    blob = metrics.read_asset(args.out)
    print(f"{args.out}: { ({k: v for k, v in blob.items() if k != 'state_dict'}) }")
    test = mnist5k("test")
    print(
        f"test accuracy now: {metrics.accuracy(metrics.load_digit_classifier(args.device), test.images, test.labels):.4f}"
    )
    print(f"real floor (n=1000): {metrics.real_floor(1000, device=args.device):.3f}")
    return 0


def train(args: argparse.Namespace) -> int:
    """Train recipe `args.recipe` (on every rank when torchrun launched us) and report on rank 0."""
    from aigc_lib import distributed, pretrained, recipes
    from aigc_lib.runtime import current_budget

    if pretrained.choice() == "pretrained":  # this command exists to train: the packaged weights are not loaded
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"note: ${pretrained.WEIGHTS_ENV}=pretrained is ignored here: `train` trains", file=sys.stderr)
        os.environ[pretrained.WEIGHTS_ENV] = "train"
    found = recipes.all_recipes()
    trainable = sorted(name for name, r in found.items() if r.data is not None)
    if args.recipe is None:
        for name in sorted(found):
            how = "" if found[name].data is not None else "   (not from the command line: needs another recipe's model)"
            print(f"{name:<16}{found[name].summary[:90]}{how}")
        return 0
    if args.recipe not in found or found[args.recipe].data is None:
        why = "unknown" if args.recipe not in found else "needs inputs besides a dataset (another recipe's model)"
        print(f"error: recipe {args.recipe!r}: {why}; the command line trains {', '.join(trainable)}", file=sys.stderr)
        return 2
    recipe = found[args.recipe]
    budget = args.budget or current_budget()
    sizes, suffix = _override(recipe.name, recipe.sizes_for(budget), steps=args.steps, batch=args.batch)
    checkpoint = args.checkpoint or Path(recipe.checkpoint_for(budget).removesuffix(".pt") + suffix + ".pt")
    ranks, device = distributed.setup(args.device)
    try:
        if ranks.is_main:  # rank 0 builds the data first: caches (speech) are written once
            data = recipe.data(sizes)
        distributed.barrier()
        if not ranks.is_main:
            data = recipe.data(sizes)
        run = {"checkpoint": checkpoint, "progress": not args.quiet}
        if args.log_every:
            run["log_every"] = args.log_every
        if args.ckpt_every:
            run["ckpt_every"] = args.ckpt_every
        result = recipe.train(sizes, data, device, **run)
        history = next(r for r in (result if isinstance(result, tuple) else (result,)) if hasattr(r, "losses"))
        if ranks.is_main:
            print(
                f"{recipe.name} ({budget}, {sizes}) on {ranks.world_size} process(es), {device}: "
                f"final loss {history.losses[-1]:.4f}; checkpoint {Path(checkpoint).resolve()}"
            )
    finally:
        distributed.teardown()
    return 0


def book(args: argparse.Namespace) -> int:
    """Build the website (aigc_lib.book); a missing toolchain is a one-line error, not a traceback."""
    from aigc_lib import book as site

    try:
        html = site.build(
            out=args.out or site.OUT,
            budget=args.budget,
            chapters=args.chapters,
            execute=not args.no_execute,
            strict=args.strict,
            fresh=args.fresh,
            repo_url=args.repo_url,
            branch=args.branch,
            quiet=args.quiet,
        )
    except (site.ToolchainMissing, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"the book: {html / 'index.html'}")
    return 0


def _override(name: str, sizes: dict, *, steps: int | None, batch: int | None) -> tuple[dict, str]:
    """The recipe's sizes with --steps / --batch, and a checkpoint suffix naming what was changed."""
    suffix = ""
    for flag, value, keys in (("steps", steps, ("steps",)), ("batch", batch, ("batch", "batch_size"))):
        if value is None:
            continue
        key = next((k for k in keys if k in sizes), None)
        if key is None or value < 1:
            raise SystemExit(
                f"error: --{flag}: recipe {name!r} has sizes {sorted(sizes)}; expected a positive int there"
            )
        sizes = {**sizes, key: value}
        suffix += f"_{flag}{value}"
    return sizes, suffix


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"]:  # the grader's own options, as `aigc-grade` takes them
        from aigc_lib.grading.cli import main as grade

        return grade(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m aigc_lib")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("grade", help="grade submissions in a sandbox (same as aigc-grade; `grade --help`)")
    clf = sub.add_parser("classifier", help="show the metrics' digit classifier, or --retrain it (1-2 min)")
    clf.add_argument("--retrain", action="store_true", help="train the digit classifier and rewrite the asset")
    clf.add_argument("--epochs", type=int, default=12)
    clf.add_argument("--seed", type=int, default=None, help="default: the seed the shipped asset was made with")
    clf.add_argument("--out", type=Path, default=None, help="default: the packaged asset")
    clf.add_argument("--device", default="cpu", help="device for retraining (default cpu: the asset is made there)")
    sub.add_parser("doctor", help="check the installation: [OK]/[FAIL] per requirement")
    build = sub.add_parser("build-chapters", help="generate chapters/ (student edition) from solutions/")
    build.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    build.add_argument("--force", action="store_true", help="overwrite edited chapters (a .bak copy is kept)")
    work = sub.add_parser("workspace", help="copy the student edition into a folder of your own (never overwrites)")
    work.add_argument("folder", nargs="?", type=Path, help="default: workspace/ in the course folder")
    zipped = sub.add_parser("gradescope-autograder", help="build the autograder zip to upload to Gradescope")
    zipped.add_argument("chapter", help="chapter number, e.g. 00")
    zipped.add_argument("zip", type=Path, help="where to write the zip")
    fit_ = sub.add_parser(
        "train",
        help="train a chapter's recipe by name; torchrun ... -m aigc_lib train: N processes",
        description="Train a chapter's recipe (the model its notebook uses) and write the notebook's checkpoint "
        "to checkpoints/ under the CURRENT folder (speech data is cached there too). A notebook reads checkpoints/ "
        "relative to the folder it runs in, so run this command in that folder: `cd workspace` (your copy of the "
        "notebooks) or `cd solutions`. Under torchrun: one process per GPU (NCCL) or per CPU share (gloo), the "
        "recipe's batch split among them.",
    )
    fit_.add_argument("recipe", nargs="?", help="e.g. 05.unet (omit: list the recipes)")
    fit_.add_argument("--budget", choices=("smoke", "standard", "full"), help="default: $AIGC_BUDGET or by device")
    fit_.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if torch sees a GPU (rank r: cuda:r)")
    fit_.add_argument("--steps", type=int, help="override the recipe's steps (the checkpoint name says so)")
    fit_.add_argument("--batch", type=int, help="override the global batch, split among the ranks")
    fit_.add_argument(
        "--checkpoint", type=Path, help="default: the notebook's checkpoint under checkpoints/ of the current folder"
    )
    fit_.add_argument("--log-every", type=int, help="log (and average over ranks) every N steps")
    fit_.add_argument("--ckpt-every", type=int, help="save every N steps")
    fit_.add_argument("--quiet", action="store_true", help="no progress bar")
    site = sub.add_parser(
        "book", help="build the course's website (Jupyter Book; pip install -r requirements-book.txt)"
    )
    site.add_argument("--no-execute", action="store_true", help="pages without outputs (no kernel runs)")
    site.add_argument("--strict", action="store_true", help="warnings and failing cells are errors (Sphinx -W)")
    site.add_argument("--budget", choices=("smoke", "standard", "full"), help="default: $AIGC_BUDGET or standard")
    site.add_argument("--chapters", nargs="+", metavar="NN", help="only these chapters, e.g. 00 03 A1 (default: all)")
    site.add_argument("--out", type=Path, help="default: build/book/ in the course folder (html in _build/html/)")
    site.add_argument("--fresh", action="store_true", help="forget this budget's execution cache: run every chapter")
    site.add_argument("--repo-url", help="https://github.com/OWNER/REPO: GitHub and Binder links on the pages")
    site.add_argument("--branch", default="main", help="the branch those links point to (default main)")
    site.add_argument("--quiet", action="store_true", help="only Sphinx's warnings and errors")
    args = parser.parse_args(argv)

    if args.command == "book":
        return book(args)

    if args.command == "train":
        return train(args)

    if args.command == "classifier":
        from aigc_lib import metrics

        args.seed = metrics.TRAIN_SEED if args.seed is None else args.seed
        args.out = args.out or metrics.ASSET_PATH
        return classifier(args)
    if args.command == "gradescope-autograder":
        from aigc_lib.grading.reports import gradescope_autograder_zip

        gradescope_autograder_zip(args.chapter, args.zip)
        print(f"wrote {args.zip}: upload it as the assignment's autograder (Gradescope: Configure Autograder)")
        return 0

    if args.command == "doctor":
        from aigc_lib.doctor import doctor

        return 1 if doctor() else 0
    if args.command == "workspace":
        from aigc_lib.notebooks import WORKSPACE, make_workspace

        folder = args.folder or WORKSPACE
        copied, kept = make_workspace(folder)
        for path in copied:
            print(f"copied: {path}")
        for path in kept:
            print(f"kept (already there, not overwritten): {path}")
        print(f"your workspace: {folder} — open it with: jupyter lab {folder}")
        return 0
    from aigc_lib.notebooks import EditedNotebook, build_chapters

    try:
        changed = build_chapters(check=args.check, force=args.force)
    except EditedNotebook as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and changed:
        print("run: python -m aigc_lib build-chapters")
        return 1
    print(f"chapters/ {'up to date' if not changed else 'regenerated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
