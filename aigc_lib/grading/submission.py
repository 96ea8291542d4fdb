"""Read a learner's notebook and pick the cells to run, trusting nothing in it but its code.

Tests always come from the source (the exercise definitions in `aigc_lib.exercises`); from the
submission we take only the learner's solution cells, found by nbgrader `grade_id` as in the
source notebook, or — when a learner lost the metadata by copying cells around — by the last
cell that defines the exercise's function. Deleted, edited, duplicated or retyped test cells
therefore change nothing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from aigc_lib.exercises import Exercise
from aigc_lib.grading.sandbox import printable

MAX_NOTEBOOK_BYTES = 50 << 20
MAX_DEPTH = 6  # folders searched below a learner's folder for the notebook
MAX_CODE_CHARS = 200_000  # in all of a learner's solution cells together
MAX_JSON_TOKENS = 500_000  # brackets, commas and colons: a course notebook has a few thousand


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


def read_bytes(path: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """A regular file's bytes, at most `limit`: a symbolic link, FIFO or device is refused without
    being opened for reading, and a large file is refused before it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise UnreadableSubmission("the notebook is a symbolic link, not a file") from err
        if err.errno == errno.ENOENT:
            raise FileNotFoundError(str(path)) from err
        raise UnreadableSubmission(f"the notebook cannot be opened ({os.strerror(err.errno)})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableSubmission("the notebook is not a regular file")
        if info.st_size > limit:
            raise UnreadableSubmission(f"the notebook is larger than {limit >> 20} MB")
        data = os.read(fd, limit + 1)
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
        if len(data) > limit:
            raise UnreadableSubmission(f"the notebook is larger than {limit >> 20} MB")
        return data
    finally:
        os.close(fd)


def read_cells(path: Path) -> list[dict]:
    """The notebook's cells as plain dicts. JSON only: nothing in the file is executed or unpickled."""
    data = read_bytes(Path(path))
    tokens = sum(data.count(c) for c in (b"{", b"[", b",", b":"))
    if tokens > MAX_JSON_TOKENS:  # parsing builds objects many times the file's size: bound them first
        raise UnreadableSubmission(f"not a notebook we can read: more than {MAX_JSON_TOKENS:,} JSON items")
    try:
        nb = json.loads(data.decode("utf-8"))
    except UnreadableSubmission:
        raise
    except RecursionError as err:
        raise UnreadableSubmission("not a valid notebook (nested too deeply)") from err
    except (UnicodeDecodeError, ValueError) as err:
        raise UnreadableSubmission(f"not a valid notebook (JSON error: {printable(str(err), 120)})") from err
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
    code = sum(len(_source(cells[i])) for i in chosen)
    if code > MAX_CODE_CHARS:  # exercise solutions are a few hundred lines at most
        raise UnreadableSubmission(f"the solution cells hold {code:,} characters, more than {MAX_CODE_CHARS:,}")
    picked, seen = [], set()
    for i in sorted(chosen):
        cell_id = printable(chosen[i], 100)
        cell_id = cell_id if cell_id not in seen else f"{cell_id} (cell {i})"  # ids must stay distinct
        seen.add(cell_id)
        picked.append(LearnerCell(cell_id, _source(cells[i])))
    return picked
