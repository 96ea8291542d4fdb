"""solutions/ is the source; chapters/ must be exactly what the build command makes of it."""

import json
import re

import nbformat
import pytest

from aigc_lib.exercises import exercises_for
from aigc_lib.notebooks import CHAPTERS, SOLUTIONS, build_chapters, notebooks_in, render, student_edition

SOURCES = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = notebooks_in(SOLUTIONS)  # the chapters (with exercises), then the appendices (without)


def test_chapters_are_in_sync_with_solutions():
    drift = build_chapters(check=True)
    assert not drift, f"chapters/ drifted from solutions/: {drift}; run `python -m aigc_lib build-chapters`"


@pytest.mark.parametrize("src", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_hides_solutions_and_hidden_tests(src):
    text = (CHAPTERS / src.name).read_text(encoding="utf-8")
    for marker in ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"]:
        assert marker not in text
    nb = json.loads(text)
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert text.count("raise NotImplementedError") == sum(
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


def _copy_course(tmp_path):
    import shutil

    solutions, chapters = tmp_path / "solutions", tmp_path / "chapters"
    shutil.copytree(SOLUTIONS, solutions)
    shutil.copytree(CHAPTERS, chapters)
    return solutions, chapters


def test_what_a_frontend_rewrites_on_save_is_not_drift(tmp_path):
    solutions, chapters = _copy_course(tmp_path)
    path = chapters / SOURCES[0].name
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = 3
    nbformat.write(nb, path)
    assert build_chapters(solutions, chapters, check=True) == []


def test_the_builder_never_overwrites_a_learners_work(tmp_path):
    from aigc_lib.notebooks import EditedNotebook

    solutions, chapters = _copy_course(tmp_path)
    path = chapters / SOURCES[0].name
    nb = nbformat.read(path, as_version=4)
    solved = next(c for c in nb.cells if "raise NotImplementedError" in c.source)
    solved.source = "def my_answer():\n    return 42"
    nbformat.write(nb, path)
    source = nbformat.read(solutions / SOURCES[0].name, as_version=4)
    source.cells[0].source += "\n\nA new sentence."  # the course changed too
    nbformat.write(source, solutions / SOURCES[0].name)
    assert build_chapters(solutions, chapters, check=True) == [path]
    with pytest.raises(EditedNotebook, match="workspace"):
        build_chapters(solutions, chapters)
    assert "my_answer" in path.read_text()  # untouched
    build_chapters(solutions, chapters, force=True)
    assert "my_answer" in path.with_name(path.name + ".bak").read_text() and "my_answer" not in path.read_text()
    assert build_chapters(solutions, chapters) == []  # a chapter the builder wrote is its own to replace


def test_the_workspace_is_the_learners_own(tmp_path):
    from aigc_lib.notebooks import make_workspace

    copied, kept = make_workspace(tmp_path / "ws")
    assert [p.name for p in copied] == [p.name for p in NOTEBOOKS] and kept == []
    (tmp_path / "ws" / SOURCES[0].name).write_text("my work")
    copied, kept = make_workspace(tmp_path / "ws")
    assert copied == [] and len(kept) == len(NOTEBOOKS)
    assert (tmp_path / "ws" / SOURCES[0].name).read_text() == "my work"


@pytest.mark.parametrize("src", NOTEBOOKS, ids=lambda p: p.name)
def test_each_chapter_says_how_long_it_runs_and_where(src):
    """The first cell gives the running time at each budget, and the long cells it names by section
    (§N) are sections the chapter has."""
    nb = nbformat.read(src, as_version=4)
    intro = nb.cells[0].source
    assert "**Running time**" in intro and "standard budget" in intro and "AIGC_BUDGET=smoke" in intro
    sections = {
        m.group(1) for c in nb.cells if c.cell_type == "markdown" for m in re.finditer(r"^## (\d+)\. ", c.source, re.M)
    }
    named = set(re.findall(r"§(\d+)", intro))
    assert named <= sections, f"the intro names sections {sorted(named - sections)} that {src.name} does not have"
