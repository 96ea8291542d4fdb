"""Grade a whole class: find each learner's notebook, prove the sandbox, grade in parallel, resume.

Layout of `out/`:
    learners/<id>/result.json   full report, signed (reused by a re-run only if its signature and
                                fingerprint match: nothing else can plant or alter a grade)
    learners/<id>/feedback.md   what the learner sees (also feedback.html)
    grades.csv                  the gradebook
    summary.md                  who was graded, who could not be and why, who crashed
    .grader-key                 the signing key (readable by the grading user only)

Nothing one submission contains or does can stop the class: each learner is graded inside an
error boundary, and an infrastructure failure is reported as such, never as a score.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from aigc_lib.grading.grader import Grader, protected_paths
from aigc_lib.grading.isolate import SandboxBroken, SandboxUid, writable_by_others
from aigc_lib.grading.reports import (
    feedback_html,
    feedback_markdown,
    gradebook_csv,
    summary_markdown,
    write_atomic,
)
from aigc_lib.grading.sandbox import printable
from aigc_lib.grading.submission import MAX_DEPTH, read_bytes

NOT_FOUND = "MISSING.ipynb"  # a path that does not exist: graded as missing
MAX_ENTRIES = 2000  # entries looked at per learner folder
JUNK = {".ipynb_checkpoints", ".DS_Store", "__MACOSX", ".git", "Thumbs.db"}  # never a learner or their notebook


def _junk(name: str) -> bool:
    return name in JUNK or name.startswith("._")  # ._x: macOS resource forks in zips


def _display(name: str) -> str:
    """A folder or file name as text: undecodable bytes (a zip from another locale) become '?'."""
    return printable(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), 200)


def _find_notebook(folder: Path) -> Path | None:
    """The first notebook below `folder` (breadth first, bounded, links never followed)."""
    level, seen = [folder], 0
    for _ in range(MAX_DEPTH):
        found, below = [], []
        for directory in level:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > MAX_ENTRIES:
                    return None
                if _junk(entry.name) or entry.is_symlink():
                    if entry.name.endswith(".ipynb") and entry.is_symlink():
                        found.append(Path(entry.path))  # read_bytes refuses it, with a reason
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif entry.name.endswith(".ipynb"):
                    found.append(Path(entry.path))
        if found:
            return found[0]
        level = below
    return None


def find_submissions(paths: list[Path]) -> list[tuple[str, Path]]:
    """(learner id, notebook) pairs: a folder holding one sub-folder or one .ipynb per learner, or files."""
    found: list[tuple[str, Path]] = []
    for path in map(Path, paths):
        if path.is_file() or path.is_symlink() and path.suffix == ".ipynb":
            found.append((_display(path.stem), path))
        elif path.is_dir():
            entries = sorted((e for e in os.scandir(path) if not _junk(e.name)), key=lambda e: e.name)
            flat = not any(e.is_dir(follow_symlinks=False) for e in entries)
            for entry in entries:
                name = Path(entry.name)
                if entry.is_dir(follow_symlinks=False) and not flat:
                    notebook = _find_notebook(Path(entry.path))
                    found.append((_display(entry.name), notebook or Path(entry.path) / NOT_FOUND))
                elif name.suffix == ".ipynb" or entry.is_symlink() and not flat:
                    found.append((_display(name.stem), Path(entry.path)))
        else:
            raise FileNotFoundError(f"submissions: no such file or folder {path}")
    return _distinct(found)


def _distinct(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Ids that collide (alice/ beside alice.ipynb; names differing only in unprintable bytes)
    are told apart by their full entry name, then by a number: nobody is dropped, nothing stops."""
    ids = [i for i, _ in found]
    taken: set[str] = set()
    out = []
    for student, path in found:
        if ids.count(student) > 1:
            entry = path if path.suffix == ".ipynb" and path.parent.name != student else path.parent
            student = f"{student} ({_display(entry.name)})"
        base, n = student, 2
        while student in taken:
            student, n = f"{base} #{n}", n + 1
        taken.add(student)
        out.append((student, path))
    return out


def safe_id(student: str) -> str:
    """An injective folder name for a learner id: kept as is when it is plain, else made plain
    and suffixed with '+' and a hash of the id ('+' never occurs in a plain name)."""
    if re.fullmatch(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,99}", student):
        return student
    plain = re.sub(r"[^A-Za-z0-9_.@-]", "_", student)[:60].lstrip(".") or "_"
    return f"{plain}+{hashlib.sha256(student.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def _fingerprint(grader: Grader, path: Path) -> str:
    try:
        digest = hashlib.sha256(read_bytes(path)).hexdigest()[:16]
    except Exception:  # noqa: BLE001 - missing or unreadable: grading says why
        digest = "unreadable"
    return f"{grader.fingerprint()}-{digest}"


def _key(out: Path) -> bytes:
    """The class's signing key: made once, readable by the grading user only."""
    path = out / ".grader-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise SandboxBroken(f"{path} must be a file of the grading user with mode 0600")
    return read_bytes(path, 1024)


def _sign(key: bytes, report: dict) -> str:
    body = json.dumps({k: v for k, v in report.items() if k != "signature"}, sort_keys=True)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _previous(path: Path, key: bytes, fingerprint: str) -> dict | None:
    try:
        report = json.loads(read_bytes(path, 16 << 20))
    except Exception:  # noqa: BLE001 - missing, damaged or planted: graded again
        return None
    if (
        isinstance(report, dict)
        and report.get("fingerprint") == fingerprint
        and hmac.compare_digest(str(report.get("signature", "")), _sign(key, report))
    ):
        return report
    return None


def _failed(grader: Grader, student: str, path: Path, err: BaseException) -> dict:
    """The report of a learner the grader could not grade: not a score, and not saved, so a re-run retries."""
    reason = f"grader error, not graded (re-run to retry): {type(err).__name__}: {printable(str(err), 300)}"
    return {
        "student": student,
        "chapter": grader.chapter,
        "notebook": printable(str(path), 500),
        "max_score": grader.max_score,
        "isolation": grader.level,
        "guarantees": [],
        "status": "error",
        "reason": reason,
        "cell_errors": {},
        "notes": [],
        "score": 0,
        "exercises": [
            {"key": e.key, "function": e.function, "hint": e.nudge, "points": 0, "max_points": e.points, "cases": []}
            for e in grader.exercises
        ],
    }


def grade_class(
    grader: Grader, submissions: list[tuple[str, Path]], out: Path, *, workers: int = 2, progress: bool = True
) -> list[dict]:
    """Prove the sandbox, grade every submission (reusing finished, signed results), write all reports."""
    out = Path(out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new reports folder is private
    if writable_by_others(out):
        raise SandboxBroken(f"{out} is writable by others: reports there could be altered")
    key = _key(out)
    # a learner may read their own notebook; with a class, no one else's
    others = {p.parent for _, p in submissions} if len(submissions) > 1 else set()
    protected = protected_paths(out, grader.hidden_dir, *others)
    SandboxUid.sweep()  # what a killed grader left behind
    uids: queue.Queue[SandboxUid] = queue.Queue()
    held = [SandboxUid() for _ in range(max(1, workers))]
    for uid in held:
        uids.put(uid)
    try:
        grader.self_test(held[0], protected)

        def one(item: tuple[str, Path]) -> dict:
            student, path = item
            folder = out / "learners" / safe_id(student)
            fingerprint = _fingerprint(grader, path)
            previous = _previous(folder / "result.json", key, fingerprint)
            if previous is not None:
                return previous
            uid = uids.get()
            try:
                report = grader.grade(path, student=student, uid=uid)
            except Exception as err:  # noqa: BLE001 - the per-learner error boundary
                return _failed(grader, student, path, err)
            finally:
                uids.put(uid)
            report.update(fingerprint=fingerprint, graded_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            report["signature"] = _sign(key, report)
            try:
                write_atomic(folder / "feedback.md", feedback_markdown(report))
                write_atomic(folder / "feedback.html", feedback_html(report))
                write_atomic(folder / "result.json", json.dumps(report, indent=1))  # last: its presence means "done"
            except Exception as err:  # noqa: BLE001
                return _failed(grader, student, path, err)
            return report

        with ThreadPoolExecutor(max_workers=workers) as pool:
            reports = list(
                tqdm(pool.map(one, submissions), total=len(submissions), desc="grading", disable=not progress)
            )
    finally:
        for uid in held:
            uid.release()
    assignment = f"chapter {grader.chapter}"
    write_atomic(out / "grades.csv", gradebook_csv(reports, assignment))
    write_atomic(out / "summary.md", summary_markdown(reports, assignment))
    return reports
