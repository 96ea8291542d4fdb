"""How fast does the classroom grader get through a class? (A benchmark, not a timed test.)

    python benchmarks/grading_speed.py [--students 100] [--workers 2]

Builds a class of chapter-00 submissions (a third solved, a third untouched, a third with
mistakes), grades it with `grade_class` and prints the wall time for the class, the time per
submission, and the cost of one empty sandbox run (process start, isolation, importing torch):
the grader's fixed overhead, since the learner's own compute in chapter 00 is milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from aigc_lib.grading import Grader, Limits, find_submissions, grade_class, isolation_level
from aigc_lib.grading.grader import PREAMBLE
from aigc_lib.grading.isolate import SandboxUid, run_sandbox
from aigc_lib.paths import CHAPTERS, SOLUTIONS

MISTAKES = {  # forgot alpha * V; temperature on probabilities (the sources' bug E3)
    "next_char_probs": (
        "def next_char_probs(counts, alpha=1.0):\n"
        "    c = counts.float() + alpha\n"
        "    return c / counts.float().sum(-1, keepdim=True)"
    ),
    "apply_temperature": (
        "def apply_temperature(logits, temperature):\n"
        "    return torch.softmax(torch.softmax(logits, -1) / temperature, -1)"
    ),
}


def make_class(folder: Path, students: int) -> None:
    solved = nbformat.read(SOLUTIONS / "00_history.ipynb", as_version=4)
    untouched = nbformat.read(CHAPTERS / "00_history.ipynb", as_version=4)
    mistaken = nbformat.read(SOLUTIONS / "00_history.ipynb", as_version=4)
    for cell in mistaken.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell.source = MISTAKES.get(gid, cell.source)
    for i in range(students):
        path = folder / f"student{i:03d}" / "00_history.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write([solved, untouched, mistaken][i % 3], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    grader = Grader("00", limits=Limits())
    empty = []
    uid = SandboxUid()
    for _ in range(5):
        start = time.perf_counter()
        run_sandbox({"preamble": PREAMBLE, "cells": [], "calls": []}, b"", grader.limits, uid, lambda e, b: None)
        empty.append(time.perf_counter() - start)
    uid.release()
    print(f"isolation: {isolation_level()}")
    print(f"one empty sandbox run (start, isolate, import torch): median {statistics.median(empty):.2f} s of 5")

    with tempfile.TemporaryDirectory() as tmp:
        make_class(Path(tmp) / "class", args.students)
        submissions = find_submissions([Path(tmp) / "class"])
        start = time.perf_counter()
        reports = grade_class(grader, submissions, Path(tmp) / "out", workers=args.workers)
        wall = time.perf_counter() - start
    scores = sorted(r["score"] for r in reports)
    print(
        f"class of {len(reports)} with {args.workers} workers: {wall:.1f} s "
        f"({wall / len(reports):.2f} s per submission, {wall * args.workers / len(reports):.2f} s of worker time each)"
    )
    print(f"scores: min {scores[0]:g}, median {scores[len(scores) // 2]:g}, max {scores[-1]:g}")


if __name__ == "__main__":
    main()
