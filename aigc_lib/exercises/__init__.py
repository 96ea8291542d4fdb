"""Exercises: test cases defined once, used by the notebook's check cells and by the grader."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from aigc_lib.exercises.core import (
    Case,
    CaseResult,
    Exercise,
    ExerciseCheckFailed,
    compare,
    format_results,
    run_cases,
    strict_mode,
)

__all__ = ["Case", "CaseResult", "Exercise", "ExerciseCheckFailed", "check", "compare", "exercises_for", "get_exercise"]


def exercises_for(chapter: str) -> dict[str, Exercise]:
    """The chapter's exercises by key, visible cases from `chNN`, hidden ones from `hidden.chNN`."""
    try:
        visible = importlib.import_module(f"aigc_lib.exercises.ch{chapter}")
    except ModuleNotFoundError as err:
        raise ValueError(f"chapter: no exercises defined for chapter {chapter!r}") from err
    try:
        hidden = importlib.import_module(f"aigc_lib.exercises.hidden.ch{chapter}").HIDDEN
    except ModuleNotFoundError:
        hidden = {}
    return {ex.key: dataclasses.replace(ex, hidden=tuple(hidden.get(ex.key, ()))) for ex in visible.EXERCISES}


def get_exercise(key: str) -> Exercise:
    if not isinstance(key, str) or "." not in key:
        raise ValueError(f"key: expected '<chapter>.<function>' such as '00.count_bigrams', got {key!r}")
    exercises = exercises_for(key.split(".", 1)[0])
    if key not in exercises:
        raise ValueError(f"key: unknown exercise {key!r}; this chapter has {sorted(exercises)}")
    return exercises[key]


def check(key: str, fn: Callable[..., Any], *, hidden: bool = False) -> None:
    """Run an exercise's visible (or hidden) cases on `fn` and print friendly feedback.

    Never stops a learner's notebook; in strict mode ($AIGC_STRICT=1, used by CI on solutions/)
    any failure raises ExerciseCheckFailed.
    """
    exercise = get_exercise(key)
    if not callable(fn):
        print(f"{exercise.function}: expected a function, got {type(fn).__name__}; define it in the cell above")
        results = []
        failed = True
    else:
        results = run_cases(exercise, fn, hidden=hidden)
        print(format_results(exercise, results, reveal=not hidden))
        failed = not all(r.passed for r in results)
    if failed and strict_mode():
        raise ExerciseCheckFailed(f"{key}: {sum(not r.passed for r in results)} case(s) failed (strict mode)")
