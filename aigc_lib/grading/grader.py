"""Grade one submission: run the learner's cells in the sandbox, judge the outcomes here.

The grader process holds the references and the hidden cases' expected values; the sandbox only
ever receives the learner's own code and the case inputs. A sandbox that dies (time, memory,
`os._exit`) is restarted without the cell or call that killed it, so a crash costs only the
exercises it touches.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aigc_lib
from aigc_lib.exercises import Exercise, exercises_for
from aigc_lib.exercises.core import CaseResult, Raised, judge
from aigc_lib.grading.isolate import (
    Limits,
    SandboxRun,
    decode_tensors,
    encode_inputs,
    isolation_level,
    run_sandbox,
)
from aigc_lib.grading.submission import (
    UnreadableSubmission,
    learner_cells,
    read_cells,
    solution_ids,
)
from aigc_lib.notebooks import ROOT, SOLUTIONS

# What a learner's solution cell may rely on: the grader runs only solution cells, not the notebook.
PREAMBLE = "import math\nimport random\n\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"


def protected_paths(*extra: Path | None) -> list[Path]:
    """Hidden from the sandbox: the library (references, hidden cases), solutions, tests, git history."""
    package = Path(aigc_lib.__file__).resolve().parent
    paths = [package, ROOT / "solutions", ROOT / "tests", ROOT / ".git", *(p for p in extra if p is not None)]
    return sorted({p.resolve() for p in paths})


def decode(meta: Any, tensor: Any) -> Any:
    """Rebuild a learner's outcome from the sandbox's plain data; anything odd becomes a named type."""
    if not isinstance(meta, dict):
        return Raised("GradingError", "malformed result")
    kind = meta.get("kind")
    if kind in ("tensor", "tuple of tensors", "list of tensors") and isinstance(tensor, str):
        value = decode_tensors(tensor, kind)
        return value if value is not None else Raised("GradingError", "the returned tensor could not be read")
    if kind == "raised":
        return Raised(str(meta.get("type"))[:80], str(meta.get("message", ""))[:300])
    if kind in ("float", "int", "str") and type(meta.get("value")).__name__ == kind:
        return meta["value"]
    # an instance of an empty class bearing the returned type's name, so feedback can name it
    return type(str(meta.get("type", "object"))[:80], (), {})()


def _crash_reason(run: SandboxRun, limits: Limits) -> str:
    if run.timed_out:
        return f"exceeded the {limits.wall_seconds:g} s time limit"
    rc = run.returncode
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if name == "SIGXCPU":
            return "exceeded the CPU time limit"
        return f"was killed by {name} (memory or process limit?)"
    return f"exited with code {rc}"


@dataclass
class Grader:
    """Grades submissions of one chapter. Create once per class: expected values are computed once."""

    chapter: str
    limits: Limits = field(default_factory=Limits)
    hidden_dir: Path | None = None  # instructor-private hidden cases (chNN.py files), outside the repo
    source: Path | None = None  # the authored notebook whose grade_ids locate solution cells
    max_attempts: int = 8

    def __post_init__(self) -> None:
        self.exercises: list[Exercise] = list(exercises_for(self.chapter, self.hidden_dir).values())
        if self.source is None:
            found = sorted(SOLUTIONS.glob(f"{self.chapter}_*.ipynb"))
            self.source = found[0] if found else None
        self.ids = solution_ids(read_cells(self.source)) if self.source is not None else {}
        # every visible case runs before any hidden one: a learner function cannot stash a hidden
        # input and show it in a visible case's error message
        numbered = [(f"{ex.key}/{i}", ex, case, i >= len(ex.cases)) for ex in self.exercises
                    for i, case in enumerate(ex.all_cases())]
        self.slots = [(slot, ex, case) for slot, ex, case, hidden in sorted(numbered, key=lambda s: s[3])]
        self._expected: dict[str, Any] = {}
        self._inputs = {slot: encode_inputs(case.inputs()) for slot, _, case in self.slots}

    @property
    def max_score(self) -> float:
        return sum(ex.points for ex in self.exercises)

    def fingerprint(self) -> str:
        """Changes whenever the grade of an unchanged submission could change."""
        parts = [aigc_lib.__version__, self.chapter, repr(self.limits),
                 *(f"{slot}:{case.points}:{case.rtol}:{case.atol}" for slot, _, case in self.slots)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def expected(self, slot: str, exercise: Exercise, case) -> Any:
        if slot not in self._expected:
            self._expected[slot] = exercise.reference(**case.inputs())
        return self._expected[slot]

    def run(self, path: Path, *, hide: list[Path], worker: int = 0) -> tuple[dict[str, Any], dict[str, str], list[str]]:
        """Outcome per slot, error per learner cell, and notes on restarts."""
        cells = learner_cells(read_cells(path), self.exercises, self.ids)
        outcomes: dict[str, Any] = {}
        cell_errors: dict[str, str] = {}
        skipped: set[str] = set()
        notes: list[str] = []
        by_slot = {slot: ex for slot, ex, _ in self.slots}
        for _ in range(self.max_attempts):
            pending = [slot for slot, _, _ in self.slots if slot not in outcomes]
            plan = {"preamble": PREAMBLE, "cells": [asdict(c) for c in cells if c.id not in skipped],
                    "calls": [{"slot": s, "function": by_slot[s].function, "inputs": self._inputs[s]} for s in pending]}
            run = run_sandbox(plan, self.limits, hide=hide, slot=worker)
            cell = call = None
            for event in run.events:
                kind = event.get("event")
                if kind == "cell_start":
                    cell = event.get("id")
                elif kind == "cell_done":
                    cell = None
                    if event.get("error") and event.get("id") in {c.id for c in cells}:
                        cell_errors[event["id"]] = str(event["error"])[:300]
                elif kind == "call_start":
                    call = event.get("slot")
                elif kind == "result" and event.get("slot") in pending and event["slot"] not in outcomes:
                    outcomes[event["slot"]] = decode(event.get("meta"), event.get("tensor"))
                    call = None
            pending = [slot for slot in pending if slot not in outcomes]
            if run.finished or not pending:
                break
            reason = _crash_reason(run, self.limits)
            if call in pending:
                outcomes[call] = Raised("Crashed", f"the process {reason} during this test")
                notes.append(f"{call}: the process {reason}; restarted without this test")
            elif cell is not None and cell not in skipped:
                skipped.add(cell)
                cell_errors[cell] = f"the process {reason} in this cell; it was skipped on restart"
                notes.append(f"cell {cell}: the process {reason}; restarted without this cell")
            else:
                notes.append(f"the process {reason} before running any cell: {run.stderr_tail[-300:]}")
                break
        for slot, _, _ in self.slots:
            outcomes.setdefault(slot, Raised("NotRun", "grading stopped before this test ran"))
        return outcomes, cell_errors, notes

    def grade(self, path: Path, *, student: str | None = None, hide: list[Path] | None = None,
              worker: int = 0) -> dict:
        """The full report of one submission (the file is only read)."""
        path = Path(path)
        report: dict[str, Any] = {"student": student or path.stem, "notebook": str(path), "chapter": self.chapter,
                                  "max_score": self.max_score, "isolation": isolation_level(), "status": "graded",
                                  "reason": "", "cell_errors": {}, "notes": []}
        try:
            outcomes, report["cell_errors"], report["notes"] = self.run(path, hide=hide or protected_paths(path.parent),
                                                                        worker=worker)
        except FileNotFoundError:
            report.update(status="missing", reason="no notebook was submitted")
            outcomes = {slot: Raised("Missing", "no notebook") for slot, _, _ in self.slots}
        except (UnreadableSubmission, OSError) as err:
            report.update(status="unreadable", reason=str(err))
            outcomes = {slot: Raised("Unreadable", str(err)) for slot, _, _ in self.slots}
        exercises = []
        for ex in self.exercises:
            results: list[CaseResult] = []
            for i, case in enumerate(ex.all_cases()):
                slot = f"{ex.key}/{i}"
                results.append(judge(case, outcomes[slot], self.expected(slot, ex, case), hidden=i >= len(ex.cases)))
            exercises.append({"key": ex.key, "function": ex.function, "hint": ex.hint,
                              "points": sum(r.points for r in results), "max_points": ex.points,
                              "cases": [public_case(r) for r in results]})
        report["exercises"] = exercises
        report["score"] = sum(e["points"] for e in exercises)
        return report


def public_case(r: CaseResult) -> dict:
    """A case result as a learner may see it: hidden cases keep their verdict, not their values."""
    d = asdict(r)
    if r.hidden:
        d["message"] = "" if r.passed else f"hidden test: {r.status}"
        d["hint"] = ""
    return d
