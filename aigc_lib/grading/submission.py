"""Read a learner's notebook and pick the cells to run, trusting nothing in it but its code.

Tests always come from the source (the exercise definitions in `aigc_lib.exercises`); from the
submission we take only the learner's solution cells, found by nbgrader `grade_id` as in the
source notebook, or — when a learner lost the metadata by copying cells around — by the last
cell that defines the exercise's function. Deleted, edited, duplicated or retyped test cells
therefore change nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from aigc_lib.exercises import Exercise

MAX_NOTEBOOK_BYTES = 50 << 20


class UnreadableSubmission(ValueError):
    """The file is not a notebook we can read; the message says why, in words a learner understands."""


@dataclass(frozen=True)
class LearnerCell:
    id: str  # the grade_id (or "cell-N" when found by function name)
    source: str


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def read_cells(path: Path) -> list[dict]:
    """The notebook's cells as plain dicts. JSON only: nothing in the file is executed or unpickled."""
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise UnreadableSubmission(f"the notebook is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
    try:
        nb = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UnreadableSubmission(f"not a valid notebook (JSON error: {str(err)[:120]})") from err
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        raise UnreadableSubmission("not a valid notebook: it has no list of cells")
    return [c for c in cells if isinstance(c, dict)]


def grade_id(cell: dict) -> str | None:
    meta = cell.get("metadata")
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    gid = nbgrader.get("grade_id") if isinstance(nbgrader, dict) else None
    return gid if isinstance(gid, str) else None


def solution_ids(source_cells: list[dict]) -> dict[str, str]:
    """function name -> grade_id of the source's solution cell that defines it."""
    ids = {}
    for cell in source_cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and grade_id(cell):
            for name in re.findall(r"^def (\w+)\(", _source(cell), flags=re.M):
                ids[name] = grade_id(cell)
    return ids


def learner_cells(cells: list[dict], exercises: list[Exercise], ids: dict[str, str]) -> list[LearnerCell]:
    """The learner's cells that define the exercises, in notebook order, each once."""
    chosen: dict[int, str] = {}
    for ex in exercises:
        gid = ids.get(ex.function)
        by_id = [i for i, c in enumerate(cells) if gid is not None and grade_id(c) == gid]
        defines = re.compile(rf"^def {re.escape(ex.function)}\(", flags=re.M)
        by_def = [i for i, c in enumerate(cells) if c.get("cell_type") == "code" and defines.search(_source(c))]
        # the grade_id'd cell if it still defines the function; else the last definition, as a kernel would
        pick = next((i for i in by_id if defines.search(_source(cells[i]))), by_def[-1] if by_def else None)
        if pick is None and by_id:
            pick = by_id[0]
        if pick is not None:
            chosen.setdefault(pick, grade_id(cells[pick]) or f"cell-{pick}")
    return [LearnerCell(chosen[i], _source(cells[i])) for i in sorted(chosen)]
