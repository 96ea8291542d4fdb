"""Grade notebooks: `aigc-grade SUBMISSION... --out DIR` (or `python -P -m aigc_lib grade ...`).

SUBMISSION is a notebook, a folder with one .ipynb per learner, or a folder with one sub-folder
per learner. Each learner's solution cells run in an isolated process (see aigc_lib.grading);
tests always come from the course, never from the submission, which is only read.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from aigc_lib.grading import Grader, Limits, SandboxBroken, find_submissions, grade_class
from aigc_lib.grading.isolate import writable_by_others
from aigc_lib.grading.reports import gradescope_results, gradescope_upload_problem, write_atomic
from aigc_lib.paths import SOLUTIONS


def _chapter(submissions: list[tuple[str, Path]], given: str | None) -> str:
    if given:
        return given
    for _, path in submissions:
        match = re.match(r"(\d\d)_", path.name)
        if match:
            return match.group(1)
    raise SystemExit("cannot tell the chapter from the file names: pass --chapter NN")


def _gradescope_upload(args) -> list[tuple[str, Path]] | None:
    """Gradescope uploads one learner's files: take the chapter's notebook from them, or write a
    results.json telling the learner what to upload (and return None)."""
    if not args.chapter:
        raise SystemExit("--gradescope needs --chapter NN")
    notebooks = sorted(
        p for folder in args.submissions for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    named = [p for p in notebooks if p.name.startswith(f"{args.chapter}_")]
    chosen = named if len(named) == 1 else notebooks if len(notebooks) == 1 else []
    if len(chosen) == 1:
        return [("submission", chosen[0])]
    from aigc_lib.exercises import exercises_for

    expected = next(iter(sorted(SOLUTIONS.glob(f"{args.chapter}_*.ipynb"))), Path(f"{args.chapter}_*.ipynb")).name
    found = ", ".join(p.name for p in notebooks) or "no notebook"
    message = (
        f"We could not tell which notebook to grade: your upload has {found}. Upload the chapter's "
        f"notebook, {expected}, on its own (other files are fine, other notebooks are not), then resubmit."
    )
    max_score = sum(ex.points for ex in exercises_for(args.chapter).values())
    write_atomic(args.gradescope, gradescope_upload_problem(message, max_score))
    print(message)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aigc-grade", description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="+", type=Path, help="notebooks or folders (never modified)")
    parser.add_argument("--chapter", help="chapter number, e.g. 00 (default: from the file names)")
    parser.add_argument("--out", type=Path, default=Path("grading_reports"), help="where reports go")
    parser.add_argument("--hidden", type=Path, help="folder with instructor-private hidden cases (chNN.py)")
    parser.add_argument("--source", type=Path, help="authored notebook whose grade_ids locate solution cells")
    parser.add_argument("--workers", type=int, default=2, help="submissions graded in parallel")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell_seconds, help="seconds per learner cell")
    parser.add_argument("--call-timeout", type=float, default=Limits.call_seconds, help="seconds per test call")
    parser.add_argument(
        "--call-idle",
        type=float,
        default=Limits.idle_seconds,
        help="seconds a cell or call may sleep or block before it is stopped",
    )
    parser.add_argument(
        "--wall-timeout",
        type=float,
        default=Limits.wall_seconds,
        help="wall-clock seconds per cell or call (a backstop; the limits above are CPU time)",
    )
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_bytes >> 20, help="memory per sandbox")
    parser.add_argument("--gradescope", type=Path, help="also write Gradescope's results.json (one submission)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="without root: run learner code as you, with no isolation (your own notebook only)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected >= 1, got {args.workers}")

    here = Path.cwd().resolve()
    inside = [p for p in args.submissions if here == p.resolve() or p.resolve() in here.parents]
    if inside and sys.path and os.path.realpath(sys.path[0] or ".") == str(here):
        # `python -m` put this folder first on sys.path: a learner's tqdm.py or torch.py would
        # already have run as you
        parser.error(
            f"run the grader from outside the submissions ({inside[0]}), or use `aigc-grade` "
            "or `python -P -m aigc_lib grade`: files there must never be importable by the grader"
        )
    if args.gradescope:
        submissions = _gradescope_upload(args)
        if submissions is None:
            return 0
    else:
        submissions = find_submissions(args.submissions)
    if not submissions:
        parser.error("no submissions found")
    limits = Limits(
        cell_seconds=args.cell_timeout,
        call_seconds=args.call_timeout,
        idle_seconds=args.call_idle,
        wall_seconds=args.wall_timeout,
        memory_bytes=args.memory_mb << 20,
    )
    try:
        grader = Grader(
            _chapter(submissions, args.chapter),
            limits=limits,
            hidden_dir=args.hidden,
            source=args.source,
            insecure=args.insecure,
        )
        if args.gradescope and grader.level != "namespaces":
            args.gradescope.parent.mkdir(parents=True, exist_ok=True)
            if writable_by_others(args.gradescope.parent):
                raise SandboxBroken(
                    f"{args.gradescope.parent} is writable by others: learner code could replace results.json"
                )
        print(f"grading {len(submissions)} submission(s) of chapter {grader.chapter}; isolation: {grader.level}")
        reports = grade_class(grader, submissions, args.out, workers=args.workers, progress=not args.quiet)
    except SandboxBroken as err:  # an infrastructure failure must never become a learner's score
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in sorted(reports, key=lambda r: r["student"]):
        flag = "" if r["status"] == "graded" else f"  [{r['status']}: {r['reason']}]"
        print(f"  {r['student']:<24} {r['score']:g} / {r['max_score']:g}{flag}")
    if args.gradescope:
        if len(reports) != 1:
            parser.error("--gradescope needs exactly one submission")
        if reports[0]["status"] == "error":
            print(f"error: {reports[0]['reason']}; no results.json written", file=sys.stderr)
            return 2
        write_atomic(args.gradescope, gradescope_results(reports[0]))
    print(f"reports: {args.out}/ (grades.csv, summary.md, learners/<id>/feedback.md)")
    return 0
