"""Exercise test cases as data, a strict comparator, and the in-notebook `check`.

One definition serves both the learner's check cell and the grader: an `Exercise` names the
function the learner writes, the library's reference implementation, and its `Case`s (inputs
made from a seed, points, tolerance, hint). Hidden cases live in `aigc_lib.exercises.hidden`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

STRICT_ENV = "AIGC_STRICT"  # "1": a failing check raises (CI on solutions/, never for learners)


class ExerciseCheckFailed(AssertionError):
    """Raised by `check` in strict mode so a broken solution cannot pass unnoticed."""


@dataclass(frozen=True)
class Case:
    """One test case: `inputs()` builds fresh keyword arguments (deterministic) on every call."""

    name: str
    inputs: Callable[[], dict[str, Any]]
    points: float = 1.0
    rtol: float = 1e-5
    atol: float = 1e-6
    hint: str = ""


@dataclass(frozen=True)
class Exercise:
    key: str  # "00.count_bigrams": chapter number, then the function's name
    function: str  # the name the learner's notebook defines
    reference: Callable[..., Any]  # the library's implementation, tested on its own
    cases: tuple[Case, ...]
    hint: str = ""
    hidden: tuple[Case, ...] = field(default=())

    @property
    def chapter(self) -> str:
        return self.key.split(".", 1)[0]

    def all_cases(self, hidden: bool = True) -> tuple[Case, ...]:
        return self.cases + (self.hidden if hidden else ())

    @property
    def points(self) -> float:
        return sum(c.points for c in self.all_cases())


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str  # empty when ok


def _describe(x: Any) -> str:
    if type(x) is torch.Tensor:
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if type(x) in (tuple, list):
        return f"{type(x).__name__} of {len(x)} items"
    return f"{type(x).__name__}"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _values(t: torch.Tensor) -> str:
    return "[" + ", ".join(_fmt(v) for v in t.flatten().tolist()) + "]"


def compare(got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> Verdict:
    """Strict comparison: exact type, then shape and dtype, then values within tolerance.

    Types are tested with `type(x) is ...`, never `==`, so an object whose `__eq__` always
    returns True (or a tensor subclass) cannot pass.
    """
    if type(expected) is torch.Tensor:
        if type(got) is not torch.Tensor:
            return Verdict(False, f"expected a torch.Tensor, got {_describe(got)}")
        if got.shape != expected.shape:
            return Verdict(False, f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
        if got.dtype != expected.dtype:
            return Verdict(False, f"expected dtype {expected.dtype}, got {got.dtype}")
        got, expected = got.detach().cpu(), expected.detach().cpu()
        if not expected.is_floating_point():
            wrong = (got != expected).nonzero()
            if len(wrong) == 0:
                return Verdict(True, "")
            idx = tuple(wrong[0].tolist())
            return Verdict(
                False,
                f"{len(wrong)} of {expected.numel()} entries differ; first at index {idx}: "
                f"expected {expected[idx].item()}, got {got[idx].item()}",
            )
        g, e = got.double(), expected.double()
        if not torch.equal(torch.isnan(g), torch.isnan(e)):
            return Verdict(False, "NaN where the expected value is a number (or the reverse)")
        close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if bool(close.all()):
            return Verdict(True, "")
        full = f"\n         expected {_values(e)}\n         got      {_values(g)}" if e.numel() <= 6 else ""
        err = (g - e).abs().nan_to_num(0.0)
        idx = tuple(torch.nonzero(err == err.max())[0].tolist())
        rel = (err / e.abs().clamp_min(1e-12)).nan_to_num(0.0)
        return Verdict(
            False,
            f"{int((~close).sum())} of {e.numel()} values are off; the worst at index {idx}: "
            f"expected {_fmt(e[idx].item())}, got {_fmt(g[idx].item())} "
            f"(abs error {_fmt(err[idx].item())}, rel error {_fmt(rel[idx].item())}; "
            f"tolerance rtol={rtol:g}, atol={atol:g}){full}",
        )
    if type(expected) in (tuple, list):
        if type(got) is not type(expected):
            return Verdict(False, f"expected a {type(expected).__name__} of {len(expected)} items, got {_describe(got)}")
        if len(got) != len(expected):
            return Verdict(False, f"expected {len(expected)} items, got {len(got)}")
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            verdict = compare(g, e, rtol=rtol, atol=atol)
            if not verdict.ok:
                return Verdict(False, f"item {i}: {verdict.message}")
        return Verdict(True, "")
    if type(expected) in (float, int):
        if type(got) not in (float, int):
            return Verdict(False, f"expected a Python number, got {_describe(got)}")
        if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return Verdict(True, "")
        return Verdict(False, f"expected {_fmt(expected)}, got {_fmt(got)} (abs error {_fmt(abs(got - expected))})")
    if type(expected) is str:
        if type(got) is not str:
            return Verdict(False, f"expected a str, got {_describe(got)}")
        return Verdict(got == expected, "" if got == expected else f"expected {expected!r}, got {got!r}")
    raise TypeError(f"compare: unsupported expected type {type(expected).__name__}")


@dataclass(frozen=True)
class CaseResult:
    case: str
    points: float
    max_points: float
    status: str  # "pass" | "fail" | "error" | "not implemented"
    message: str = ""
    hint: str = ""
    hidden: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class Raised:
    """What a learner's function raised, as plain data (it can cross a process boundary)."""

    type_name: str
    message: str


def judge(case: Case, outcome: Any, expected: Any, *, hidden: bool = False) -> CaseResult:
    """Score one case from the learner's `outcome`: a returned value, or `Raised`."""
    if isinstance(outcome, Raised):
        if outcome.type_name == "NotImplementedError":
            return CaseResult(case.name, 0.0, case.points, "not implemented", hidden=hidden)
        msg = f"raised {outcome.type_name}: {outcome.message}"
        return CaseResult(case.name, 0.0, case.points, "error", msg, case.hint, hidden)
    verdict = compare(outcome, expected, rtol=case.rtol, atol=case.atol)
    if verdict.ok:
        return CaseResult(case.name, case.points, case.points, "pass", hidden=hidden)
    return CaseResult(case.name, 0.0, case.points, "fail", verdict.message, case.hint, hidden)


def call_safely(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """The function's return value, or `Raised` describing its exception (Ctrl-C still interrupts)."""
    try:
        return fn(**kwargs)
    except Exception as err:  # noqa: BLE001 - learner code may raise anything
        return Raised(type(err).__name__, str(err)[:500])


def run_cases(exercise: Exercise, fn: Callable[..., Any], *, hidden: bool = False) -> list[CaseResult]:
    cases = exercise.hidden if hidden else exercise.cases
    return [judge(c, call_safely(fn, c.inputs()), exercise.reference(**c.inputs()), hidden=hidden) for c in cases]


def format_results(exercise: Exercise, results: list[CaseResult], *, reveal: bool = True) -> str:
    """Readable feedback. With `reveal=False` (hidden cases) no values or messages are shown."""
    earned = sum(r.points for r in results)
    total = sum(r.max_points for r in results)
    kind = "hidden" if results and results[0].hidden else "visible"
    lines = [f"{exercise.function}: {earned:g}/{total:g} points on {len(results)} {kind} test(s)"]
    if results and all(r.status == "not implemented" for r in results):
        lines.append(
            f"  ... not implemented yet (NotImplementedError). Fill in `{exercise.function}` and re-run "
            "this cell; the notebook carries on with the library's implementation meanwhile."
        )
        return "\n".join(lines)
    marks = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "not implemented": "TODO"}
    previous = None
    for r in results:
        lines.append(f"  [{marks[r.status]}] {r.case}")
        if not r.passed and reveal:
            lines.append("         (same as above)" if r.message == previous else f"         {r.message}")
            previous = r.message
            if r.hint:
                lines.append(f"         hint: {r.hint}")
    if any(not r.passed for r in results):
        if not reveal:
            lines.append("  (hidden tests do not show their inputs or expected values)")
        if exercise.hint:
            lines.append(f"  hint: {exercise.hint}")
    return "\n".join(lines)


def _mode_from_environment() -> str:
    nbgrader = os.environ.get("NBGRADER_EXECUTION", "")
    if nbgrader in ("autograde", "validate"):
        return nbgrader
    return "strict" if os.environ.get(STRICT_ENV, "") == "1" else "learner"


_MODE = _mode_from_environment()  # read once, when aigc_lib is imported: before any learner code runs


def grading_mode() -> str:
    """'learner', 'strict' (CI), 'autograde' or 'validate' (nbgrader), as at import time."""
    return _MODE


def strict_mode() -> bool:
    return _MODE == "strict"


@contextlib.contextmanager
def quiet_stderr():
    """No warnings or stderr while cases run (nbgrader scores a test cell that writes to stderr 0)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def hidden_summary(exercise: Exercise) -> str:
    """What the learner may know of the hidden cases: their points and what each checks."""
    visible = sum(c.points for c in exercise.cases)
    hidden = sum(c.points for c in exercise.hidden)
    kinds = "; ".join(c.name.removeprefix("hidden: ") for c in exercise.hidden)
    return (f"  The grade is out of {visible + hidden:g}: {visible:g} points for these visible tests and "
            f"{hidden:g} for hidden tests that check: {kinds}.")
