"""The course as a website: `python -m aigc_lib book` builds it with Jupyter Book 1.

    pip install -r requirements-book.txt          # the optional toolchain (the `book` extra)
    python -m aigc_lib book                       # every chapter, executed at $AIGC_BUDGET (default standard)
    python -m aigc_lib book --no-execute --strict # the pages without outputs; warnings are errors

The toolchain is optional: this module imports without it and says how to install it when a build
needs it. What a build does:

1. stages the pages in OUT/_src/ (the notebooks themselves are never edited):
   - `_toc.yml`, generated from the notebooks in solutions/ (`NN_*.ipynb`, then `A[0-9]_*.ipynb`),
     so a new chapter appears without editing anything; then the glossary and the errata;
   - `_config.yml`: book/_config.yml with this run's execution settings;
   - `intro.md` (book/intro.md), `errata.md` (docs/errata.md), `glossary.md` (generated from each
     chapter's "Glossary" table);
   - a copy of each authored notebook with a box of links to its notebooks added under the title,
     its solution cells folded (`hide-input`), and `\\|` inside a table's math written `\\Vert`;
   - `_notebooks/`: the student and instructor editions, offered as downloads;
   - `checkpoints/`, a link to solutions/checkpoints/: the kernel runs beside the staged notebook,
     as it runs in solutions/, so chapters share their trained models with the course;
2. runs `jupyter-book build` with AIGC_BUDGET set for the kernels and jupyter-cache as the
   executor: a chapter whose code cells did not change since its last run at this budget is not
   executed again (one cache per budget and weights choice, in OUT/.jupyter_cache/BUDGET-WEIGHTS, e.g.
   standard-pretrained; the cache keys on the notebook's code, not on the library, so after a library
   change pass --fresh);
3. writes the site to OUT/_build/html/.

The module is also a Sphinx extension of the book (`setup` below): it draws the notebooks' widgets
statically from their saved state, so no widget manager is fetched from a CDN, and keeps each script
once per page.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from aigc_lib import pretrained
from aigc_lib.notebooks import notebooks_in
from aigc_lib.paths import CHAPTERS, ROOT, SOLUTIONS

BOOK = ROOT / "book"  # the site's own files: _config.yml, intro.md
ERRATA = ROOT / "docs" / "errata.md"
OUT = ROOT / "build" / "book"  # default output (git-ignored): _src/, _build/html/, .jupyter_cache/
INSTALL_HINT = "pip install -r requirements-book.txt"  # or: pip install -e ".[book]"
TOOLCHAIN = {"jupyter_book": "jupyter-book", "sphinx-mathjax-offline": "sphinx-mathjax-offline"}
BUDGETS = ("smoke", "standard", "full")
CELL_TIMEOUT = {"smoke": 300, "standard": 1800, "full": 7200}  # seconds per cell
REFERENCE_PAGES = ("glossary", "errata")
_GLOSSARY_HEADING = re.compile(r"^#{1,6}[^\n]*\b(?:Glossary|术语表)", re.IGNORECASE | re.MULTILINE)
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_INLINE_MATH = re.compile(r"(\$\$?)(.+?)\1")


class ToolchainMissing(RuntimeError):
    """The book's optional toolchain (jupyter-book and friends) is not installed."""


def require_toolchain() -> None:
    """Raise ToolchainMissing, naming the missing packages and the install command, unless the
    book's toolchain is importable."""
    missing = [dist for module, dist in TOOLCHAIN.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ToolchainMissing(
            f"building the book needs {', '.join(missing)} (the optional `book` toolchain, not in the default "
            f'install). Install it with: {INSTALL_HINT}   (or: pip install -e ".[book]")'
        )


# --- what the book contains ----------------------------------------------------------------------


@dataclass(frozen=True)
class Chapter:
    """One notebook of the course: its id ("03", "A1"), file stem and title."""

    id: str
    stem: str
    title: str
    path: Path


def find_chapters(solutions: Path = SOLUTIONS) -> list[Chapter]:
    """The course's notebooks in reading order: chapters NN_*, then appendices A[0-9]_*."""
    found = []
    for path in notebooks_in(solutions):
        nb = json.loads(path.read_text(encoding="utf-8"))
        found.append(Chapter(path.stem.split("_")[0], path.stem, _title(nb, path.stem), path))
    return found


def _title(nb: dict, fallback: str) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb.get("metadata", {}).get("aigc", {}).get("title") or fallback


def select(chapters: list[Chapter], wanted: list[str] | None) -> list[Chapter]:
    """The chapters named in `wanted` ("00", "3", "a1", or a stem), in reading order; all if None."""
    if not wanted:
        return chapters
    by_key = {}
    for ch in chapters:
        by_key.update({ch.id.lower(): ch, ch.stem.lower(): ch})
        if ch.id.isdigit():
            by_key[str(int(ch.id))] = ch
    unknown = [w for w in wanted if w.lower() not in by_key]
    if unknown:
        raise ValueError(f"--chapters: unknown {unknown}; expected some of {[ch.id for ch in chapters]}")
    chosen = {by_key[w.lower()].stem for w in wanted}
    return [ch for ch in chapters if ch.stem in chosen]


def toc_yaml(chapters: list[Chapter], reference: tuple[str, ...] = REFERENCE_PAGES) -> str:
    """The Jupyter Book table of contents: intro, the chapters, the appendices, the reference pages."""
    lines = ["# Generated by python -m aigc_lib book from the notebooks in solutions/: do not edit.", "format: jb-book"]
    lines += ["root: intro", "parts:"]
    parts = [
        ("Chapters", [ch.stem for ch in chapters if ch.id[0].isdigit()]),
        ("Appendices", [ch.stem for ch in chapters if not ch.id[0].isdigit()]),
        ("Reference", list(reference)),
    ]
    for caption, files in parts:
        if files:
            lines += [f'  - caption: "{caption}"', "    chapters:"] + [f"      - file: {f}" for f in files]
    return "\n".join(lines) + "\n"


# --- the glossary ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One row of a chapter's glossary table (Markdown, math as the chapter writes it)."""

    english: str
    chinese: str
    note: str
    chapter: str  # the chapter's id, e.g. "03"
    stem: str


def split_row(line: str) -> list[str]:
    """The cells of a Markdown table row; an escaped pipe (`\\|`) stays inside its cell."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [cell.strip() for cell in _CELL_SPLIT.split(body)]


def tex_safe(text: str) -> str:
    """`\\|` (TeX's double bar) inside $...$ written `\\Vert`: in a Markdown table the table parser
    takes `\\|` for an escaped cell separator and hands MathJax a single bar (KL(q | p))."""
    return _INLINE_MATH.sub(lambda m: m.group(1) + m.group(2).replace("\\|", "\\Vert ") + m.group(1), text)


def glossary_terms(chapter: Chapter) -> list[Term]:
    """The rows of the chapter's glossary: the first table after a heading that says Glossary/术语表.
    Raises ValueError when the section exists but its table is malformed (a row with too many cells)."""
    nb = json.loads(chapter.path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        text = "".join(cell.get("source", ""))
        found = _GLOSSARY_HEADING.search(text) if cell["cell_type"] == "markdown" else None
        if found:
            return _parse_table(text[found.end() :], chapter)
    return []


def _parse_table(text: str, chapter: Chapter) -> list[Term]:
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.lstrip().startswith("|"):
            rows.append(split_row(line))
        elif rows:
            break  # the table ended
    if len(rows) < 3 or not all(set(c) <= set(":- ") for c in rows[1]):
        raise ValueError(f"{chapter.path.name}: the Glossary section has no Markdown table (header, ---, rows)")
    width = len(rows[0])
    terms = []
    for row in rows[2:]:
        if len(row) != width:
            raise ValueError(
                f"{chapter.path.name}: glossary row {' | '.join(row)!r} has {len(row)} cells, the header {width} "
                "(a `|` inside a cell must be written `\\|`)"
            )
        english, chinese, *rest = row
        terms.append(Term(english, chinese, rest[0] if rest else "", chapter.id, chapter.stem))
    return terms


def glossary_page(chapters: list[Chapter], linked: set[str] | None = None) -> str:
    """The glossary page (MyST Markdown): every chapter's terms in one table, in English
    alphabetical order, each with its chapter (a link when that chapter is in this build)."""
    linked = {ch.stem for ch in chapters} if linked is None else linked
    terms = [t for ch in chapters for t in glossary_terms(ch)]
    terms.sort(key=lambda t: (re.sub(r"[^a-z0-9 ]", "", t.english.lower()), t.chapter))
    lines = [
        "# Glossary · 术语表",
        "",
        f"Every chapter ends with a glossary of the terms it introduces, in English and Chinese. Here are "
        f"all {len(terms)} entries of the {len(chapters)} notebooks, in English alphabetical order; a term "
        "several chapters use appears once per chapter, with what that chapter means by it.",
        "",
        "| English | 中文 | meaning | chapter |",
        "|---|---|---|---|",
    ]
    for t in terms:
        where = f"{{doc}}`{t.chapter} <{t.stem}>`" if t.stem in linked else t.chapter
        lines.append(f"| {tex_safe(t.english)} | {tex_safe(t.chinese)} | {tex_safe(t.note)} | {where} |")
    return "\n".join(lines) + "\n"


# --- diagrams -------------------------------------------------------------------------------------

_MERMAID_BLOCK = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MERMAID_NODE = re.compile(r"^(\w+)\s*(?:(\(\()(.*?)\)\)|(\[)(.*?)\]|(\()(.*?)\)|(\{)(.*?)\})?$")
_MERMAID_SHAPES = {"((": "circle", "[": "box", "(": "box", "{": "diamond", None: "box"}


def mermaid_to_dot(source: str) -> str | None:
    """A Mermaid flowchart (`graph TD|LR`, nodes `A[box]`, `A((circle))`, `A(rounded)`, `A{choice}`,
    edges `-->`, chains `A --> B --> C`) as Graphviz DOT, or None for anything else.

    JupyterLab draws Mermaid itself; a static site would need mermaid.js from a CDN, so the book draws
    these diagrams at build time with Graphviz instead."""
    lines = [ln.strip() for ln in source.strip().splitlines() if ln.strip() and not ln.strip().startswith("%%")]
    head = re.fullmatch(r"(?:graph|flowchart)\s+(TD|TB|LR|RL|BT)", lines[0]) if lines else None
    if head is None:
        return None
    nodes: dict[str, tuple[str, str]] = {}
    edges = []
    for line in lines[1:]:
        ids = []
        for part in (p.strip() for p in line.split("-->")):
            found = _MERMAID_NODE.match(part)
            if not found:
                return None
            name, groups = found[1], found.groups()[1:]
            shape, label = next(((groups[i], groups[i + 1]) for i in range(0, 8, 2) if groups[i]), (None, None))
            if label is not None or name not in nodes:
                text = re.sub(r"<br\s*/?>", "\n", label if label is not None else name).strip('"')
                nodes[name] = (_MERMAID_SHAPES[shape], text)
            ids.append(name)
        edges += list(zip(ids, ids[1:], strict=False))
    rankdir = {"TD": "TB"}.get(head[1], head[1])
    out = [
        "digraph {",
        f"  rankdir={rankdir};",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", color="#4a6fa5", fontname="sans-serif"];',
        '  edge [color="#4a6fa5"];',
    ]
    for name, (shape, text) in nodes.items():
        label = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        out.append(f'  {name} [shape={shape}, label="{label}"];')
    out += [f"  {a} -> {b};" for a, b in edges]
    return "\n".join(out + ["}"])


def draw_diagrams(markdown: str, graphviz: bool) -> str:
    """Mermaid blocks as Graphviz figures (`graphviz`: the `dot` program is there) or, where a block
    cannot be converted or Graphviz is missing, as its source in a plain code block (no warning)."""

    def replace(block: re.Match) -> str:
        dot = mermaid_to_dot(block[1]) if graphviz else None
        if dot is None:
            return "```text\n" + block[1] + "```"
        return "```{graphviz}\n" + dot + "\n```"

    return _MERMAID_BLOCK.sub(replace, markdown)


# --- staging --------------------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> None:
    """Write only when the content changed: Sphinx then re-reads only what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _links_cell(ch: Chapter, budget_line: str, repo_url: str | None, branch: str) -> str:
    student = f"_notebooks/student/{ch.stem}.ipynb"
    teacher = f"_notebooks/solutions/{ch.stem}_solutions.ipynb"
    lines = [
        ":::{admonition} This chapter's notebooks",
        ":class: tip",
        "",
        f"- **Student edition**, the exercises left for you: {{download}}`{ch.stem}.ipynb <{student}>`",
        f"- **Instructor edition**, with the solutions (this page): {{download}}`{ch.stem}_solutions.ipynb <{teacher}>`",
    ]
    if repo_url:
        repo = repo_url.rstrip("/")
        lines.append(
            f"- On GitHub: [student edition]({repo}/blob/{branch}/chapters/{ch.stem}.ipynb) · "
            f"[instructor edition]({repo}/blob/{branch}/solutions/{ch.stem}.ipynb)"
        )
        match = re.match(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?$", repo)
        if match:
            binder = (
                f"https://mybinder.org/v2/gh/{match[1]}/{match[2]}/{branch}?urlpath=lab/tree/chapters/{ch.stem}.ipynb"
            )
            lines.append(
                f"- Launch the student edition on [Binder]({binder}) (installs requirements.txt: slow to start)"
            )
    lines += [
        "- On your machine: `pip install -r requirements.txt`, then `python -m aigc_lib workspace` copies the "
        "student edition into `workspace/`, yours to edit: `jupyter lab workspace/`",
        "",
        budget_line,
        ":::",
    ]
    return "\n".join(lines)


def staged_notebook(
    ch: Chapter, budget_line: str, repo_url: str | None = None, branch: str = "main", graphviz: bool = True
) -> str:
    """The authored notebook as the site shows it: a box of links under the title, solution cells
    folded, table math made TeX-safe, Mermaid drawn by Graphviz. Code cells are unchanged, so the
    execution cache still matches."""
    nb = nbformat.read(ch.path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = "\n".join(tex_safe(ln) if ln.lstrip().startswith("|") else ln for ln in cell.source.split("\n"))
            cell.source = draw_diagrams(text, graphviz)
        elif cell.metadata.get("nbgrader", {}).get("solution"):
            tags = cell.metadata.setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    box = nbformat.v4.new_markdown_cell(_links_cell(ch, budget_line, repo_url, branch))
    box.id = "aigc-book-notebook-links"
    nb.cells.insert(at, box)
    return nbformat.writes(nb)


def cache_dir(out: Path, budget: str) -> Path:
    """The execution cache of a build at `budget` with the current weights choice ($AIGC_WEIGHTS): outputs
    computed with trained models are never shown as the packaged ones', or the other way round."""
    return out / ".jupyter_cache" / f"{budget}-{pretrained.choice()}"


def budget_note(budget: str, execute: bool) -> str:
    if not execute:
        return "This build shows the notebooks without outputs (built with `--no-execute`)."
    weights = (
        " Models were loaded from the course's packaged weights (`AIGC_WEIGHTS=pretrained`), not trained, "
        "where a cell says so."
        if pretrained.choice() == "pretrained"
        else ""
    )
    return (
        f"The outputs on these pages were computed at the **`{budget}`** budget "
        f"(`AIGC_BUDGET={budget}`; the first output of each chapter names the device and the weights).{weights}"
    )


def stage(
    out: Path,
    chapters: list[Chapter],
    *,
    all_chapters: list[Chapter] | None = None,
    budget: str = "standard",
    execute: bool = True,
    repo_url: str | None = None,
    branch: str = "main",
    solutions: Path = SOLUTIONS,
    student: Path = CHAPTERS,
) -> Path:
    """Write the book's sources into OUT/_src/ and return that folder (needs PyYAML for _config.yml)."""
    import yaml  # a dependency of jupyter-book; only a build needs it

    src = out / "_src"
    src.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    execution = config.setdefault("execute", {})
    execution["execute_notebooks"] = "cache" if execute else "off"
    execution["cache"] = str(cache_dir(out, budget).resolve())
    execution["timeout"] = CELL_TIMEOUT[budget]
    note = budget_note(budget, execute)
    config.setdefault("parse", {}).setdefault("myst_substitutions", {})["budget_note"] = note
    if repo_url:
        config["repository"] = {**config.get("repository", {}), "url": repo_url, "branch": branch}
        config.setdefault("html", {})["use_repository_button"] = True
    _write_if_changed(src / "_config.yml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    _write_if_changed(src / "_toc.yml", toc_yaml(chapters))
    _write_if_changed(src / "intro.md", (BOOK / "intro.md").read_text(encoding="utf-8"))
    _write_if_changed(src / "errata.md", ERRATA.read_text(encoding="utf-8"))
    linked = {ch.stem for ch in chapters}
    graphviz = shutil.which("dot") is not None
    if not graphviz:
        print("note: Graphviz's `dot` is not installed: diagrams appear as their Mermaid source", file=sys.stderr)
    _write_if_changed(src / "glossary.md", glossary_page(all_chapters or chapters, linked))
    for ch in chapters:
        _write_if_changed(src / f"{ch.stem}.ipynb", staged_notebook(ch, note, repo_url, branch, graphviz))
        for source, dest in (
            (student / f"{ch.stem}.ipynb", src / "_notebooks" / "student" / f"{ch.stem}.ipynb"),
            (ch.path, src / "_notebooks" / "solutions" / f"{ch.stem}_solutions.ipynb"),
        ):
            if not source.exists():
                raise FileNotFoundError(f"{source}: missing; run `python -m aigc_lib build-chapters`")
            _write_if_changed(dest, source.read_text(encoding="utf-8"))
    stale = {p.stem for p in src.glob("*.ipynb")} - linked
    for stem in stale:  # a chapter left out of this build: not a page any more
        (src / f"{stem}.ipynb").unlink()
    checkpoints = src / "checkpoints"
    if not checkpoints.exists() and not checkpoints.is_symlink():
        (solutions / "checkpoints").mkdir(exist_ok=True)
        try:
            checkpoints.symlink_to((solutions / "checkpoints").resolve(), target_is_directory=True)
        except OSError:  # no symlinks (Windows without developer mode): checkpoints stay in the build
            checkpoints.mkdir()
    return src


# --- the build ------------------------------------------------------------------------------------


def build(
    *,
    out: Path = OUT,
    budget: str | None = None,
    chapters: list[str] | None = None,
    execute: bool = True,
    strict: bool = False,
    fresh: bool = False,
    repo_url: str | None = None,
    branch: str = "main",
    quiet: bool = False,
) -> Path:
    """Build the website; returns the folder of its index.html. Raises ToolchainMissing without the
    toolchain, ValueError for a bad argument and RuntimeError when jupyter-book fails."""
    require_toolchain()
    budget = (budget or os.environ.get("AIGC_BUDGET") or "standard").strip().lower()
    if budget not in BUDGETS:
        raise ValueError(f"--budget: expected one of {', '.join(BUDGETS)}, got {budget!r}")
    everything = find_chapters()
    if not everything:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {SOLUTIONS}")
    chosen = select(everything, chapters)
    out = Path(out).resolve()
    if fresh:
        shutil.rmtree(cache_dir(out, budget), ignore_errors=True)
    src = stage(out, chosen, all_chapters=everything, budget=budget, execute=execute, repo_url=repo_url, branch=branch)
    env = {**os.environ, "AIGC_BUDGET": budget, "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg")}
    # this checkout's aigc_lib for jupyter-book's process (kernel_wait, the Sphinx extension) and the kernels
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("AIGC_STRICT", None)
    if strict:
        env["AIGC_STRICT"] = "1"  # a failing check in a solution raises, so the build fails
    # nbclient's waits for the kernel in slices: a missed zmq wake-up would cost a cell's timeout (kernel_wait)
    run_jupyter_book = "import aigc_lib.kernel_wait as w; w.install(); from jupyter_book.cli.main import main; main()"
    command = [sys.executable, "-c", run_jupyter_book, "build", str(src)]
    command += ["--path-output", str(out), "--builder", "html"]
    if strict:
        command += ["-W", "--keep-going"]
    if fresh:
        command += ["--all"]  # re-read every page, or Sphinx would not ask for the outputs again
    if quiet:
        command += ["-q"]
    done = subprocess.run(command, env=env, cwd=src)
    html = out / "_build" / "html"
    if done.returncode != 0:
        raise RuntimeError(
            f"jupyter-book build failed (exit {done.returncode}); its messages are above"
            + (f", execution reports in {out / '_build' / 'html' / 'reports'}" if execute else "")
        )
    return html


# --- a Sphinx extension the book loads (book/_config.yml: extra_extensions) ------------------------

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def widget_html(model_id: str, state: dict) -> str:
    """A widget drawn as static HTML from the notebook's saved widget state: sliders as their values,
    progress bars as <progress> with tqdm's text, Output widgets as their outputs (figures included).

    A static page has no kernel to move a slider, and the JavaScript widget manager would come from a
    CDN; this shows what the widget showed when the notebook ran, and works offline."""
    from html import escape

    model = state.get(model_id)
    if model is None:
        return ""
    kind, s = model.get("model_name", ""), model.get("state", {})
    label = escape(str(s.get("description", "")))
    if kind in ("VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel"):
        children = "".join(widget_html(c.removeprefix("IPY_MODEL_"), state) for c in s.get("children", []))
        interact = "widget-interact" in s.get("_dom_classes", [])
        box = f'<div class="aigc-widget-{"row" if kind == "HBoxModel" else "column"}">{children}</div>'
        if interact:
            note = '<p class="aigc-widget-note">Interactive in JupyterLab; this page shows the first setting.</p>'
            return f'<div class="aigc-widget-interact">{note}{box}</div>'
        return box
    if kind == "SelectionSliderModel" or kind in ("DropdownModel", "RadioButtonsModel", "ToggleButtonsModel"):
        labels, index = s.get("_options_labels", []), s.get("index")
        value = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else ""
        return f'<div class="aigc-widget-control">{label}: <b>{escape(str(value))}</b></div>'
    if kind.endswith(("SliderModel", "TextModel", "CheckboxModel")) or kind in ("BoundedFloatTextModel",):
        return f'<div class="aigc-widget-control">{label}: <b>{escape(str(s.get("value", "")))}</b></div>'
    if kind in ("HTMLModel", "LabelModel", "HTMLMathModel"):
        value = s.get("value", "")
        return f'<span class="aigc-widget-text">{value if kind != "LabelModel" else escape(value)}</span>'
    if kind in ("FloatProgressModel", "IntProgressModel"):
        return f'<progress class="aigc-widget-progress" value="{s.get("value", 0)}" max="{s.get("max", 1)}"></progress>'
    if kind == "OutputModel":
        return "".join(_output_html(o) for o in s.get("outputs", []))
    return ""


def _output_html(output: dict) -> str:
    from html import escape

    if output.get("output_type") == "stream":
        return f'<pre class="aigc-widget-stream">{escape("".join(output.get("text", "")))}</pre>'
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            payload = "".join(data[mime]).replace("\n", "")
            return f'<img class="aigc-widget-image" alt="figure" src="data:{mime};base64,{payload}"/>'
    if "text/html" in data:
        return "".join(data["text/html"])
    if "text/plain" in data:
        return f"<pre>{escape(''.join(data['text/plain']))}</pre>"
    return ""


def _static_widgets(app, doctree, docname: str) -> None:
    """Replace each widget view of a notebook page by its static drawing (widget_html)."""
    from docutils import nodes

    try:
        from myst_nb.sphinx_ import NbMetadataCollector

        saved = NbMetadataCollector.get_js_files(app.env, docname).get("ipywidgets_state")
    except (ImportError, KeyError, AttributeError):
        return
    if not saved or app.builder.format != "html":
        return
    state = json.loads(saved[1]["body"].replace("<\\/", "</")).get("state", {})
    for node in list(doctree.findall(nodes.raw)):
        text = node.astext()
        if WIDGET_VIEW not in text:
            continue
        views = re.findall(r'"model_id":\s*"([0-9a-f]+)"', text)
        html = "".join(widget_html(model_id, state) for model_id in views)
        node.replace_self(nodes.raw("", f'<div class="aigc-widget">{html}</div>', format="html"))


def _page_scripts(app, pagename, templatename, context, doctree) -> None:
    """Each script once per page: Jupyter Book 1 registers the inline scripts of sphinx-thebe and
    sphinx-togglebutton twice (once with filename None, once ""), and the second
    `const THEBE_JS_URL` is a JavaScript error on every page. The saved widget state goes too: the
    widgets are drawn statically (`_static_widgets`), so no widget manager reads it."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        if attributes.get("type") == WIDGET_STATE:
            continue
        name = getattr(script, "filename", script) or ""  # the same inline script comes as None and as ""
        key = (str(name), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: the builder's own list, restored before each page


WIDGET_CSS = """
.aigc-widget-interact { border-left: 3px solid #4a6fa5; padding-left: .75em; margin: .5em 0; }
.aigc-widget-note { font-size: .85em; color: #555; margin: 0 0 .3em; }
.aigc-widget-row { display: flex; align-items: center; gap: .5em; flex-wrap: wrap; }
.aigc-widget-column { display: flex; flex-direction: column; gap: .2em; }
.aigc-widget-control { font-family: var(--pst-font-family-monospace, monospace); font-size: .85em; }
.aigc-widget-progress { width: 12em; }
.aigc-widget-text { font-family: var(--pst-font-family-monospace, monospace); font-size: .85em; }
.aigc-widget-image { max-width: 100%; }
"""


def _add_widget_css(app) -> None:
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "aigc-widgets.css").write_text(WIDGET_CSS, encoding="utf-8")


def setup(app) -> dict:
    """Sphinx's entry point: `aigc_lib.book` is also an extension of the book it builds."""
    app.connect("doctree-resolved", _static_widgets)
    app.connect("html-page-context", _page_scripts, priority=900)  # after the others add theirs
    app.connect("builder-inited", _add_widget_css)
    app.add_css_file("aigc-widgets.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
