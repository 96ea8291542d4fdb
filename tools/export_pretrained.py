"""Refresh the course's pretrained weights (aigc_lib/assets/pretrained/) from a standard-budget run.

    cd solutions && for nb in 0*.ipynb; do AIGC_BUDGET=standard jupyter nbconvert --execute ...; done
    python tools/export_pretrained.py                    # every finished *_standard*.pt in solutions/checkpoints/
    python tools/export_pretrained.py --from DIR --check # list what would change, write nothing

Every checkpoint a chapter writes at the standard budget is exported (the compact form of
aigc_lib.pretrained: float16 weights, History, end-of-training random state; no optimizer), and
MANIFEST.json is rewritten with each file's steps, parameters, size and SHA-256. Run the chapters to
their end first: an interrupted run's checkpoint has fewer steps than the notebook asks for, and fit
then refuses the packaged copy (it trains instead, with a warning). Then run
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
    found = sorted(p for p in args.source.glob(f"*_{args.budget}*.pt"))
    if not found:
        print(f"no *_{args.budget}*.pt checkpoints in {args.source}", file=sys.stderr)
        return 1
    for p in found:
        print(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB")
    if args.check:
        return 0
    manifest = pretrained.export(found, args.out)
    total = sum(entry["bytes"] for entry in manifest.values())
    print(f"{len(manifest)} files, {total / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
