"""Refresh the course's pretrained weights (aigc_lib/assets/pretrained/) from a standard-budget run.

    python -m aigc_lib book --budget standard --fresh    # runs every chapter (AIGC_WEIGHTS unset): checkpoints
                                                         # land in solutions/checkpoints/ (or run the notebooks)
    python tools/export_pretrained.py                    # every *_standard*.pt in solutions/checkpoints/
    python tools/export_pretrained.py --from DIR --check # list what would change, write nothing

Every checkpoint a chapter writes at the standard budget is exported (the compact form of
aigc_lib.pretrained: float16 weights, History, end-of-training random state; no optimizer), and
MANIFEST.json is rewritten with each file's steps, size and SHA-256; files of an earlier export that
are not among them are removed. An unfinished run's checkpoint (interrupted before its last step) is
refused, and then nothing is written (checkpoints record their run's length since version 0.2.0; for an
older one, fit's check at load time — the steps must match — is what catches it). Then run
`pytest tests/test_pretrained.py`, which loads each file into its model and checks the figures, and
commit the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aigc_lib import pretrained  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, default=ROOT / "solutions" / "checkpoints")
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--out", type=Path, default=pretrained.FOLDER)
    parser.add_argument("--check", action="store_true", help="list the checkpoints, write nothing")
    args = parser.parse_args(argv)
    if pretrained.choice() == "pretrained":
        print(f"${pretrained.WEIGHTS_ENV}=pretrained: the chapters loaded the packaged weights and wrote no "
              "checkpoints; run them with AIGC_WEIGHTS unset first", file=sys.stderr)  # fmt: skip
        return 1
    found = sorted(p for p in args.source.glob(f"*_{args.budget}*.pt") if p.is_file())
    if not found:
        print(f"no *_{args.budget}*.pt checkpoints in {args.source}", file=sys.stderr)
        return 1
    for p in found:
        print(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB")
    if args.check:
        return 0
    try:  # every checkpoint is checked (a fit checkpoint, finished) before anything is written
        manifest = pretrained.export(found, args.out)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1
    total = sum(entry["bytes"] for entry in manifest.values())
    print(f"{len(manifest)} files, {total / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
