"""The exercise checker: strict comparison, friendly feedback, never stops a learner's notebook."""

import os
from pathlib import Path

import pytest
import torch

from aigc_lib import exercises
from aigc_lib.exercises import (
    ExerciseCheckFailed,
    check,
    compare,
    core,
    exercises_for,
    get_exercise,
)


class AlwaysEqual:
    def __eq__(self, other):
        return True


class SneakyTensor(torch.Tensor):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    ("got", "message"),
    [
        (torch.ones(3, dtype=torch.float64), "expected dtype torch.float32"),
        (torch.ones(1, 3), "expected shape (3,)"),
        ([1.0, 1.0, 1.0], "expected a torch.Tensor, got list"),
        (AlwaysEqual(), "expected a torch.Tensor, got AlwaysEqual"),
        (torch.ones(3).as_subclass(SneakyTensor), "got SneakyTensor"),
        (torch.tensor([1.0, 1.0, 1.5]), "1 of 3 values are off; the worst at index (2,): expected 1, got 1.5"),
        (torch.tensor([1.0, float("nan"), 1.0]), "NaN"),
    ],
)
def test_compare_is_strict_and_says_why(got, message):
    verdict = compare(got, torch.ones(3))
    assert not verdict.ok and message in verdict.message


def test_compare_numbers_ints_and_tolerance():
    assert compare(torch.tensor([1.0 + 1e-7]), torch.tensor([1.0])).ok
    assert not compare(torch.tensor([2, 3]), torch.tensor([2, 4])).ok
    assert compare(1.0, 1.0).ok and not compare(True, 1.0).ok and not compare("1", 1.0).ok


def test_every_exercise_reference_passes_its_own_cases():
    chapters = sorted(p.stem[2:] for p in Path(exercises.__file__).parent.glob("ch[0-9][0-9].py"))
    assert len(chapters) >= 3
    for chapter in chapters:
        for key, ex in exercises_for(chapter).items():
            assert ex.hidden, f"{key} has no hidden cases"
            assert len(ex.cases) >= 2
            check(key, ex.reference)
            check(key, ex.reference, hidden=True)


def test_check_feedback_for_stub_wrong_and_crash(capsys, monkeypatch):
    monkeypatch.setattr(core, "_MODE", "learner")

    def stub(logits, temperature):
        raise NotImplementedError

    def wrong(logits, temperature):  # the source articles' bug E3
        return torch.softmax(torch.softmax(logits, -1) / temperature, -1)

    def crash(logits, temperature):
        return logits @ "x"

    check("00.apply_temperature", stub)
    assert "not implemented yet" in capsys.readouterr().out
    check("00.apply_temperature", wrong)
    out = capsys.readouterr().out
    assert "0/3 points" in out and "expected 0.665241, got" in out and "rel error" in out and "hint:" in out
    check("00.apply_temperature", crash)
    assert "raised TypeError" in capsys.readouterr().out
    check("00.apply_temperature", "not a function")
    assert "expected a function" in capsys.readouterr().out


def test_hidden_feedback_reveals_no_values(capsys, monkeypatch):
    monkeypatch.setattr(core, "_MODE", "learner")
    check("00.apply_temperature", lambda logits, temperature: logits * 0, hidden=True)
    out = capsys.readouterr().out
    assert "FAIL" in out and "expected 0" not in out and "got" not in out and "hidden tests do not show" in out


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setattr(core, "_MODE", "strict")
    with pytest.raises(ExerciseCheckFailed, match="00.apply_temperature"):
        check("00.apply_temperature", lambda logits, temperature: logits)
    check("00.apply_temperature", get_exercise("00.apply_temperature").reference)  # passing: no raise


def test_learner_cannot_mutate_case_inputs_for_the_reference():
    def vandal(ids, vocab_size):
        ids.zero_()
        return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)

    ex = get_exercise("00.count_bigrams")
    from aigc_lib.exercises.core import run_cases

    assert not any(r.passed for r in run_cases(ex, vandal))


def test_unknown_exercise_and_chapter():
    with pytest.raises(ValueError, match="unknown exercise '00.nope'"):
        get_exercise("00.nope")
    with pytest.raises(ValueError, match="no exercises defined for chapter '99'"):
        exercises_for("99")


def test_compare_tuples_item_by_item():
    e = (torch.ones(2), torch.zeros(2))
    assert compare((torch.ones(2), torch.zeros(2)), e).ok
    assert "expected a tuple of 2 items, got list" in compare([torch.ones(2), torch.zeros(2)], e).message
    assert "expected 2 items, got 1" in compare((torch.ones(2),), e).message
    assert compare((torch.ones(2), torch.ones(2)), e).message.startswith("item 1: 2 of 2 values are off")


def test_nbgrader_autograde_returns_partial_credit_and_validate_raises(monkeypatch, capsys):
    """nbgrader reads a test cell's last value as partial credit: the hidden check returns the
    exercise's earned points (visible and hidden); Validate must fail an unfinished exercise."""
    ex = get_exercise("00.count_bigrams")
    monkeypatch.setattr(core, "_MODE", "autograde")
    assert check("00.count_bigrams", ex.reference) is None  # the visible check shows feedback only
    assert check("00.count_bigrams", ex.reference, hidden=True) == ex.points
    half = lambda ids, vocab_size: ex.reference(ids, vocab_size) if len(ids) < 100 else None  # noqa: E731
    earned = check("00.count_bigrams", half, hidden=True)
    assert 0 < earned < ex.points
    assert check("00.count_bigrams", lambda ids, vocab_size: ids, hidden=True) == 0
    assert "The grade is out of 5" in capsys.readouterr().out
    monkeypatch.setattr(core, "_MODE", "validate")
    with pytest.raises(ExerciseCheckFailed):
        check("00.count_bigrams", lambda ids, vocab_size: ids)


def test_the_grading_mode_is_fixed_before_learner_code_runs():
    """A learner who clears nbgrader's or CI's variables in a solution cell changes nothing."""
    import subprocess
    import sys

    script = ("import os\nfrom aigc_lib.exercises import check\n"
              "os.environ.pop('NBGRADER_EXECUTION', None); os.environ.pop('AIGC_STRICT', None)\n"
              "print(check('00.count_bigrams', lambda ids, vocab_size: ids, hidden=True))\n")
    env = {**os.environ, "NBGRADER_EXECUTION": "autograde"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "0.0", done.stderr[-500:]
