"""`python -m aigc_lib doctor | build-chapters [--check]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aigc_lib")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the installation: [OK]/[FAIL] per requirement")
    build = sub.add_parser("build-chapters", help="generate chapters/ (student edition) from solutions/")
    build.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from aigc_lib.doctor import doctor

        return 1 if doctor() else 0
    from aigc_lib.notebooks import build_chapters

    changed = build_chapters(check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and changed:
        print("run: python -m aigc_lib build-chapters")
        return 1
    print(f"chapters/ {'up to date' if not changed else 'regenerated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
