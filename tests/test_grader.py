"""The classroom grader on real chapter-00 submissions: the solution, the untouched student
edition, correct-but-different, subtly wrong and hostile ones, all in one class run."""

import csv
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_markdown_cell

from aigc_lib.grading import Grader, Limits, find_submissions, grade_class, isolation_level
from aigc_lib.grading.cli import main
from aigc_lib.grading.reports import gradescope_results
from aigc_lib.paths import CHAPTERS, ROOT, SOLUTIONS

SOURCE = SOLUTIONS / "00_history.ipynb"
STUDENT = CHAPTERS / "00_history.ipynb"
LIMITS = Limits(cell_seconds=4, call_seconds=4, wall_seconds=40)
isolated = pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and Linux namespaces")

CORRECT = {
    "count_bigrams": (
        "def count_bigrams(ids, vocab_size):\n"
        "    return torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size**2).reshape(vocab_size, vocab_size)"
    ),
    "next_char_probs": "def next_char_probs(counts, alpha=1.0):\n    c = counts.float() + alpha\n    return c / c.sum(-1, keepdim=True)",
    "apply_temperature": "def apply_temperature(logits, temperature):\n    return torch.softmax(logits / temperature, -1)",
    "fit_pixel_model": "def fit_pixel_model(images, alpha=1.0):\n    return (images.sum(0) + alpha) / (images.shape[0] + 2 * alpha)",
}
DIFFERENT = {  # correct, but written another way
    "count_bigrams": """
def count_bigrams(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[a, b] += 1
    return counts""",
    "next_char_probs": """
def next_char_probs(counts, alpha=1.0):
    V = counts.shape[-1]
    return ((counts + alpha) / (counts.sum(-1, keepdim=True) + alpha * V)).float()""",
    "apply_temperature": """
def apply_temperature(logits, temperature):
    z = logits / temperature
    z = z - z.max(dim=-1, keepdim=True).values   # stable
    e = z.exp()
    return e / e.sum(dim=-1, keepdim=True)""",
    "fit_pixel_model": """
def fit_pixel_model(images, alpha=1.0):
    return (images.mean(0) * len(images) + alpha) / (len(images) + 2 * alpha)""",
}
WRONG = {
    "next_char_probs": (  # forgot alpha*V
        "def next_char_probs(counts, alpha=1.0):\n"
        "    c = counts.float() + alpha\n"
        "    return c / counts.float().sum(-1, keepdim=True)"
    ),
    "apply_temperature": (  # source bug E3
        "def apply_temperature(logits, temperature):\n"
        "    return torch.softmax(torch.softmax(logits, -1) / temperature, -1)"
    ),
    "fit_pixel_model": (  # binarises
        "def fit_pixel_model(images, alpha=1.0):\n"
        "    x = (images > 0.5).to(images.dtype)\n"
        "    return (x.sum(0) + alpha) / (len(x) + 2 * alpha)"
    ),
}


def submission(folder, name, solutions=None, edit=None, nb_path=STUDENT):
    """The student edition with `solutions` (grade_id -> code) filled in, then `edit(nb)` applied."""
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if solutions and gid in solutions:
            cell.source = solutions[gid]
    if edit:
        edit(nb)
    path = folder / name / "00_history.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def points(report):
    return {e["function"]: e["points"] for e in report["exercises"]}


@pytest.fixture(scope="module")
def grader():
    return Grader("00", limits=LIMITS)


@pytest.mark.parametrize("source", sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_solutions_get_full_marks_student_editions_zero(source):
    grader = Grader(source.name[:2], limits=LIMITS)
    solution = grader.grade(source)
    assert solution["score"] == solution["max_score"] >= 20 and solution["status"] == "graded", solution["cell_errors"]
    student = grader.grade(CHAPTERS / source.name)
    assert student["score"] == 0 and student["status"] == "graded" and not student["notes"]
    assert all(c["status"] == "not implemented" for e in student["exercises"] for c in e["cases"])


def test_correct_but_different_and_subtly_wrong(grader, tmp_path):
    assert grader.grade(submission(tmp_path, "different", {**CORRECT, **DIFFERENT}))["score"] == 20
    report = grader.grade(submission(tmp_path, "wrong", {**CORRECT, **WRONG}))
    got = points(report)
    # forgot alpha*V: right only where alpha = 0 (1 visible case); E3 temperature: never right;
    # binarising: right on the binary visible cases (2), wrong on every grey-level case (3)
    assert got == {"count_bigrams": 5, "next_char_probs": 1, "apply_temperature": 0, "fit_pixel_model": 2}


@pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId")
def test_tests_come_from_the_source_not_the_submission(grader, tmp_path):
    def vandalise(nb):
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        for cell in tests[:2]:
            nb.cells.remove(cell)  # deleted test cells
        tests[2].source = "print('all tests passed')"  # edited
        nb.cells.append(nbformat.from_dict(json.loads(json.dumps(tests[3]))))  # duplicated
        tests[3].cell_type = "markdown"  # retyped
        for cell in nb.cells:  # solution cell pasted into a new cell without metadata
            if cell.metadata.get("nbgrader", {}).get("grade_id") == "fit_pixel_model":
                cell.metadata = {}

    report = grader.grade(submission(tmp_path, "vandal", CORRECT, vandalise))
    assert report["score"] == 20


def test_cell_type_changed_to_markdown_still_finds_function_by_grade_id(grader, tmp_path):
    def retype(nb):
        nb.cells = [
            new_markdown_cell(c.source, metadata=c.metadata)
            if c.metadata.get("nbgrader", {}).get("grade_id") == "count_bigrams"
            else c
            for c in nb.cells
        ]

    assert points(grader.grade(submission(tmp_path, "retyped", CORRECT, retype)))["count_bigrams"] == 5


HOSTILE = {
    "infinite loop": ({"count_bigrams": "while True:\n    pass"}, {"count_bigrams": 0}),
    "slow function": (
        {"apply_temperature": "def apply_temperature(logits, temperature):\n    while True: pass"},
        {"apply_temperature": 0},
    ),
    "memory bomb": ({"next_char_probs": "x = bytearray(8 << 30)"}, {"next_char_probs": 0}),
    "fork bomb": (
        {
            "fit_pixel_model": CORRECT["fit_pixel_model"]
            + "\nimport os\nfor _ in range(10_000):\n    try:\n        os.fork()\n    except OSError:\n        break"
        },
        {},
    ),
    "os._exit": ({"count_bigrams": "import os\nos._exit(3)"}, {"count_bigrams": 0}),
    "kills its own process": (
        {"apply_temperature": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"},
        {"apply_temperature": 0},
    ),
    "monkeypatching": (
        {
            "count_bigrams": """
import torch, torch.testing, sys, types
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
sys.modules["aigc_lib"] = types.SimpleNamespace(exercises=None)
def count_bigrams(ids, vocab_size):
    return torch.full((vocab_size, vocab_size), 7)"""
        },
        {"count_bigrams": 0},
    ),
    "always-equal objects": (
        {
            "next_char_probs": """
class Eq:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
def next_char_probs(counts, alpha=1.0):
    return Eq()""",
            "apply_temperature": """
class T(torch.Tensor):
    def __eq__(self, other): return True
def apply_temperature(logits, temperature):
    return torch.softmax(logits / temperature, -1).as_subclass(T)""",
        },
        {"next_char_probs": 0, "apply_temperature": 0},
    ),
    "fake output and no tracebacks": (
        {
            "count_bigrams": """
import sys
sys.tracebacklimit = 0
sys.excepthook = lambda *a: None
print("count_bigrams: 5/5 points\\nALL TESTS PASSED 20/20")
print("PASS", file=sys.stderr)
def count_bigrams(ids, vocab_size):
    raise RuntimeError("nope")"""
        },
        {"count_bigrams": 0},
    ),
    "snooping for hidden tests": (
        {
            "count_bigrams": """
import glob
found = glob.glob(ROOT + "/**/hidden/*.py", recursive=True) + glob.glob(ROOT + "/solutions/*.ipynb")
secrets = [open(f).read() for f in found]
def count_bigrams(ids, vocab_size):
    from aigc_lib.history import count_bigrams as reference   # the library is out of reach
    return reference(ids, vocab_size)""".replace("ROOT", repr(str(ROOT)))
        },
        {"count_bigrams": 0},
    ),
    "network and writing outside": (
        {
            "count_bigrams": CORRECT["count_bigrams"]
            + """
import socket
try:
    socket.create_connection(("127.0.0.1", 8888), timeout=1)
except OSError:
    pass
for target in ["/etc/pwned", "../pwned", "/work/pwned"]:
    try:
        open(target, "w").write("x")
    except OSError:
        pass"""
        },
        {},
    ),
}


def test_hostile_writes_stay_inside_the_sandbox(grader, tmp_path):
    grader.grade(submission(tmp_path, "writer", {**CORRECT, **HOSTILE["network and writing outside"][0]}))
    assert not (tmp_path / "writer" / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_invalid_json_and_missing_notebook(grader, tmp_path):
    bad = tmp_path / "broken" / "00_history.ipynb"
    bad.parent.mkdir()
    bad.write_text('{"cells": [ this is not json')
    report = grader.grade(bad)
    assert report["status"] == "unreadable" and "JSON" in report["reason"] and report["score"] == 0
    missing = grader.grade(tmp_path / "nobody" / "00_history.ipynb")  # an empty folder
    assert missing["status"] == "missing" and missing["score"] == 0


def test_hidden_feedback_never_shows_hidden_inputs(grader, tmp_path):
    leak = {
        "count_bigrams": "def count_bigrams(ids, vocab_size):\n    raise ValueError('LEAK' + repr(ids.tolist()[:50]))"
    }
    report = grader.grade(submission(tmp_path, "leaky", {**CORRECT, **leak}))
    from aigc_lib.grading.reports import feedback_html, feedback_markdown

    visible = feedback_markdown(report)
    assert "LEAK[0, 1, 0, 1]" in visible  # a visible case's input is the learner's own business
    hidden_ids = "LEAK[2]"  # the first hidden case's input
    assert hidden_ids not in visible and hidden_ids not in feedback_html(report)
    assert hidden_ids not in gradescope_results(report)


def test_feedback_gives_the_nudge_never_the_full_recipe(grader, tmp_path):
    from aigc_lib.grading.reports import feedback_html, feedback_markdown

    for name, answers in (("blank", {}), ("wrong", WRONG)):  # untouched (0 points), typical mistakes
        report = grader.grade(submission(tmp_path, name, answers))
        shown = feedback_markdown(report) + feedback_html(report) + gradescope_results(report)
        for ex in grader.exercises:
            assert ex.hint[:40] not in shown
            if ex.function in answers:
                assert ex.nudge[:40] in feedback_markdown(report)


def test_a_hidden_input_cannot_come_back_in_a_visible_message(grader, tmp_path):
    stash = {
        "count_bigrams": "SEEN = []\n"
        + CORRECT["count_bigrams"].replace(
            "def count_bigrams(ids, vocab_size):\n",
            "def count_bigrams(ids, vocab_size):\n    SEEN.append(ids.tolist()[:3])\n",
        ),
        "fit_pixel_model": "def fit_pixel_model(images, alpha=1.0):\n    raise ValueError('STASH' + repr(SEEN))",
    }
    report = grader.grade(submission(tmp_path, "stash", {**CORRECT, **stash}))
    from aigc_lib.grading.reports import feedback_markdown

    assert "STASH" in feedback_markdown(report) and "[2]]" not in feedback_markdown(report)


def _private_hidden(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    (private / "ch00.py").write_text(
        "import torch\nfrom aigc_lib.exercises.core import Case\n"
        "HIDDEN = {'00.apply_temperature': (Case('private: T = 7', "
        "lambda: {'logits': torch.arange(5.0), 'temperature': 7.0}, points=3),)}\n"
    )
    return private


def test_instructor_private_hidden_cases_replace_the_packaged_ones(tmp_path):
    grader = Grader("00", limits=LIMITS, hidden_dir=_private_hidden(tmp_path))
    assert grader.max_score == 4 * 3 + 3  # visible cases, plus the private case
    report = grader.grade(submission(tmp_path, "a", CORRECT))
    assert report["score"] == 15
    assert [c["case"] for c in report["exercises"][2]["cases"] if c["hidden"]] == ["private: T = 7"]


@isolated
def test_private_hidden_folder_is_out_of_the_sandbox_reach(tmp_path):
    private = _private_hidden(tmp_path)
    grader = Grader("00", limits=LIMITS, hidden_dir=private)
    snoop = {
        "apply_temperature": CORRECT["apply_temperature"] + f"\nimport os\nassert not os.listdir({str(private)!r})"
    }
    subs = tmp_path / "class"
    submission(subs, "snoop", {**CORRECT, **snoop})
    (report,) = grade_class(grader, find_submissions([subs]), tmp_path / "out", workers=1, progress=False)
    assert report["score"] == 15, report["cell_errors"]


@isolated
def test_the_sandbox_sees_no_secrets(grader, tmp_path):
    probe = (
        CORRECT["count_bigrams"]
        + f"""
import os
assert os.getuid() != 0, "still root"
assert not os.path.exists({str(ROOT / "aigc_lib" / "exercises" / "hidden" / "ch00.py")!r}), "hidden cases visible"
assert not os.listdir({str(SOLUTIONS)!r}), "solutions visible"
try:
    open("/etc/shadow").read()
    raise SystemExit("read /etc/shadow")
except PermissionError:
    pass
"""
    )
    report = grader.grade(submission(tmp_path, "probe", {**CORRECT, "count_bigrams": probe}))
    assert points(report)["count_bigrams"] == 5, report["cell_errors"]


NOISY = {
    "count_bigrams": CORRECT["count_bigrams"]
    + "\nimport sys, warnings\nwarnings.warn('deprecated!')\nprint('Traceback (most recent call last): ERROR', file=sys.stderr)"
}


def test_class_run_survives_everything_and_resumes(grader, tmp_path):
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    submission(subs, "bob", {**CORRECT, **WRONG})
    submission(subs, "carol")  # untouched
    submission(subs, "noisy", {**CORRECT, **NOISY})  # warnings and stderr never cost points
    (subs / "dave").mkdir()
    (subs / "dave" / "00_history.ipynb").write_text("not json")
    (subs / "erin").mkdir()  # submitted nothing
    expected = {"alice": 20, "bob": 8, "carol": 0, "noisy": 20, "dave": 0, "erin": 0}
    for i, (code, lost) in enumerate(HOSTILE.values()):  # every hostile submission, in the same run
        submission(subs, f"hostile{i:02d}", {**CORRECT, **code})
        expected[f"hostile{i:02d}"] = 20 - 5 * len(lost)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*.ipynb")}

    found = find_submissions([subs])
    assert [s for s, _ in found] == sorted(expected)
    out = tmp_path / "out"
    reports = grade_class(grader, found, out, workers=2, progress=False)
    scores = {r["student"]: r["score"] for r in reports}
    names = dict(zip((f"hostile{i:02d}" for i in range(len(HOSTILE))), HOSTILE, strict=True))
    wrong = {names.get(k, k): (scores[k], v) for k, v in expected.items() if scores[k] != v}
    assert not wrong, f"(got, expected) per submission: {wrong}"
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*.ipynb")}

    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert [r["student_id"] for r in rows] == sorted(scores) and rows[0]["max_score"] == "20"
    assert {"assignment", "timestamp", "raw_score", "score", "count_bigrams"} <= set(rows[0])
    summary = (out / "summary.md").read_text()
    assert "`dave`: `not a valid notebook" in summary and "`erin`: `no notebook was submitted" in summary
    assert "TimeLimit" in summary and "MemoryError" in summary  # the infinite loop and the memory bomb
    assert (out / "learners" / "bob" / "feedback.html").exists()
    assert "Hint:" in (out / "learners" / "bob" / "feedback.md").read_text()

    # an interrupted run resumes: finished learners are not graded again, a lost one is
    stamp = (out / "learners" / "alice" / "result.json").stat().st_mtime_ns
    (out / "learners" / "bob" / "result.json").unlink()
    again = grade_class(grader, found, out, workers=2, progress=False)
    assert {r["student"]: r["score"] for r in again} == scores
    assert (out / "learners" / "alice" / "result.json").stat().st_mtime_ns == stamp


def test_grading_is_deterministic(grader, tmp_path):
    randomised = {
        "count_bigrams": CORRECT["count_bigrams"] + "\n_noise = torch.rand(1)\n",
        "apply_temperature": (
            "def apply_temperature(logits, temperature):\n"
            "    return torch.softmax(logits / temperature + 1e-7 * torch.rand(logits.shape), -1)"
        ),
    }
    path = submission(tmp_path, "r", {**CORRECT, **randomised})
    first, second = grader.grade(path), grader.grade(path)
    assert first["exercises"] == second["exercises"]


VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
FORMAT = {"enum": ["text", "html", "simple_format", "md", "ansi"]}
GRADESCOPE_SCHEMA = {  # Gradescope's autograder specification for results.json, field by field
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "score": {"type": "number"},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "output_format": FORMAT,
        "test_output_format": FORMAT,
        "test_name_format": FORMAT,
        "visibility": VISIBILITY,
        "stdout_visibility": VISIBILITY,
        "extra_data": {"type": "object"},
        "leaderboard": {"type": "array"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "score": {"type": "number"},
                    "max_score": {"type": "number"},
                    "status": {"enum": ["passed", "failed"]},
                    "name": {"type": "string"},
                    "name_format": FORMAT,
                    "number": {"type": "string"},
                    "output": {"type": "string"},
                    "output_format": FORMAT,
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "visibility": VISIBILITY,
                    "extra_data": {"type": "object"},
                },
            },
        },
    },
}


def gradescope(tmp_path, name, files: dict) -> dict:
    """Run the README's run_autograder line on an upload of `files` (name -> notebook or text)."""
    import jsonschema

    upload = tmp_path / name / "submission"
    upload.mkdir(parents=True)
    for filename, content in files.items():
        if isinstance(content, str):
            (upload / filename).write_text(content)
        else:
            nbformat.write(content, upload / filename)
    results = tmp_path / name / "results" / "results.json"
    assert (
        main(
            [
                str(upload),
                "--chapter",
                "00",
                "--out",
                str(tmp_path / name / "reports"),
                "--gradescope",
                str(results),
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads(results.read_text())
    jsonschema.validate(data, GRADESCOPE_SCHEMA)
    return data


def notebook(answers):
    return nbformat.read(submission(Path(tempfile.mkdtemp()), "x", answers), as_version=4)


def test_gradescope_results_follow_the_specification(tmp_path):
    data = gradescope(tmp_path, "correct", {"00_history.ipynb": notebook(CORRECT), "notes.txt": "my notes"})
    assert data["score"] == 20 and sum(t["score"] for t in data["tests"]) == 20
    hidden = [t for t in data["tests"] if t["name"].endswith("(hidden tests)")]
    assert hidden and all(t["visibility"] == "after_published" for t in hidden)  # not before grades are out
    assert all(t["visibility"] == "visible" for t in data["tests"] if t not in hidden)

    broken = gradescope(
        tmp_path,
        "syntax",
        {
            "00_history.ipynb": notebook(
                {**CORRECT, "count_bigrams": "def count_bigrams(ids, vocab_size)\n    return ids"}
            )
        },
    )
    assert broken["score"] == 15 and "SyntaxError" in broken["output"]  # the real error, not "no function named"

    extra = gradescope(tmp_path, "extra", {"00_history.ipynb": notebook(CORRECT), "scratch.ipynb": notebook({})})
    assert extra["score"] == 20  # the chapter's notebook is graded; another notebook beside it is ignored
    for name, files in {
        "two": {"mine.ipynb": notebook(CORRECT), "copy.ipynb": notebook(CORRECT)},
        "none": {"answers.py": "print(1)"},
    }.items():
        upload = gradescope(tmp_path, name, files)
        assert upload["score"] == 0 and "00_history.ipynb" in upload["output"] and "resubmit" in upload["output"]


def test_find_submissions_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ["b", "a"]:
        shutil.copy(STUDENT, flat / f"{name}.ipynb")
    assert [s for s, _ in find_submissions([flat])] == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_submissions([tmp_path / "nope"])
    assert find_submissions([flat / "a.ipynb"]) == [("a", flat / "a.ipynb")]


def test_the_gradescope_autograder_zip(tmp_path):
    import zipfile

    from aigc_lib.__main__ import main as cli

    assert cli(["gradescope-autograder", "00", str(tmp_path / "autograder.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "autograder.zip") as z:
        names = set(z.namelist())
        run = z.read("run_autograder").decode()
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111
    assert {
        "setup.sh",
        "run_autograder",
        "requirements.txt",
        "aigc_lib/grading/cli.py",
        "solutions/00_history.ipynb",
    } <= names
    assert "CHAPTER=00" in run and "--gradescope /autograder/results/results.json" in run
