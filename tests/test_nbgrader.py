"""nbgrader's own commands, unmodified, on a real course folder: a correct learner, one with the
typical mistakes and one who hands in the untouched notebook get the scores the course's grader
gives them, and nbgrader's Validate fails an unfinished notebook."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_grader import CORRECT, WRONG

from aigc_lib.grading import Grader, isolation_level
from aigc_lib.notebooks import SOLUTIONS

CONFIG = """c = get_config()
c.CourseDirectory.course_id = "aigc"
c.CourseDirectory.root = {root!r}
c.ExecutePreprocessor.timeout = 120  # seconds per cell: training cells at the smoke budget need more than 30
"""


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AIGC_BUDGET", "AIGC_STRICT")}  # nbgrader's defaults
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0 or args[0] == "validate", done.stdout[-2000:] + done.stderr[-3000:]
    return done


def hand_in(course: Path, student: str, answers: dict) -> Path:
    nb = nbformat.read(course / "release" / "ch00" / "00_history.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    path = course / "submitted" / student / "ch00" / "00_history.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_nbgrader_scores_like_the_course_grader(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "ch00").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(root=str(course)))
    shutil.copy(SOLUTIONS / "00_history.ipynb", course / "source" / "ch00")
    nbgrader(course, "generate_assignment", "ch00", "--create")
    learners = {"correct": CORRECT, "mistakes": {**CORRECT, **WRONG}, "blank": {}}
    paths = {name: hand_in(course, name, answers) for name, answers in learners.items()}

    validated = nbgrader(course, "validate", str(paths["blank"]))
    assert "Success" not in validated.stdout and "failed" in validated.stdout.lower()

    nbgrader(course, "autograde", "ch00", "--create")
    nbgrader(course, "export", "--to", str(tmp_path / "grades.csv"))
    scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader((tmp_path / "grades.csv").open())}
    assert scores == {"correct": 20, "mistakes": 8, "blank": 0}
    feedback = course / "autograded" / "correct" / "ch00"
    assert not list(feedback.rglob("*.pt")), "checkpoints landed in the learner's feedback folder"

    if isolation_level() == "namespaces":  # the course's own grader agrees, learner by learner
        grader = Grader("00")
        assert {name: grader.grade(path)["score"] for name, path in paths.items()} == scores
