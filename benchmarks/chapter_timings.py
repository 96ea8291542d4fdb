"""Time each cell of a chapter at a budget: `python benchmarks/chapter_timings.py 05 --budget standard`.

Runs the authored notebook (solutions/) in a fresh kernel with nbclient, as a learner's JupyterLab
would, and prints the total and every cell over `--long` seconds with its first line, plus the load
average (other work on the machine slows every figure). `--json` appends the record to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from aigc_lib import kernel_wait

ROOT = Path(__file__).resolve().parent.parent


def _seconds(cell) -> float:
    t = cell.metadata.get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def _title(nb, index: int) -> str:
    """The nearest markdown heading above a cell: where a learner finds it."""
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def time_chapter(chapter: str, budget: str, long: float, save: Path | None = None) -> dict:
    [path] = sorted((ROOT / "solutions").glob(f"{chapter}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    os.environ["AIGC_BUDGET"] = budget
    os.environ.pop("AIGC_STRICT", None)
    kernel_wait.install()  # a missed zmq wake-up would otherwise add a cell's whole timeout to the time
    load = os.getloadavg()
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=1800, kernel_name="python3", record_timing=True, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    total = time.perf_counter() - start
    if save is not None:  # the executed notebook, to read the figures it printed
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / f"{path.stem}.{budget}.ipynb")
    cells = [
        {
            "index": i,
            "seconds": round(_seconds(c), 1),
            "section": _title(nb, i),
            "first_line": c.source.splitlines()[0] if c.source else "",
        }
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    ]
    return {
        "chapter": path.stem,
        "budget": budget,
        "total_s": round(total, 1),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "long_cells": [c for c in cells if c["seconds"] >= long],
        "cells": cells,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", help="chapter numbers, e.g. 02 05")
    parser.add_argument("--budget", default="standard", choices=("smoke", "standard", "full"))
    parser.add_argument("--long", type=float, default=20.0, help="report cells taking at least this many seconds")
    parser.add_argument("--json", type=Path, help="append each record (one JSON object per line) to this file")
    parser.add_argument("--save", type=Path, help="write each executed notebook into this folder")
    args = parser.parse_args()
    for chapter in args.chapters:
        record = time_chapter(chapter, args.budget, args.long, args.save)
        print(
            f"{record['chapter']} at {args.budget}: {record['total_s']:.0f} s "
            f"(load average {record['load_before'][0]} before, {record['load_after'][0]} after, {record['cpus']} CPUs)"
        )
        for c in record["long_cells"]:
            print(f"  cell {c['index']:3d} {c['seconds']:7.1f} s  [{c['section']}]  {c['first_line']}")
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
