"""Generate the student edition (`chapters/`) from the authored notebooks (`solutions/`).

nbgrader's own preprocessors do the work, so an instructor's nbgrader reads our sources the same
way: solution regions become a stub raising NotImplementedError, hidden-test regions disappear,
outputs are cleared. `python -m aigc_lib build-chapters` writes them; `--check` reports drift.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
CHAPTERS = ROOT / "chapters"

CODE_STUB = '# YOUR CODE HERE\nraise NotImplementedError("exercise not done yet")'
TEXT_STUB = "YOUR ANSWER HERE"


def _preprocessors() -> list:
    config = Config()
    config.ClearSolutions.code_stub = {"python": CODE_STUB}
    config.ClearSolutions.text_stub = TEXT_STUB
    return [ClearSolutions(config=config), ClearHiddenTests(config=config), ClearOutput(config=config)]


def student_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The learner's copy: solutions stubbed, hidden tests removed, outputs and counts cleared."""
    nb = copy.deepcopy(nb)
    resources: dict = {}
    for pre in _preprocessors():
        nb, resources = pre.preprocess(nb, resources)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.setdefault("aigc", {})["edition"] = "student"
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """Canonical text of a notebook so that regenerating is byte-for-byte stable."""
    return nbformat.writes(nb, version=4) + "\n"


def build_chapters(solutions: Path = SOLUTIONS, chapters: Path = CHAPTERS, *, check: bool = False) -> list[Path]:
    """Write (or with `check=True` only compare) every chapter; returns the paths that differ(ed)."""
    sources = sorted(solutions.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"solutions: no NN_topic.ipynb notebooks in {solutions}")
    changed = []
    chapters.mkdir(parents=True, exist_ok=True)
    for src in sources:
        text = render(student_edition(nbformat.read(src, as_version=4)))
        dest = chapters / src.name
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            changed.append(dest)
            if not check:
                dest.write_text(text, encoding="utf-8")
    expected = {s.name for s in sources}
    changed += [p for p in sorted(chapters.glob("*.ipynb")) if p.name not in expected]  # strays
    return changed
