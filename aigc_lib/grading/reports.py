"""What grading writes: per-learner feedback (Markdown, HTML), the gradebook, Gradescope's JSON.

Feedback shows, per exercise, the points, which tests failed and a hint; hidden tests show
only their verdict. It never shows hidden inputs, expected values, or the learner's stderr.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from pathlib import Path

STATUS_WORDS = {
    "pass": "passed",
    "fail": "wrong result",
    "error": "raised an error",
    "not implemented": "not implemented yet",
}


def md(text) -> str:
    """Learner-made text inside Markdown, as an inline code span: shown literally, never as
    Markdown, HTML or a link (GitHub autolinks bare URLs in ordinary text)."""
    text = " ".join(str(text).split())
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(text) -> str:
    """A CSV field that a spreadsheet shows as text, never runs as a formula."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", errors="replace")
    os.replace(tmp, path)


def feedback_markdown(report: dict) -> str:
    lines = [f"# Feedback: {md(report['student'])} — chapter {report['chapter']}", ""]
    if report["reason"]:
        lines += [f"**Your notebook could not be graded:** {md(report['reason'])}.", ""]
    lines += [
        f"**Score: {report['score']:g} / {report['max_score']:g}**",
        "",
        "| exercise | points | tests passed |",
        "|---|---|---|",
    ]
    for e in report["exercises"]:
        passed = sum(c["status"] == "pass" for c in e["cases"])
        lines.append(f"| `{e['function']}` | {e['points']:g} / {e['max_points']:g} | {passed} / {len(e['cases'])} |")
    for e in report["exercises"]:
        bad = [c for c in e["cases"] if c["status"] != "pass"]
        if not bad:
            continue
        lines += ["", f"## `{e['function']}`", ""]
        if all(c["status"] == "not implemented" for c in bad) and len(bad) == len(e["cases"]):
            lines.append("Not implemented yet.")
            continue
        for c in bad:
            detail = md(c["message"]) if not c["hidden"] else ""
            lines.append(
                f"- {md(c['case'])}: {STATUS_WORDS.get(c['status'], c['status'])}" + (f" — {detail}" if detail else "")
            )
        lines += ["", f"Hint: {e['hint']}"]
    if report["cell_errors"]:
        lines += ["", "## Cells that raised errors", ""]
        lines += [f"- {md(cell_id)}: {md(error)}" for cell_id, error in report["cell_errors"].items()]
    return "\n".join(lines) + "\n"


def feedback_html(report: dict) -> str:
    """The same feedback as a self-contained HTML page."""
    rows = "".join(
        f"<tr><td><code>{html.escape(e['function'])}</code></td><td>{e['points']:g} / {e['max_points']:g}</td>"
        f"<td>{sum(c['status'] == 'pass' for c in e['cases'])} / {len(e['cases'])}</td></tr>"
        for e in report["exercises"]
    )
    details = "".join(
        f"<h2><code>{html.escape(e['function'])}</code></h2><ul>"
        + "".join(
            f"<li>{html.escape(c['case'])}: {html.escape(STATUS_WORDS.get(c['status'], c['status']))}"
            + (f" — {html.escape(c['message'])}" if c["message"] and not c["hidden"] else "")
            + "</li>"
            for c in e["cases"]
            if c["status"] != "pass"
        )
        + f"</ul><p>Hint: {html.escape(e['hint'])}</p>"
        for e in report["exercises"]
        if any(c["status"] != "pass" for c in e["cases"])
    )
    reason = (
        f"<p><b>Your notebook could not be graded:</b> {html.escape(report['reason'])}</p>" if report["reason"] else ""
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Feedback {html.escape(report['student'])}</title>"
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}td,th{padding:.2em .8em}</style>"
        f"</head><body><h1>Feedback: {html.escape(report['student'])} — chapter {html.escape(report['chapter'])}</h1>"
        f"{reason}<p><b>Score: {report['score']:g} / {report['max_score']:g}</b></p>"
        f"<table><tr><th>exercise</th><th>points</th><th>tests passed</th></tr>{rows}</table>{details}</body></html>\n"
    )


GRADEBOOK_COLUMNS = [
    "assignment",
    "student_id",
    "timestamp",
    "status",
    "raw_score",
    "late_submission_penalty",
    "score",
    "max_score",
]


def gradebook_csv(reports: list[dict], assignment: str) -> str:
    """nbgrader-export-like columns, then one column of points per exercise, then the reason."""
    functions = [e["function"] for e in reports[0]["exercises"]] if reports else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*GRADEBOOK_COLUMNS, *functions, "reason"])
    for r in sorted(reports, key=lambda r: r["student"]):
        points = {e["function"]: e["points"] for e in r["exercises"]}
        numbers = [r["score"], 0, r["score"], r["max_score"], *(points.get(f, 0) for f in functions)]
        shown = [f"{x:g}" for x in numbers] if r["status"] != "error" else ["" for _ in numbers]  # not a zero
        writer.writerow(
            [cell(assignment), cell(r["student"]), r.get("graded_at", ""), r["status"], *shown, cell(r["reason"])]
        )
    return buf.getvalue()


def gradescope_results(report: dict) -> str:
    """Gradescope's autograder results.json: per exercise, a visible test (its visible cases, with
    feedback) and a test for its hidden cases that learners see only once grades are published;
    errors in the learner's cells (a SyntaxError, say) are in the top-level output."""
    tests = []
    for e in report["exercises"]:
        visible = [c for c in e["cases"] if not c["hidden"]]
        hidden = [c for c in e["cases"] if c["hidden"]]
        lines = [
            f"{'PASS' if c['status'] == 'pass' else 'FAIL'} {c['case']}"
            + (f": {c['message']}" if c["message"] and c["status"] != "pass" else "")
            for c in visible
        ]
        earned = sum(c["points"] for c in visible)
        if earned < sum(c["max_points"] for c in visible):
            lines.append(f"Hint: {e['hint']}")
        tests.append(_gradescope_test(f"{e['function']} (visible tests)", visible, "\n".join(lines), "visible"))
        if hidden:
            kinds = "; ".join(c["case"].removeprefix("hidden: ") for c in hidden)
            passed = sum(c["status"] == "pass" for c in hidden)
            text = f"hidden tests passed: {passed} / {len(hidden)} (they check: {kinds})"
            tests.append(_gradescope_test(f"{e['function']} (hidden tests)", hidden, text, "after_published"))
    output = [report["reason"]] if report["reason"] else []
    if report["cell_errors"]:
        output.append("Errors in your cells (fix these first: a function defined after an error does not exist):")
        output += [f"- {cell}: {error}" for cell, error in report["cell_errors"].items()]
    output.append(f"Graded with isolation: {report['isolation']}.")
    return json.dumps(
        {
            "score": report["score"],
            "tests": tests,
            "output": "\n".join(output),
            "visibility": "visible",
            "stdout_visibility": "hidden",
        },
        indent=1,
    )


def _gradescope_test(name: str, cases: list[dict], output: str, visibility: str) -> dict:
    score, max_score = sum(c["points"] for c in cases), sum(c["max_points"] for c in cases)
    return {
        "name": name,
        "score": score,
        "max_score": max_score,
        "status": "passed" if score == max_score else "failed",
        "output": output,
        "visibility": visibility,
    }


def gradescope_upload_problem(message: str, max_score: float) -> str:
    """results.json for an upload the grader cannot take (no notebook, several): what to do instead."""
    return json.dumps(
        {
            "score": 0,
            "output": message,
            "tests": [
                {
                    "name": "upload",
                    "score": 0,
                    "max_score": max_score,
                    "status": "failed",
                    "output": message,
                    "visibility": "visible",
                }
            ],
        },
        indent=1,
    )


def summary_markdown(reports: list[dict], assignment: str) -> str:
    graded = [r for r in reports if r["status"] == "graded"]
    failed = [r for r in reports if r["status"] != "graded"]
    lines = [
        f"# Grading summary — {assignment}",
        "",
        f"- submissions: {len(reports)}",
        f"- graded: {len(graded)}",
        f"- could not be graded: {len(failed)}",
    ]
    if graded:
        lines += [f"- isolation: {graded[0]['isolation']}", *(f"  - {g}" for g in graded[0].get("guarantees", []))]
    if graded:
        scores = sorted(r["score"] for r in graded)
        lines.append(f"- median score: {scores[len(scores) // 2]:g} / {graded[0]['max_score']:g}")
    if failed:
        lines += ["", "## Not graded", ""] + [f"- {md(r['student'])}: {md(r['reason'])}" for r in failed]
    troubled = [r for r in graded if r["notes"] or r["cell_errors"]]
    if troubled:
        lines += ["", "## Errors, crashes and limits (graded; only the affected exercises lost points)", ""]
        for r in troubled:
            problems = [*r["notes"], *(f"cell {c}: {e}" for c, e in r["cell_errors"].items())]
            lines.append(f"- {md(r['student'])}: {md('; '.join(problems))}")
    return "\n".join(lines) + "\n"


def gradescope_autograder_zip(chapter: str, target: Path) -> None:
    """The zip Gradescope takes as an autograder: setup.sh and run_autograder at its root (from
    gradescope/ in the repository, the chapter filled in) and the course they install."""
    import zipfile

    from aigc_lib.exercises import exercises_for
    from aigc_lib.paths import ROOT

    exercises_for(chapter)  # an unknown chapter fails here, not on Gradescope
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("setup.sh", "run_autograder"):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16
            z.writestr(info, (ROOT / "gradescope" / name).read_text().replace("__CHAPTER__", chapter))
        files = [
            ROOT / "requirements.txt",
            ROOT / "pyproject.toml",
            ROOT / "README.md",
            *sorted((ROOT / "aigc_lib").rglob("*")),
            *sorted((ROOT / "solutions").glob("*.ipynb")),
        ]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                z.write(path, path.relative_to(ROOT).as_posix())
