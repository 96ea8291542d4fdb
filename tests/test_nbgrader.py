"""nbgrader's own commands, unmodified, on a real course folder: a correct learner, one with the
typical mistakes and one who hands in the untouched notebook get the scores the course's grader
gives them, and nbgrader's Validate fails an unfinished notebook."""

import ast
import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from test_grader import CORRECT, WRONG

from aigc_lib.exercises import exercises_for
from aigc_lib.exercises.core import run_cases
from aigc_lib.grading import Grader, isolation_level
from aigc_lib.paths import SOLUTIONS

CONFIG = """c = get_config()
c.CourseDirectory.course_id = "aigc"
c.CourseDirectory.root = {root!r}
c.ExecutePreprocessor.timeout = 120  # seconds per cell: training cells at the smoke budget need more than 30
"""


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AIGC_BUDGET", "AIGC_STRICT")}  # nbgrader's defaults
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 or args[0] == "validate", done.stdout[-2000:] + done.stderr[-3000:]
    return done


def hand_in(course: Path, chapter: str, student: str, answers: dict) -> Path:
    [released] = (course / "release" / f"ch{chapter}").glob("*.ipynb")
    nb = nbformat.read(released, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    path = course / "submitted" / student / f"ch{chapter}" / released.name
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def solution_cells(chapter: str) -> dict[str, str]:
    """The authored answers, as a learner who solved everything would hand them in."""
    [path] = SOLUTIONS.glob(f"{chapter}_*.ipynb")
    cells = nbformat.read(path, as_version=4).cells
    return {
        c.metadata["nbgrader"]["grade_id"]: "\n".join(line for line in c.source.splitlines() if "### " not in line)
        for c in cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def notebook_imports(chapter: str) -> dict:
    """The names the chapter's notebook imports (its import statements, run alone): what an answer may use."""
    [path] = SOLUTIONS.glob(f"{chapter}_*.ipynb")
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    tree = ast.parse("\n".join(line for line in first.source.splitlines() if not line.startswith("%")))
    namespace = {"torch": torch, "F": torch.nn.functional, "math": math}
    exec(compile(ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], []),
              "<imports>", "exec"), namespace)  # fmt: skip
    return namespace


def library_score(chapter: str, answers: dict[str, str]) -> float:
    """What the course's own case runner gives the same answers (no nbgrader, no sandbox)."""
    total = 0.0
    for ex in exercises_for(chapter).values():
        namespace = notebook_imports(chapter)
        if ex.function in answers:
            exec(answers[ex.function], namespace)
        fn = namespace.get(ex.function)
        if callable(fn):
            total += sum(r.points for r in run_cases(ex, fn) + run_cases(ex, fn, hidden=True))
    return total


CH08_MISTAKES = {  # μ-law codes truncated instead of rounded; a stack that assumes equal lengths
    "mu_law_encode": "import math\n\ndef mu_law_encode(wave, channels=256):\n    mu = channels - 1\n    x = wave.clamp(-1, 1)\n"
    "    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)\n    return ((y + 1) / 2 * mu).long()",
    "length_regulate": "def length_regulate(h, durations):\n"
    "    return torch.stack([torch.repeat_interleave(h[b], durations[b], dim=0) for b in range(len(h))])",
}

CH09_MISTAKES = {  # every pair counted, against gamma = 0.5; squared distances in the copy score
    "watermark_z": "import math\n\ndef watermark_z(ids, green):\n    s = int(green[ids[:-1], ids[1:]].sum())\n"
    "    n = len(ids) - 1\n    return (s - 0.5 * n) / math.sqrt(n * 0.25)",
    "copy_score": "def copy_score(samples, train, k=50):\n"
    "    d = torch.cdist(samples.flatten(1).double(), train.flatten(1).double()) ** 2\n"
    "    nearest = d.topk(k, dim=1, largest=False).values\n    return (nearest[:, 0] / nearest.mean(1)).to(samples.dtype)",
}

CH03_MISTAKES = {  # the typical wrong answers: the variance for the std, KL averaged over dimensions
    "reparameterize": "def reparameterize(mu, logvar, eps):\n    return mu + torch.exp(logvar) * eps",
    "gaussian_kl": "def gaussian_kl(mu, logvar):\n    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(dim=1)",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("chapter", "mistakes"),
    [("00", WRONG), ("03", CH03_MISTAKES), ("08", CH08_MISTAKES), ("09", CH09_MISTAKES)],
    ids=[
        "ch00 (exercises only)",
        "ch03 (trains models)",
        "ch08 (speech: espeak in a subprocess, audio outputs)",
        "ch09 (loads or trains four chapters' models)",
    ],
)
def test_nbgrader_scores_like_the_course_grader(tmp_path, chapter, mistakes):
    course = tmp_path / "course"
    (course / "source" / f"ch{chapter}").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(root=str(course)))
    [source] = SOLUTIONS.glob(f"{chapter}_*.ipynb")
    shutil.copy(source, course / "source" / f"ch{chapter}")
    nbgrader(course, "generate_assignment", f"ch{chapter}", "--create")
    correct = CORRECT if chapter == "00" else solution_cells(chapter)
    learners = {"correct": correct, "mistakes": {**correct, **mistakes}, "blank": {}}
    paths = {name: hand_in(course, chapter, name, answers) for name, answers in learners.items()}

    validated = nbgrader(course, "validate", str(paths["blank"]))
    assert "Success" not in validated.stdout and "failed" in validated.stdout.lower()

    nbgrader(course, "autograde", f"ch{chapter}", "--create")
    nbgrader(course, "export", "--to", str(tmp_path / "grades.csv"))
    scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader((tmp_path / "grades.csv").open())}
    expected = {name: library_score(chapter, answers) for name, answers in learners.items()}
    assert scores == expected
    assert expected["correct"] == sum(ex.points for ex in exercises_for(chapter).values())
    assert 0 < expected["mistakes"] < expected["correct"] and expected["blank"] == 0
    feedback = course / "autograded" / "correct" / f"ch{chapter}"
    assert not list(feedback.rglob("*.pt")), "checkpoints landed in the learner's feedback folder"
    size = sum(f.stat().st_size for f in feedback.rglob("*") if f.is_file())
    assert size < 5e6, f"the feedback folder holds {size / 1e6:.0f} MB"

    if isolation_level() == "namespaces":  # the course's own sandboxed grader agrees, learner by learner
        grader = Grader(chapter)
        assert {name: grader.grade(path)["score"] for name, path in paths.items()} == scores
