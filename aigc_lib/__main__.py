"""The course's command line: `python -m aigc_lib COMMAND` (`--help` lists the commands).

doctor | workspace [DIR] | build-chapters [--check] [--force] | grade ... (= aigc-grade) |
gradescope-autograder NN ZIP | classifier [--retrain]
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)

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
