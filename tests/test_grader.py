"""The grader on real submissions: solutions (full marks), the student edition (zero, no crash),
and wrong, crashing, slow and hostile ones."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from aigc_lib.grade import grade_notebook, main, write_report
from aigc_lib.notebooks import CHAPTERS, SOLUTIONS

SOLUTION_CODE = '''
import torch
def count_bigrams(ids, vocab_size):
    return torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size**2).reshape(vocab_size, vocab_size)
def next_char_probs(counts, alpha=1.0):
    c = counts.float() + alpha
    return c / c.sum(-1, keepdim=True)
def apply_temperature(logits, temperature):
    return torch.softmax(logits / temperature, -1)
def fit_pixel_model(images, alpha=1.0):
    return (images.sum(0) + alpha) / (images.shape[0] + 2 * alpha)
'''


def submission(tmp_path, *sources, name="submission.ipynb"):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["aigc"] = {"chapter": "00"}
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def points(report):
    return {e["function"]: e["points"] for e in report["exercises"]}


@pytest.mark.slow
def test_solutions_get_full_marks_and_chapters_get_zero(tmp_path):
    for src in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        before = src.read_bytes()
        report = grade_notebook(src)
        assert report["score"] == report["max_score"] > 0, json.dumps(report["exercises"], indent=1)
        assert src.read_bytes() == before  # a submission is never modified
        student = grade_notebook(CHAPTERS / src.name)
        assert student["score"] == 0
        assert all(c["status"] == "not implemented" for e in student["exercises"] for c in e["cases"])


def test_minimal_correct_submission_scores_full(tmp_path):
    report = grade_notebook(submission(tmp_path, SOLUTION_CODE))
    assert report["score"] == report["max_score"] == 20


def test_partial_credit_and_hidden_cases_stay_hidden(tmp_path):
    # forgets the float32 cast: passes int-free cases only? no -- wrong dtype everywhere; and a
    # temperature that ignores T: right only where T == 1
    wrong = SOLUTION_CODE + "\ndef apply_temperature(logits, temperature):\n    return torch.softmax(logits, -1)\n"
    report = grade_notebook(submission(tmp_path, wrong))
    got = points(report)
    assert got["apply_temperature"] == 1 and got["count_bigrams"] == 5
    hidden = [c for e in report["exercises"] for c in e["cases"] if c["hidden"] and c["status"] != "pass"]
    assert hidden and all(c["message"] == "hidden test fail" and not c["hint"] for c in hidden)


def test_hostile_submission_cannot_fake_its_grade(tmp_path):
    hostile = '''
import torch, aigc_lib.exercises.core as core
class AlwaysEqual:
    def __eq__(self, other): return True
core.compare = lambda *a, **k: core.Verdict(True, "")     # patched inside the kernel only
torch.allclose = lambda *a, **k: True
def count_bigrams(ids, vocab_size): return AlwaysEqual()
def next_char_probs(counts, alpha=1.0): return torch.zeros(3).as_subclass(type("T", (torch.Tensor,), {}))
def apply_temperature(logits, temperature): return [0.0]
def fit_pixel_model(images, alpha=1.0): return 0.5
print("ALL TESTS PASSED 20/20")
'''
    report = grade_notebook(submission(tmp_path, hostile))
    assert report["score"] == 0
    messages = " ".join(c["message"] for e in report["exercises"] for c in e["cases"] if not c["hidden"])
    assert "got AlwaysEqual" in messages and "got list" in messages and "got float" in messages


def test_crashing_and_slow_cells_cost_only_what_they_break(tmp_path):
    path = submission(
        tmp_path,
        SOLUTION_CODE,
        "1 / 0",
        "import time\nwhile True: time.sleep(0.1)",
        "def fit_pixel_model(images, alpha=1.0):\n    raise ValueError('oops')",
    )
    report = grade_notebook(path, cell_timeout=5)
    got = points(report)
    assert got == {"count_bigrams": 5, "next_char_probs": 5, "apply_temperature": 5, "fit_pixel_model": 0}
    assert report["execution"]["timed_out_cells"] == [2]
    assert "ZeroDivisionError" in report["execution"]["cell_errors"][0]["error"]
    assert any("raised ValueError: oops" in c["message"] for e in report["exercises"] for c in e["cases"])


def test_kernel_death_is_reported_not_fatal(tmp_path):
    report = grade_notebook(submission(tmp_path, SOLUTION_CODE, "import os\nos._exit(1)"))
    assert report["score"] == 0 and report["execution"]["kernel_died"]


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    path = submission(tmp_path, SOLUTION_CODE)
    assert main([str(path), "--out", str(tmp_path / "reports")]) == 0
    assert "20 / 20" in capsys.readouterr().out
    report = json.loads((tmp_path / "reports" / "submission.json").read_text())
    assert report["score"] == 20
    assert "**Score: 20 / 20**" in (tmp_path / "reports" / "submission.md").read_text()


def test_report_writing_is_atomic(tmp_path):
    report = {"notebook": "x.ipynb", "chapter": "00", "score": 1, "max_score": 2, "exercises": [],
              "execution": {"cell_errors": [], "timed_out_cells": [], "total_timeout": False, "kernel_died": False}}
    write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]
