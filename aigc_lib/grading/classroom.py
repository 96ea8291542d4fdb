"""Grade a whole class: find each learner's notebook, grade in parallel, resume after interruption.

Layout of `out/`:
    learners/<id>/result.json   full report (with a fingerprint: reused by a re-run if unchanged)
    learners/<id>/feedback.md   what the learner sees (also feedback.html)
    grades.csv                  the gradebook
    summary.md                  who was graded, who could not be and why, who crashed
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from aigc_lib.grading.grader import Grader, protected_paths
from aigc_lib.grading.reports import (
    feedback_html,
    feedback_markdown,
    gradebook_csv,
    summary_markdown,
    write_atomic,
)


def find_submissions(paths: list[Path]) -> list[tuple[str, Path]]:
    """(learner id, notebook) pairs: a folder holding one sub-folder or one .ipynb per learner, or files."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_file():
            found.append((path.stem, path))
        elif path.is_dir() and any(path.glob("*.ipynb")) and not any(p.is_dir() for p in path.iterdir()
                                                                      if not p.name.startswith(".")):
            found += [(p.stem, p) for p in sorted(path.glob("*.ipynb"))]
        elif path.is_dir():
            for entry in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
                if entry.is_dir():
                    notebooks = sorted(entry.rglob("*.ipynb"))
                    notebooks = [n for n in notebooks if ".ipynb_checkpoints" not in n.parts]
                    found.append((entry.name, notebooks[0] if notebooks else entry / "MISSING.ipynb"))
                elif entry.suffix == ".ipynb":
                    found.append((entry.stem, entry))
        else:
            raise FileNotFoundError(f"submissions: no such file or folder {path}")
    ids = [i for i, _ in found]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"submissions: learner ids appear twice: {sorted(duplicates)}")
    return found


def _safe_id(student: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", student)[:100] or "_"


def _fingerprint(grader: Grader, path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
    return f"{grader.fingerprint()}-{digest}"


def grade_class(grader: Grader, submissions: list[tuple[str, Path]], out: Path, *, workers: int = 2,
                progress: bool = True) -> list[dict]:
    """Grade every submission (reusing finished results), write all reports; returns the reports."""
    out = Path(out)
    hide = protected_paths(out, grader.hidden_dir, *{p.parent for _, p in submissions})
    slots: queue.Queue[int] = queue.Queue()
    for i in range(workers):
        slots.put(i)

    def one(item: tuple[str, Path]) -> dict:
        student, path = item
        folder = out / "learners" / _safe_id(student)
        fingerprint = _fingerprint(grader, path)
        previous = folder / "result.json"
        if previous.exists():
            try:
                report = json.loads(previous.read_text(encoding="utf-8"))
                if report.get("fingerprint") == fingerprint:
                    return report
            except ValueError:
                pass  # a damaged result is simply graded again
        worker = slots.get()
        try:
            report = grader.grade(path, student=student, hide=hide, worker=worker)
        finally:
            slots.put(worker)
        report.update(fingerprint=fingerprint, graded_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        write_atomic(folder / "feedback.md", feedback_markdown(report))
        write_atomic(folder / "feedback.html", feedback_html(report))
        write_atomic(previous, json.dumps(report, indent=1))  # last: its presence means "done"
        return report

    with ThreadPoolExecutor(max_workers=workers) as pool:
        reports = list(tqdm(pool.map(one, submissions), total=len(submissions), desc="grading", disable=not progress))
    assignment = f"chapter {grader.chapter}"
    write_atomic(out / "grades.csv", gradebook_csv(reports, assignment))
    write_atomic(out / "summary.md", summary_markdown(reports, assignment))
    return reports
