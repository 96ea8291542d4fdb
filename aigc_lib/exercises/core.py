"""Exercise test cases as data, a strict comparator, and the in-notebook `check`.

One definition serves both the learner's check cell and the grader: an `Exercise` names the
function the learner writes, the library's reference implementation, and its `Case`s (inputs
made from a seed, points, tolerance, hint). Hidden cases live in `aigc_lib.exercises.hidden`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
    hint: str = ""  # the full recipe: shown from the FULL_HINT_AFTER-th failing check only
    hidden: tuple[Case, ...] = field(default=())
    nudge: str = ""  # where to look, without the answer: shown from the first failing check

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
        if got.layout != torch.strided or got.is_meta:
            kind = "meta (value-less)" if got.is_meta else str(got.layout).removeprefix("torch.")
            return Verdict(False, f"expected an ordinary dense tensor, got a {kind} tensor")
        if got.shape != expected.shape:
            return Verdict(False, f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
        if got.dtype != expected.dtype:
            return Verdict(False, f"expected dtype {expected.dtype}, got {got.dtype}")
        if got.requires_grad and not expected.requires_grad:  # a graph kept alive by every call
            return Verdict(False, "the result still tracks gradients (requires_grad=True): return it .detach()ed")
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
        # a relative error means nothing where the expected value is 0 (and -0 reads as 0)
        rel = f", rel error {_fmt((err[idx] / e[idx].abs()).item())}" if e[idx] != 0 else ""
        expected_value = e[idx].item() + 0.0
        return Verdict(
            False,
            f"{int((~close).sum())} of {e.numel()} values are off; the worst at index {idx}: "
            f"expected {_fmt(expected_value)}, got {_fmt(g[idx].item())} "
            f"(abs error {_fmt(err[idx].item())}{rel}; "
            f"tolerance rtol={rtol:g}, atol={atol:g}){full}",
        )
    if type(expected) in (tuple, list):
        if type(got) is not type(expected):
            return Verdict(
                False, f"expected a {type(expected).__name__} of {len(expected)} items, got {_describe(got)}"
            )
        if len(got) != len(expected):
            return Verdict(False, f"expected {len(expected)} items, got {len(got)}")
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            verdict = compare(g, e, rtol=rtol, atol=atol)
            if not verdict.ok:
                return Verdict(False, f"item {i}: {verdict.message}")
        return Verdict(True, "")
    if type(expected) in (float, int):
        if isinstance(got, np.floating | np.integer):  # a NumPy scalar is a plain number (np.float64 even is a float)
            got = got.item()
        if type(got) not in (float, int):
            convert = isinstance(got, numbers.Real) or (type(got) is torch.Tensor and got.numel() == 1)
            fix = f" ({type(got).__module__}.{type(got).__name__}): convert it with float(...)" if convert else ""
            return Verdict(False, f"expected a Python number, got {_describe(got)}{fix}")
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


def judge(case: Case, outcome: Any, expected: Any, *, hidden: bool = False, changed: str = "") -> CaseResult:
    """Score one case from the learner's `outcome`: a returned value, or `Raised`; `changed` names
    an input the learner's function modified in place (the caller's data would be corrupted)."""
    if isinstance(outcome, Raised):
        if outcome.type_name == "NotImplementedError":
            return CaseResult(case.name, 0.0, case.points, "not implemented", hidden=hidden)
        msg = f"raised {outcome.type_name}: {outcome.message}"
        return CaseResult(case.name, 0.0, case.points, "error", msg, case.hint, hidden)
    if changed:
        msg = (
            f"changed its input `{changed}` in place (e.g. +=, add_, or writing into a slice of it); "
            "compute new tensors and leave the inputs as they were"
        )
        return CaseResult(case.name, 0.0, case.points, "fail", msg, case.hint, hidden)
    try:
        verdict = compare(outcome, expected, rtol=case.rtol, atol=case.atol)
    except Exception as err:  # noqa: BLE001 - an exotic value fails its case, it never stops the notebook
        verdict = Verdict(False, f"the result could not be compared ({type(err).__name__})")
    if verdict.ok:
        return CaseResult(case.name, case.points, case.points, "pass", hidden=hidden)
    return CaseResult(case.name, 0.0, case.points, "fail", verdict.message, case.hint, hidden)


def call_safely(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """The function's return value, or `Raised` describing its exception (Ctrl-C still interrupts)."""
    try:
        return fn(**kwargs)
    except Exception as err:  # noqa: BLE001 - learner code may raise anything
        return Raised(type(err).__name__, str(err)[:500])


def map_tensors(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """`x` with `fn` applied to every tensor, also inside dicts, tuples and lists."""
    if type(x) is torch.Tensor:
        return fn(x)
    if type(x) is dict:
        return {k: map_tensors(fn, v) for k, v in x.items()}
    if type(x) in (tuple, list):
        return type(x)(map_tensors(fn, v) for v in x)
    return x


def _same(a: Any, b: Any) -> bool:
    if type(b) is torch.Tensor:  # equal values, NaN included
        return (
            type(a) is torch.Tensor
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (
                torch.equal(a, b)
                or (b.is_floating_point() and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all()))
            )
        )
    if type(b) is dict:
        return type(a) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if type(b) in (tuple, list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return True  # numbers and strings cannot change in place


def changed_input(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The first input that differs from its copy `before` ("" if none), e.g. "x" or "params['w1']"."""
    for name, b in before.items():
        a = after.get(name)
        if type(b) is dict and type(a) is dict and a.keys() == b.keys():
            inner = next((f"{name}[{k!r}]" for k in b if not _same(a[k], b[k])), "")
            if inner:
                return inner
        elif not _same(a, b):
            return name
    return ""


def run_cases(exercise: Exercise, fn: Callable[..., Any], *, hidden: bool = False) -> list[CaseResult]:
    results = []
    for c in exercise.hidden if hidden else exercise.cases:
        expected = exercise.reference(**c.inputs())  # first: nothing the learner's code does can change it
        inputs = c.inputs()
        before = map_tensors(lambda t: t.detach().clone(), inputs)
        outcome = call_safely(fn, inputs)
        results.append(judge(c, outcome, expected, hidden=hidden, changed=changed_input(before, inputs)))
    return results


def to_float64(x: Any) -> Any:
    """`x` with every floating-point tensor (also inside dicts, tuples and lists) cast to float64."""
    return map_tensors(lambda t: t.double() if t.is_floating_point() else t, x)


def cast_like(x: Any, like: Any) -> Any:
    """`x` with each tensor cast to the dtype of the tensor at the same place in `like`."""
    if type(like) is torch.Tensor:
        return x.to(like.dtype)
    if type(like) in (tuple, list):
        return type(like)(cast_like(a, b) for a, b in zip(x, like, strict=True))
    return x


def computed_in_float64(reference: Callable[..., Any]) -> Callable[..., Any]:
    """`reference` run on float64 copies of its inputs, its result cast back to the dtypes it returns.

    For a reference whose own low-precision arithmetic is less accurate than a careful answer:
    the expected value is then the correctly rounded one, and tolerances need not cover the
    reference's rounding."""

    @functools.wraps(reference)
    def expected(*args: Any, **kwargs: Any) -> Any:
        return cast_like(reference(*to_float64(args), **to_float64(kwargs)), reference(*args, **kwargs))

    return expected


FULL_HINT_AFTER = 3  # the full recipe from the 3rd failing check of an exercise (a learner's kernel)
_FAILED_CHECKS: dict[str, tuple[int, Any]] = {}  # key -> (failing checks so far, the function last counted)


def count_failed_check(key: str, fn: Any, *, hidden: bool = False) -> int:
    """Count one failing check of exercise `key` in this process and return the count so far.

    A hidden check of the very function whose visible check just failed (the same check cell)
    is the same try, not another one."""
    n, last = _FAILED_CHECKS.get(key, (0, None))
    if not (hidden and fn is last):
        n += 1
    _FAILED_CHECKS[key] = (n, fn)
    return n


def _hint_lines(exercise: Exercise, attempt: int | None) -> list[str]:
    """None (grading, CI): the full hint at once, as always; else the nudge first, the recipe later."""
    if attempt is None or not exercise.nudge:
        return [f"  hint: {exercise.hint}"] if exercise.hint else []
    if attempt >= FULL_HINT_AFTER:
        return [f"  hint 2 of 2 (the full recipe): {exercise.hint}"]
    left = FULL_HINT_AFTER - attempt
    return [
        f"  hint 1 of 2: {exercise.nudge}",
        f"  (Have another go. If this check fails {left} more time{'s' if left > 1 else ''}, "
        "it shows the full recipe: hint 2 of 2.)",
    ]


def format_results(
    exercise: Exercise, results: list[CaseResult], *, reveal: bool = True, attempt: int | None = None
) -> str:
    """Readable feedback. With `reveal=False` (hidden cases) no values or messages are shown.

    `attempt`: the learner's failing checks of this exercise so far, for graduated hints; None
    prints the full hint at once (grading and CI)."""
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
        lines += _hint_lines(exercise, attempt)
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
    return (
        f"  The grade is out of {visible + hidden:g}: {visible:g} points for these visible tests and "
        f"{hidden:g} for hidden tests that check: {kinds}."
    )
