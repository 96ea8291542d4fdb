"""solutions/ is the source; chapters/ must be exactly what the build command makes of it."""

import json
import re

import nbformat
import pytest

from aigc_lib.exercises import exercises_for
from aigc_lib.notebooks import CHAPTERS, SOLUTIONS, build_chapters, render, student_edition

SOURCES = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def test_chapters_are_in_sync_with_solutions():
    drift = build_chapters(check=True)
    assert not drift, f"chapters/ drifted from solutions/: {drift}; run `python -m aigc_lib build-chapters`"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_student_edition_hides_solutions_and_hidden_tests(src):
    text = (CHAPTERS / src.name).read_text(encoding="utf-8")
    for marker in ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"]:
        assert marker not in text
    nb = json.loads(text)
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert text.count('raise NotImplementedError') == sum(
        "### BEGIN SOLUTION" in "".join(c["source"]) for c in nbformat.read(src, as_version=4).cells
    )


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_exercise_cells_match_the_case_definitions(src):
    nb = nbformat.read(src, as_version=4)
    chapter = nb.metadata["aigc"]["chapter"]
    exercises = {ex.function: ex for ex in exercises_for(chapter).values()}
    graded = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            graded[meta["grade_id"]] = (meta["points"], "".join(cell.source))
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in cell.source and meta["grade_id"] in exercises
    assert len(graded) == len(exercises) >= 3
    for name, ex in exercises.items():
        points, source = graded[f"{name}_tests"]
        assert points == ex.points, f"{name}: nbgrader points {points} != case points {ex.points}"
        assert re.search(rf'check\("{re.escape(ex.key)}", {name}\)', source)
        assert f'check("{ex.key}", {name}, hidden=True)' in source


def test_student_edition_is_deterministic():
    nb = nbformat.read(SOURCES[0], as_version=4)
    assert render(student_edition(nb)) == render(student_edition(nb))
    assert nbformat.writes(nb) == nbformat.writes(nbformat.read(SOURCES[0], as_version=4))  # source untouched
