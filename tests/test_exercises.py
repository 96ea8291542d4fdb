"""The exercise checker: strict comparison, friendly feedback, never stops a learner's notebook."""

from pathlib import Path

import pytest
import torch

from aigc_lib import exercises
from aigc_lib.exercises import ExerciseCheckFailed, check, compare, exercises_for, get_exercise


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
    monkeypatch.delenv("AIGC_STRICT", raising=False)

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
    monkeypatch.delenv("AIGC_STRICT", raising=False)
    check("00.apply_temperature", lambda logits, temperature: logits * 0, hidden=True)
    out = capsys.readouterr().out
    assert "FAIL" in out and "expected 0" not in out and "got" not in out and "hidden tests do not show" in out


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("AIGC_STRICT", "1")
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
