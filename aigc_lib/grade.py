"""Grade notebooks: `python -m aigc_lib.grade NOTEBOOK... [--out DIR]`.

Each notebook runs in a fresh kernel (per-cell and total time limits) on a copy in a private
temporary directory; the submission file is only read. The kernel then calls the learner's
functions on every visible and hidden case and writes plain tensors/JSON; this process loads
them (`weights_only=True`, no arbitrary pickle) and compares them with the library's references.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from aigc_lib.exercises import exercises_for
from aigc_lib.exercises.core import CaseResult, Raised, judge

DEFAULT_CELL_TIMEOUT = 300
DEFAULT_TOTAL_TIMEOUT = 1800


def chapter_of(nb: nbformat.NotebookNode, path: Path) -> str:
    """The chapter number: notebook metadata `aigc.chapter`, else the file name's NN_ prefix."""
    chapter = nb.metadata.get("aigc", {}).get("chapter")
    if chapter is None:
        match = re.match(r"(\d\d)_", path.name)
        if not match:
            raise ValueError(f"notebook: cannot tell the chapter of {path.name}; name it NN_topic.ipynb")
        chapter = match.group(1)
    return str(chapter)


def decode(meta: dict, tensors: dict[str, torch.Tensor], slot: str) -> Any:
    """Rebuild the learner's outcome from plain data."""
    kind = meta.get("kind")
    if kind == "tensor" and slot in tensors:
        return tensors[slot]
    if kind == "raised":
        return Raised(str(meta.get("type")), str(meta.get("message", "")))
    if kind in ("float", "int", "str") and type(meta.get("value")).__name__ == kind:
        return meta["value"]
    # any other object: an instance of an empty class bearing its type name, so feedback names it
    return type(str(meta.get("type", "unknown")), (), {})()


def _kernel_env(budget: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AIGC_STRICT", None)  # learners' check cells must not abort the run
    env.update(AIGC_BUDGET=budget, AIGC_GRADING="1", MPLBACKEND="Agg")
    return env


def execute(nb: nbformat.NotebookNode, workdir: Path, collect_to: Path, chapter: str, *,
            cell_timeout: int, total_timeout: int, budget: str) -> dict:
    """Run every code cell, then the collection cell; returns what happened during execution."""
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(workdir)}})
    log: dict[str, Any] = {"cell_errors": [], "timed_out_cells": [], "total_timeout": False, "kernel_died": False}
    start = time.monotonic()
    collector = nbformat.v4.new_code_cell(
        f"import aigc_lib.exercises.collect as _aigc_collect\n"
        f"_aigc_collect.collect({chapter!r}, globals(), {str(collect_to)!r})"
    )
    learner_cells = list(enumerate(nb.cells))
    nb.cells.append(collector)  # the in-memory copy only; the submission file is never written
    with client.setup_kernel(env=_kernel_env(budget)):
        try:
            for index, cell in learner_cells:
                if cell.cell_type != "code":
                    continue
                if time.monotonic() - start > total_timeout:
                    log["total_timeout"] = True
                    break
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    log["timed_out_cells"].append(index)
                errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                if errors and errors[0].ename == "KeyboardInterrupt":  # nbclient interrupted it at the limit
                    log["timed_out_cells"].append(index)
                elif errors:
                    log["cell_errors"].append({"cell": index, "error": f"{errors[0].ename}: {errors[0].evalue}"[:300]})
            client.execute_cell(collector, len(nb.cells) - 1)
        except DeadKernelError as err:
            log["kernel_died"] = str(err)[:300]
        except CellTimeoutError:
            log["timed_out_cells"].append("collection")
    log["seconds"] = round(time.monotonic() - start, 1)
    return log


def grade_notebook(path: str | Path, *, cell_timeout: int = DEFAULT_CELL_TIMEOUT,
                   total_timeout: int = DEFAULT_TOTAL_TIMEOUT, budget: str = "smoke") -> dict:
    """Execute and score one notebook; returns the report (see `write_report`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook: no such file {path}")
    nb = nbformat.read(path, as_version=4)
    chapter = chapter_of(nb, path)
    exercises = exercises_for(chapter)
    with tempfile.TemporaryDirectory(prefix="aigc-grade-") as tmp:
        workdir = Path(tmp)
        collect_to = workdir / "_aigc_outcomes"
        log = execute(nb, workdir, collect_to, chapter, cell_timeout=cell_timeout,
                      total_timeout=total_timeout, budget=budget)
        try:
            tensors = torch.load(str(collect_to) + ".pt", weights_only=True)
            metas = json.loads(Path(str(collect_to) + ".json").read_text(encoding="utf-8"))
            if not isinstance(tensors, dict) or not isinstance(metas, dict):
                raise ValueError("outcome files have the wrong structure")
        except Exception as err:  # noqa: BLE001 - a crashed or hostile kernel leaves anything behind
            tensors, metas = {}, {}
            log["collection_error"] = f"{type(err).__name__}: {err}"[:300]
    missing = {"kind": "raised", "type": "GradingError", "message": "the notebook did not run to the end"}
    report_exercises = []
    for key, exercise in exercises.items():
        results: list[CaseResult] = []
        for i, case in enumerate(exercise.all_cases()):
            slot = f"{key}/{i}"
            outcome = decode(metas.get(slot, missing), tensors, slot)
            results.append(judge(case, outcome, exercise.reference(**case.inputs()), hidden=i >= len(exercise.cases)))
        report_exercises.append({
            "key": key, "function": exercise.function, "hint": exercise.hint,
            "points": sum(r.points for r in results), "max_points": exercise.points,
            "cases": [_public(r) for r in results],
        })
    return {
        "notebook": str(path), "chapter": chapter,
        "score": sum(e["points"] for e in report_exercises),
        "max_score": sum(e["max_points"] for e in report_exercises),
        "exercises": report_exercises, "execution": log,
    }


def _public(r: CaseResult) -> dict:
    """A case result as shown to the learner: hidden cases keep their verdict, not their values."""
    d = asdict(r)
    if r.hidden:
        d["message"] = "" if r.passed else f"hidden test {r.status}"
        d["hint"] = ""
    return d


def to_markdown(report: dict) -> str:
    lines = [f"# Grade: {Path(report['notebook']).name} (chapter {report['chapter']})", "",
             f"**Score: {report['score']:g} / {report['max_score']:g}**", "",
             "| exercise | points | tests passed |", "|---|---|---|"]
    for e in report["exercises"]:
        passed = sum(c["status"] == "pass" for c in e["cases"])
        lines.append(f"| `{e['function']}` | {e['points']:g} / {e['max_points']:g} | {passed} / {len(e['cases'])} |")
    for e in report["exercises"]:
        bad = [c for c in e["cases"] if c["status"] != "pass"]
        if bad:
            lines += ["", f"## `{e['function']}`", "", f"Hint: {e['hint']}", ""]
            for c in bad:
                lines.append(f"- {c['case']}: {c['status']}" + (f" — {c['message']}" if c["message"] else ""))
                if c["hint"]:
                    lines.append(f"  - hint: {c['hint']}")
    ex = report["execution"]
    lines += ["", "## Execution", f"- ran for {ex.get('seconds', '?')} s"]
    lines += [f"- cell {c['cell']} raised {c['error']}" for c in ex["cell_errors"]]
    if ex["timed_out_cells"]:
        lines.append(f"- cells that hit the time limit: {ex['timed_out_cells']}")
    if ex["total_timeout"]:
        lines.append("- the notebook hit the total time limit; later cells did not run")
    if ex["kernel_died"]:
        lines.append(f"- the kernel died: {ex['kernel_died']}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> Path:
    """Write <stem>.json and <stem>.md atomically; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(report["notebook"]).stem
    for suffix, text in ((".json", json.dumps(report, indent=1)), (".md", to_markdown(report))):
        tmp = out_dir / f".{stem}{suffix}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / f"{stem}{suffix}")
    return out_dir / f"{stem}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aigc_lib.grade", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to grade (never modified)")
    parser.add_argument("--out", type=Path, default=Path("grading_reports"), help="where reports go")
    parser.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT, help="seconds per cell")
    parser.add_argument("--total-timeout", type=int, default=DEFAULT_TOTAL_TIMEOUT, help="seconds per notebook")
    parser.add_argument("--budget", default="smoke", choices=["smoke", "standard", "full"])
    args = parser.parse_args(argv)
    for nb_path in args.notebooks:
        report = grade_notebook(nb_path, cell_timeout=args.cell_timeout, total_timeout=args.total_timeout,
                                budget=args.budget)
        written = write_report(report, args.out)
        print(f"{nb_path}: {report['score']:g} / {report['max_score']:g}  (report: {written.with_suffix('.md')})")
        for e in report["exercises"]:
            print(f"  {e['function']:<24} {e['points']:g} / {e['max_points']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
