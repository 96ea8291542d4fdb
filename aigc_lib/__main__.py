"""`python -m aigc_lib doctor | workspace [DIR] | build-chapters [--check] [--force] | gradescope-autograder NN ZIP`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aigc_lib")
    sub = parser.add_subparsers(dest="command", required=True)
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
