"""Generate the student edition (`chapters/`) from the authored notebooks (`solutions/`).

nbgrader's own preprocessors do the work, so an instructor's nbgrader reads our sources the same
way: solution regions become a stub raising NotImplementedError, hidden-test regions disappear,
outputs are cleared. `python -m aigc_lib build-chapters` writes them; `--check` reports drift.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions
from traitlets.config import Config

from aigc_lib.paths import CHAPTERS, ROOT, SOLUTIONS, WORKSPACE  # noqa: F401 - the builder's public names

CODE_STUB = '# YOUR CODE HERE\nraise NotImplementedError("exercise not done yet")'
TEXT_STUB = "YOUR ANSWER HERE"


def _preprocessors() -> list:
    config = Config()
    config.ClearSolutions.code_stub = {"python": CODE_STUB}
    config.ClearSolutions.text_stub = TEXT_STUB
    return [ClearSolutions(config=config), ClearHiddenTests(config=config), ClearOutput(config=config)]


def content_key(nb: nbformat.NotebookNode) -> str:
    """What the course authors: cell types, sources and nbgrader metadata. Not what a frontend
    rewrites on save (kernel and language metadata, cell ids, outputs, execution counts)."""
    cells = [[c.cell_type, c.source, c.get("metadata", {}).get("nbgrader", {})] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()


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
    nb.metadata.setdefault("aigc", {}).update(edition="student", generated=content_key(nb))
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """Canonical text of a notebook so that regenerating is byte-for-byte stable."""
    return nbformat.writes(nb, version=4) + "\n"


class EditedNotebook(RuntimeError):
    """A notebook in chapters/ was edited (a learner's work?): the builder will not overwrite it."""


def _edited(nb: nbformat.NotebookNode) -> bool:
    """True if the cells no longer match what the builder generated (the hash it recorded)."""
    return nb.metadata.get("aigc", {}).get("generated") != content_key(nb)


def notebooks_in(folder: Path) -> list[Path]:
    """The course's notebooks in `folder`: the chapters NN_topic, then the appendices AN_topic."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb")) + sorted(folder.glob("A[0-9]_*.ipynb"))


def build_chapters(
    solutions: Path = SOLUTIONS, chapters: Path = CHAPTERS, *, check: bool = False, force: bool = False
) -> list[Path]:
    """Write (or with `check=True` only compare) every chapter; returns the paths that differ(ed).

    Compares what the course authors, not what a frontend rewrites on save. A chapter whose
    cells were edited since it was generated (a learner solved it in place) is not overwritten:
    EditedNotebook says so, unless `force=True`, which first keeps a copy beside it (.bak)."""
    sources = notebooks_in(solutions)
    if not sources:
        raise FileNotFoundError(f"solutions: no NN_topic.ipynb notebooks in {solutions}")
    changed, edited = [], []
    chapters.mkdir(parents=True, exist_ok=True)
    for src in sources:
        new = student_edition(nbformat.read(src, as_version=4))
        dest = chapters / src.name
        old = nbformat.read(dest, as_version=4) if dest.exists() else None
        if old is not None and content_key(old) == content_key(new):
            continue  # the same cells: whatever a frontend rewrote is not drift
        changed.append(dest)
        if check:
            continue
        if old is not None and _edited(old):
            if not force:
                edited.append(dest)
                continue
            dest.with_name(dest.name + ".bak").write_text(dest.read_text(encoding="utf-8"), encoding="utf-8")
        dest.write_text(render(new), encoding="utf-8")
    if edited:
        raise EditedNotebook(
            "not overwritten, because their cells were edited since they were generated (your work?): "
            + ", ".join(str(p) for p in edited)
            + ". Work in your own copy (python -m aigc_lib workspace); "
            "to regenerate anyway, keeping a .bak copy of each: python -m aigc_lib build-chapters --force"
        )
    expected = {s.name for s in sources}
    changed += [p for p in sorted(chapters.glob("*.ipynb")) if p.name not in expected]  # strays
    return changed


def make_workspace(target: Path = WORKSPACE, chapters: Path = CHAPTERS) -> tuple[list[Path], list[Path]]:
    """Copy the student edition into a folder of the learner's own that the tests and the builder
    never touch. Never overwrites: returns (copied, already there)."""
    target.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for src in notebooks_in(chapters):
        dest = target / src.name
        if dest.exists():
            kept.append(dest)
            continue
        with open(dest, "x", encoding="utf-8") as f:  # "x": fails rather than overwrite
            f.write(src.read_text(encoding="utf-8"))
        copied.append(dest)
    return copied, kept
