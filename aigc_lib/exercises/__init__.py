"""Exercises: test cases defined once, used by the notebook's check cells and by the grader."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aigc_lib.exercises.core import (
    Case,
    CaseResult,
    Exercise,
    ExerciseCheckFailed,
    compare,
    count_failed_check,
    format_results,
    grading_mode,
    hidden_summary,
    quiet_stderr,
    run_cases,
)

__all__ = ["Case", "CaseResult", "Exercise", "ExerciseCheckFailed", "check", "compare", "exercises_for", "get_exercise"]


def _hidden_cases(chapter: str, hidden_dir: Path | None) -> dict:
    """Hidden cases: from `hidden_dir/chNN.py` (an instructor's private folder) if given, else packaged."""
    if hidden_dir is None:
        try:
            return importlib.import_module(f"aigc_lib.exercises.hidden.ch{chapter}").HIDDEN
        except ModuleNotFoundError:
            return {}
    path = Path(hidden_dir) / f"ch{chapter}.py"
    if not path.is_file():
        raise ValueError(f"hidden_dir: expected a file {path} defining HIDDEN = {{exercise key: (Case, ...)}}")
    spec = importlib.util.spec_from_file_location(f"_aigc_private_hidden_ch{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HIDDEN


def exercises_for(chapter: str, hidden_dir: Path | None = None) -> dict[str, Exercise]:
    """The chapter's exercises by key: visible cases from `chNN`, hidden ones from `_hidden_cases`."""
    try:
        visible = importlib.import_module(f"aigc_lib.exercises.ch{chapter}")
    except ModuleNotFoundError as err:
        raise ValueError(f"chapter: no exercises defined for chapter {chapter!r}") from err
    hidden = _hidden_cases(chapter, hidden_dir)
    unknown = set(hidden) - {ex.key for ex in visible.EXERCISES}
    if unknown:
        raise ValueError(f"hidden cases name unknown exercises {sorted(unknown)}")
    return {ex.key: dataclasses.replace(ex, hidden=tuple(hidden.get(ex.key, ()))) for ex in visible.EXERCISES}


def get_exercise(key: str) -> Exercise:
    if not isinstance(key, str) or "." not in key:
        raise ValueError(f"key: expected '<chapter>.<function>' such as '00.count_bigrams', got {key!r}")
    exercises = exercises_for(key.split(".", 1)[0])
    if key not in exercises:
        raise ValueError(f"key: unknown exercise {key!r}; this chapter has {sorted(exercises)}")
    return exercises[key]


def check(key: str, fn: Callable[..., Any], *, hidden: bool = False) -> float | None:
    """Run an exercise's visible (or hidden) cases on `fn` and print friendly feedback.

    For a learner it never stops the notebook and returns None. Other modes are fixed when
    `aigc_lib` is first imported (a learner's later change to the environment has no effect):
    - strict ($AIGC_STRICT=1, CI on solutions/): any failure raises ExerciseCheckFailed;
    - nbgrader autograde: the hidden check returns the exercise's earned points (visible and
      hidden cases), which nbgrader reads as the test cell's partial credit;
    - nbgrader validate: any failure raises, so the Validate button reports it.
    """
    exercise = get_exercise(key)
    mode = grading_mode()
    if not callable(fn):
        print(f"{exercise.function}: expected a function, got {type(fn).__name__}; define it in the cell above")
        if mode != "learner":
            raise ExerciseCheckFailed(f"{key}: {exercise.function} is not defined")
        return None
    if hidden and mode == "autograde":  # the grade: every case, visible and hidden
        with quiet_stderr():  # nbgrader gives 0 to a test cell that writes to stderr
            results = run_cases(exercise, fn) + run_cases(exercise, fn, hidden=True)
        print(format_results(exercise, [r for r in results if r.hidden], reveal=False))
        return round(sum(r.points for r in results), 6)
    with quiet_stderr() if mode == "autograde" else contextlib.nullcontext():
        results = run_cases(exercise, fn, hidden=hidden)
    failed = not all(r.passed for r in results)
    tried = failed and not all(r.status == "not implemented" for r in results)  # running the stub is no try
    # a learner gets graduated hints (a nudge first, the full recipe after a few tries); grading and CI the full hint
    attempt = count_failed_check(key, fn, hidden=hidden) if tried and mode == "learner" else None
    print(format_results(exercise, results, reveal=not hidden, attempt=attempt))
    if not hidden and exercise.hidden:
        print(hidden_summary(exercise))
    if failed and mode in ("strict", "validate"):
        raise ExerciseCheckFailed(f"{key}: {sum(not r.passed for r in results)} case(s) failed")
    return None
