"""Grade one submission: run the learner's cells in the sandbox, judge the outcomes here.

The grader process holds the references and every case; the sandbox receives the learner's own
code, then one call's inputs at a time. Each returned value is judged as soon as it arrives and
only the verdict is kept, so the grader's memory does not grow with what learners return. A step
that crashes or runs past a limit costs only the exercises it touches: the sandbox restarts
without it.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aigc_lib
from aigc_lib.exercises import Exercise, exercises_for
from aigc_lib.exercises.core import CaseResult, Raised, changed_input, judge
from aigc_lib.grading import sandbox as wire
from aigc_lib.grading.isolate import (
    Limits,
    SandboxBroken,
    SandboxUid,
    exposed_paths,
    guarantees,
    host_survey,
    isolation_level,
    run_sandbox,
)
from aigc_lib.grading.submission import (
    MAX_DEPTH,
    UnreadableSubmission,
    learner_cells,
    read_cells,
    solution_ids,
)
from aigc_lib.paths import ROOT, SOLUTIONS

# What a learner's solution cell may rely on: the grader runs only solution cells, not the notebook.
PREAMBLE = "import math\nimport random\n\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"

STOPPED = {
    "cpu": ("TimeLimit", "ran past its {cpu:g} s of CPU time"),
    "idle": ("TimeLimit", "slept, blocked or stopped for more than {idle:g} s"),
    "wall": ("TimeLimit", "ran past the {wall:g} s wall-clock limit"),
    "died": ("Crashed", "the process died (memory or process limit, a signal, os._exit)"),
    "protocol": ("Crashed", "the process wrote into the grader's channel"),
}


def protected_paths(*extra: Path | None) -> list[Path]:
    """What learner code must never read: the library (references, hidden cases), solutions,
    tests, git history, and whatever the caller adds (hidden folder, reports, submissions)."""
    package = Path(aigc_lib.__file__).resolve().parent
    paths = [package, ROOT / "solutions", ROOT / "tests", ROOT / ".git", *(p for p in extra if p is not None)]
    return sorted({Path(p).resolve() for p in paths})


def decode(event: dict, blob: bytes) -> Any:
    """A learner's outcome from the sandbox's plain data (never trusted beyond its values)."""
    error = event.get("error")
    if isinstance(error, dict):
        return Raised(wire.printable(error.get("type"), 80), wire.printable(error.get("message", ""), 300))
    try:
        value = wire.unpack(event.get("value"), blob)
    except (wire.WireError, TypeError, ValueError, RuntimeError, KeyError):
        return Raised("GradingError", "the returned value could not be read")
    if isinstance(value, wire.Other):  # an object of a bare class named like the returned type
        try:
            return type(value.type_name or "object", (), {})()
        except (TypeError, ValueError):
            return object()
    return value


def _nbytes(value: Any) -> int:
    if hasattr(value, "element_size"):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 64


@dataclass
class Grader:
    """Grades submissions of one chapter. Create once per class: expected values are computed once."""

    chapter: str
    limits: Limits = field(default_factory=Limits)
    hidden_dir: Path | None = None  # instructor-private hidden cases (chNN.py files), outside the repo
    source: Path | None = None  # the authored notebook whose grade_ids locate solution cells
    level: str | None = None  # isolation level; None: the strongest this host allows
    insecure: bool = False  # allow level "none" (learner code runs as you): your own notebook only

    def __post_init__(self) -> None:
        self.level = self.level or isolation_level()
        if self.level == "none" and not self.insecure:
            raise SandboxBroken(
                "refusing to grade: without root on Linux, learner code would run as you, with your files "
                "and network. Grade as root (namespaces isolation), or pass --insecure to check your own notebook."
            )
        self.exercises: list[Exercise] = list(exercises_for(self.chapter, self.hidden_dir).values())
        if self.source is None:
            found = sorted(SOLUTIONS.glob(f"{self.chapter}_*.ipynb"))
            self.source = found[0] if found else None
        self.ids = solution_ids(read_cells(self.source)) if self.source is not None else {}
        # every visible case runs before any hidden one: a learner function cannot stash a hidden
        # input and show it in a visible case's error message
        numbered = [
            (f"{ex.key}/{i}", ex, case, i >= len(ex.cases))
            for ex in self.exercises
            for i, case in enumerate(ex.all_cases())
        ]
        self.slots = [(slot, ex, case) for slot, ex, case, hidden in sorted(numbered, key=lambda s: s[3])]
        self.hidden = {slot for slot, _, _, hidden in numbered if hidden}
        self.expected = {slot: ex.reference(**case.inputs()) for slot, ex, case in self.slots}
        calls, blob = [], bytearray()
        for slot, ex, case in self.slots:
            own = bytearray()
            tree = wire.pack(case.inputs(), own, 1 << 30)
            calls.append(
                {
                    "slot": slot,
                    "function": ex.function,
                    "inputs": tree,
                    "blob": [len(blob), len(blob) + len(own)],
                    "seed": zlib.crc32(slot.encode()),
                    "max_bytes": 4 * _nbytes(self.expected[slot]) + len(own) + (1 << 20),
                }
            )
            blob += own
        self.calls, self.blob = calls, bytes(blob)

    @property
    def max_score(self) -> float:
        return sum(ex.points for ex in self.exercises)

    def fingerprint(self) -> str:
        """Changes whenever the grade of an unchanged submission could change."""
        parts = [
            aigc_lib.__version__,
            self.chapter,
            repr(self.limits),
            self.level,
            *(f"{slot}:{case.points}:{case.rtol}:{case.atol}" for slot, _, case in self.slots),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def run(self, cells: list, uid: SandboxUid) -> tuple[dict[str, CaseResult], dict[str, str], list[str]]:
        """A verdict per slot, an error per learner cell, notes on restarts. Raises SandboxBroken
        when the sandbox itself failed."""
        cases = {slot: (ex, case) for slot, ex, case in self.slots}
        ids = {c.id for c in cells}
        verdicts: dict[str, CaseResult] = {}
        cell_errors: dict[str, str] = {}
        notes: list[str] = []

        def stopped(kind: str, limits: dict) -> tuple[str, str]:
            name, text = STOPPED.get(kind, ("Crashed", "the process stopped"))
            return name, text.format(**limits)

        def on_event(event: dict, blob: bytes) -> None:
            kind = event.get("event")
            if kind == "cell" and event.get("id") in ids:
                cell = event["id"]
                if event.get("stopped"):
                    name, text = stopped(event["stopped"], self.limits.step(self.limits.cell_seconds))
                    cell_errors[cell] = f"{name}: {text}; the cell was skipped on restart"
                elif isinstance(event.get("error"), dict) and cell not in cell_errors:
                    error = event["error"]
                    cell_errors[cell] = (
                        f"{wire.printable(error.get('type'), 80)}: {wire.printable(error.get('message', ''), 300)}"
                    )
            elif kind == "result" and event.get("slot") in cases and event["slot"] not in verdicts:
                slot = event["slot"]
                if event.get("stopped"):
                    name, text = stopped(event["stopped"], self.limits.step(self.limits.call_seconds))
                    outcome = Raised(name, text)
                    notes.append(f"{slot}: {text}; restarted without this test")
                    changed = ""
                else:
                    outcome = decode(event, blob)
                    changed = self._changed(cases[slot][1], event, blob)
                verdicts[slot] = self._judge(slot, *cases[slot], outcome, changed)
            elif kind == "gave_up":
                notes.append(str(event.get("message"))[:200])

        plan = {"preamble": PREAMBLE, "cells": [asdict(c) for c in cells], "calls": self.calls}
        run = run_sandbox(plan, self.blob, self.limits, uid, on_event, level=self.level)
        if run.broken:
            raise SandboxBroken(run.broken)
        for slot, ex, case in self.slots:
            if slot not in verdicts:
                verdicts[slot] = self._judge(slot, ex, case, Raised("NotRun", "grading stopped before this test ran"))
        return verdicts, cell_errors, notes

    @staticmethod
    def _changed(case, event: dict, blob: bytes) -> str:
        """The input the learner's function changed in place ("" if none), as `run_cases` reports it."""
        if event.get("error") is not None or event.get("inputs") is None:
            return ""
        after = decode({"value": event["inputs"]}, blob)
        return changed_input(case.inputs(), after) if type(after) is dict else ""

    def _judge(self, slot: str, ex: Exercise, case, outcome: Any, changed: str = "") -> CaseResult:
        hidden = slot in self.hidden
        try:
            return judge(case, outcome, self.expected[slot], hidden=hidden, changed=changed)
        except Exception:  # noqa: BLE001 - an outcome we cannot judge earns nothing and stops nothing
            return CaseResult(
                case.name, 0.0, case.points, "error", "the grader could not judge this value", case.hint, hidden
            )

    def grade(self, path: Path, *, student: str | None = None, uid: SandboxUid | None = None) -> dict:
        """The full report of one submission (the file is only read). Raises SandboxBroken on an
        infrastructure failure: that must never become a learner's score."""
        path = Path(path)
        report: dict[str, Any] = {
            "student": wire.printable(student or path.stem, 200),
            "chapter": self.chapter,
            "notebook": wire.printable(str(path), 500),
            "max_score": self.max_score,
            "isolation": self.level,
            "guarantees": guarantees(self.level),
            "status": "graded",
            "reason": "",
            "cell_errors": {},
            "notes": [],
        }
        own = uid is None
        uid = uid or SandboxUid()
        try:
            cells = learner_cells(read_cells(path), self.exercises, self.ids)
            verdicts, report["cell_errors"], report["notes"] = self.run(cells, uid)
        except FileNotFoundError:
            report.update(status="missing", reason=f"no notebook was submitted (none found within {MAX_DEPTH} folders)")
            verdicts = self._all(Raised("Missing", "no notebook"))
        except UnreadableSubmission as err:
            report.update(status="unreadable", reason=wire.printable(str(err), 300))
            verdicts = self._all(Raised("Unreadable", report["reason"]))
        finally:
            if own:
                uid.release()
        exercises = []
        for ex in self.exercises:
            results = [verdicts[f"{ex.key}/{i}"] for i in range(len(ex.all_cases()))]
            exercises.append(
                {
                    "key": ex.key,
                    "function": ex.function,
                    "hint": ex.nudge,  # where to look; never the full recipe (a blank upload would buy it)
                    "points": sum(r.points for r in results),
                    "max_points": ex.points,
                    "cases": [public_case(r) for r in results],
                }
            )
        report["exercises"] = exercises
        report["score"] = sum(e["points"] for e in exercises)
        return report

    def _all(self, outcome: Raised) -> dict[str, CaseResult]:
        return {slot: self._judge(slot, ex, case, outcome) for slot, ex, case in self.slots}

    def self_test(self, uid: SandboxUid, protected: list[Path]) -> None:
        """Prove the sandbox before a class is graded: the course's own solution must get full marks,
        and learner code must reach none of `protected`. Raises SandboxBroken, loudly, otherwise."""
        if self.level == "limits-only":
            copies = [
                Path(c)
                for c in host_survey()[1]
                if not any(p == Path(c).resolve() or p in Path(c).resolve().parents for p in protected)
            ]
            exposed = exposed_paths(protected, uid.uid) + copies
            if exposed:
                listing = " ".join(f"'{p}'" for p in exposed)
                raise SandboxBroken(
                    f"refusing to grade: isolation is limits-only (no namespaces), and learner code (uid {uid.uid}) "
                    f"could read: {listing}. Make them unreadable to others first, e.g. chmod -R o-rwx {listing}"
                )
        if self.source is None:
            raise SandboxBroken(f"no solutions notebook for chapter {self.chapter}: the sandbox cannot be proven")
        probe = (
            "import os\n_seen = [p for p in %r if os.path.exists(p) and os.access(p, os.R_OK)]\n"
            "if _seen:\n    raise RuntimeError('VISIBLE ' + repr(_seen))\n"
        ) % [str(p) for p in protected]
        cells = learner_cells(read_cells(self.source), self.exercises, self.ids)
        cells.append(type(cells[0])("aigc-canary-probe", probe) if cells else None)
        verdicts, cell_errors, notes = self.run([c for c in cells if c is not None], uid)
        if self.level != "none" and "aigc-canary-probe" in cell_errors:
            raise SandboxBroken(
                f"refusing to grade: learner code could see protected paths: {cell_errors['aigc-canary-probe']}"
            )
        lost = [f"{slot}: {r.status} {r.message}" for slot, r in verdicts.items() if not r.passed]
        if lost or notes:
            raise SandboxBroken(
                f"refusing to grade: the course's own solution ({self.source.name}) did not get full marks in the "
                f"sandbox (isolation {self.level}), so learners' scores would be wrong. First problems: "
                + "; ".join([*notes, *lost, *(f"cell {k}: {v}" for k, v in cell_errors.items())][:4])
            )


def public_case(r: CaseResult) -> dict:
    """A case result as a learner may see it: hidden cases keep their verdict, not their values."""
    d = asdict(r)
    if r.hidden:
        d["message"] = "" if r.passed else f"hidden test: {r.status}"
        d["hint"] = ""
    return d
