"""The exercise checker: strict comparison, friendly feedback, never stops a learner's notebook."""

import os
import re
from pathlib import Path

import numpy as np
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
from aigc_lib.exercises.core import cast_like, judge, run_cases, to_float64

CHAPTERS = sorted(p.stem[2:] for p in Path(exercises.__file__).parent.glob("ch[0-9][0-9].py"))
ALL = [ex for ch in CHAPTERS for ex in exercises_for(ch).values()]


@pytest.fixture(autouse=True)
def fresh_attempts(monkeypatch):
    """Graduated hints count failing checks per process: every test starts from none."""
    monkeypatch.setattr(core, "_FAILED_CHECKS", {})


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
    assert compare(np.float64(1.0), 1.0).ok and compare(np.float32(0.5), 0.5).ok and compare(np.int64(3), 3).ok
    assert not compare(np.float64(1.5), 1.0).ok and not compare(np.bool_(True), 1.0).ok


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
    assert "0/3 points" in out and "expected 0.665241, got" in out and "rel error" in out and "hint 1 of 2" in out
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

    script = (
        "import os\nfrom aigc_lib.exercises import check\n"
        "os.environ.pop('NBGRADER_EXECUTION', None); os.environ.pop('AIGC_STRICT', None)\n"
        "print(check('00.count_bigrams', lambda ids, vocab_size: ids, hidden=True))\n"
    )
    env = {**os.environ, "NBGRADER_EXECUTION": "autograde"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "0.0", done.stderr[-500:]


def test_tolerances_accept_the_float64_answer_on_every_case():
    """The correctly rounded answer (the reference run in float64, cast back to the case's dtypes)
    must pass every case of every chapter: a tolerance tighter than the reference's own rounding
    rejects careful learners. The typical wrong answers still fail (test_exercise_mutations.py)."""
    assert len(CHAPTERS) >= 6
    for ex in ALL:
        for case in ex.all_cases():
            expected = ex.reference(**case.inputs())
            trusted = cast_like(ex.reference(**to_float64(case.inputs())), expected)
            result = judge(case, trusted, expected)
            assert result.passed, f"{ex.key} / {case.name}: {result.message}"


def test_computed_in_float64_rounds_once():
    def f32(x):
        return 1 - (1 - x)  # in float32, loses the digits of a small x

    x = torch.tensor([1e-9, 3e-8], dtype=torch.float32)
    assert not torch.equal(f32(x), x)
    assert torch.equal(core.computed_in_float64(f32)(x=x), x) and core.computed_in_float64(f32)(x=x).dtype == x.dtype


def test_every_exercise_has_a_nudge_that_is_not_the_recipe():
    for ex in ALL:
        assert ex.nudge and ex.hint and ex.nudge != ex.hint and ex.hint not in ex.nudge, ex.key
        for case in ex.all_cases():
            assert ex.hint not in case.hint and len(case.hint) < len(ex.hint), (ex.key, case.name)


def test_graduated_hints_for_a_learner(capsys, monkeypatch):
    monkeypatch.setattr(core, "_MODE", "learner")
    ex = get_exercise("00.apply_temperature")

    def stub(logits, temperature):
        raise NotImplementedError

    def wrong(logits, temperature):
        return torch.softmax(logits * temperature, -1)

    for _ in range(3):  # running the untouched stub is no try
        check(ex.key, stub)
    assert "hint" not in capsys.readouterr().out
    outs = []
    for _ in range(3):
        assert check(ex.key, wrong) is None
        outs.append(capsys.readouterr().out)
    assert ex.nudge in outs[0] and "hint 1 of 2" in outs[0] and "2 more times" in outs[0] and ex.hint not in outs[0]
    assert ex.nudge in outs[1] and "1 more time," in outs[1] and ex.hint not in outs[1]
    assert "hint 2 of 2 (the full recipe): " + ex.hint in outs[2]
    assert "The grade is out of 5" in outs[2]  # the visible 3/3 is not the whole grade


def test_a_hidden_check_of_the_same_function_is_the_same_try(capsys, monkeypatch):
    monkeypatch.setattr(core, "_MODE", "learner")

    def wrong(logits, temperature):
        return torch.softmax(logits * temperature, -1)

    for _ in range(2):  # a check cell of the instructor's edition: visible, then hidden
        check("00.apply_temperature", wrong)
        check("00.apply_temperature", wrong, hidden=True)
    assert core._FAILED_CHECKS["00.apply_temperature"][0] == 2
    assert "hint 1 of 2" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["strict", "validate", "autograde"])
def test_grading_runs_print_the_full_hint_as_before(capsys, monkeypatch, mode):
    monkeypatch.setattr(core, "_MODE", mode)
    ex = get_exercise("00.apply_temperature")

    def wrong(logits, temperature):
        return logits

    if mode == "autograde":
        assert check(ex.key, wrong, hidden=True) == 0
        assert check(ex.key, wrong) is None
    else:
        with pytest.raises(ExerciseCheckFailed):
            check(ex.key, wrong)
    out = capsys.readouterr().out
    assert f"  hint: {ex.hint}" in out and "hint 1 of 2" not in out and not core._FAILED_CHECKS


def test_every_check_cell_tells_what_the_grade_is_out_of(capsys, monkeypatch):
    monkeypatch.setattr(core, "_MODE", "learner")
    for ex in ALL:
        check(ex.key, ex.reference)
        out = capsys.readouterr().out
        visible = sum(c.points for c in ex.cases)
        assert f"{visible:g}/{visible:g} points" in out and f"The grade is out of {ex.points:g}:" in out
        for case in ex.hidden:  # what a hidden case checks, never its inputs
            assert case.name.startswith("hidden: ") and case.name.removeprefix("hidden: ") in out
            assert not re.search(r"=\s*-?\d|\b[A-Z]\s*=|\d+x\d+", case.name), case.name


def test_changing_an_input_in_place_fails_the_case():
    ex = get_exercise("05.guided_eps")

    def in_place(eps_cond, eps_uncond, scale):  # the right value, but the caller's eps_cond is gone
        return eps_cond.sub_(eps_uncond).mul_(scale).add_(eps_uncond)

    results = run_cases(ex, in_place)
    assert not any(r.passed for r in results) and "changed its input `eps_cond` in place" in results[0].message

    def params_in_place(z, params):
        params["b3"] += 0
        params["w3"].mul_(1.5)
        return get_exercise("02.dcgan_generator").reference(z, params)

    assert "params['w3']" in run_cases(get_exercise("02.dcgan_generator"), params_in_place)[0].message


def test_results_that_track_gradients_or_cannot_be_compared_fail_without_a_crash():
    e = torch.ones(3)
    assert "requires_grad=True" in compare(torch.ones(3, requires_grad=True) * 1, e).message
    assert "dense" in compare(e.to_sparse(), e).message
    assert "meta" in compare(torch.empty(3, device="meta"), e).message
    assert compare(torch.ones(3, requires_grad=True).detach(), e).ok
