"""The course's website (aigc_lib.book): what goes into it, checked without the toolchain, and one
real build of a few pages with warnings as errors where the toolchain (`requirements-book.txt`) is
installed; the default install skips that build (AIGC_REQUIRE_BOOK=1, as in CI, makes a missing
toolchain a failure)."""

import importlib
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from aigc_lib import book
from aigc_lib.__main__ import main
from aigc_lib.notebooks import notebooks_in
from aigc_lib.paths import CHAPTERS, SOLUTIONS

CHAPTER_LIST = book.find_chapters()


def _fake_notebook(path, markdown: str = "# Title\n", code: str = "x = 1") -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


# --- the table of contents --------------------------------------------------------------------------


def test_toc_lists_every_notebook_of_solutions_in_reading_order():
    stems = [p.stem for p in notebooks_in(SOLUTIONS)]
    assert [ch.stem for ch in CHAPTER_LIST] == stems and len(stems) >= 10
    toc = book.toc_yaml(CHAPTER_LIST)
    files = re.findall(r"- file: (\S+)", toc)
    assert files == stems + ["glossary", "errata"]
    assert toc.index('caption: "Chapters"') < toc.index("00_history") < toc.index('caption: "Appendices"')


def test_a_new_chapter_appears_without_editing_the_toc(tmp_path):
    for name in ["01_b", "00_a", "A2_z", "10_later", "09_responsible", "A1_y", "notes", "9_not_a_chapter", "B1_no"]:
        _fake_notebook(tmp_path / f"{name}.ipynb")
    found = book.find_chapters(tmp_path)
    assert [ch.id for ch in found] == ["00", "01", "09", "10", "A1", "A2"]
    files = re.findall(r"- file: (\S+)", book.toc_yaml(found))
    assert files == ["00_a", "01_b", "09_responsible", "10_later", "A1_y", "A2_z", "glossary", "errata"]
    yaml = pytest.importorskip("yaml")
    toc = yaml.safe_load(book.toc_yaml(found))
    assert toc["root"] == "intro" and [p["caption"] for p in toc["parts"]] == ["Chapters", "Appendices", "Reference"]


def test_chapters_are_chosen_by_number_in_reading_order():
    chosen = book.select(CHAPTER_LIST, ["a1", "3", "00"])
    assert [ch.id for ch in chosen] == ["00", "03", "A1"]
    with pytest.raises(ValueError, match=r"--chapters: unknown \['42'\]"):
        book.select(CHAPTER_LIST, ["42"])


# --- the glossary ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chapter", CHAPTER_LIST, ids=lambda ch: ch.stem)
def test_every_chapter_has_a_glossary_that_parses(chapter):
    terms = book.glossary_terms(chapter)
    assert len(terms) >= 5, f"{chapter.stem}: {len(terms)} glossary terms"
    assert all(t.english and t.chinese for t in terms)
    chinese = [t for t in terms if re.search(r"[\u4e00-\u9fff]", t.chinese)]
    assert len(chinese) >= len(terms) - 2, "the second column is the Chinese term"  # (β-VAE stays β-VAE)
    assert len({t.english for t in terms}) == len(terms), "a term twice in one chapter"


def test_the_glossary_page_collects_every_term_once_per_chapter():
    terms = [t for ch in CHAPTER_LIST for t in book.glossary_terms(ch)]
    assert len(terms) >= 150  # 152 in chapters 00-08 and A1
    page = book.glossary_page(CHAPTER_LIST)
    rows = [line for line in page.splitlines() if line.startswith("| ")][1:]  # without the header
    assert len(rows) == len(terms) and f"all {len(terms)} entries" in page
    assert all(len(book.split_row(r)) == 4 for r in rows)
    english = [book.split_row(r)[0] for r in rows]
    assert english[0].lower() <= english[-1].lower()
    kl = next(r for r in rows if r.startswith("| Kullback"))
    assert r"\Vert" in kl and r"\|" not in kl  # TeX's double bar survives the table
    a1 = next(r for r in rows if r.startswith("| all-reduce"))  # appendix A1's table has two columns
    assert book.split_row(a1)[2] == "" and "{doc}`A1 <A1_distributed>`" in a1
    unlinked = book.glossary_page(CHAPTER_LIST, linked={"00_history"})
    assert "{doc}`00 <00_history>`" in unlinked and "{doc}`03" not in unlinked


def test_a_pipe_inside_table_math_is_tex_safe_and_a_broken_row_is_named(tmp_path):
    assert book.tex_safe(r"| KL | $\mathrm{KL}(q \,\|\, p)$ |") == r"| KL | $\mathrm{KL}(q \,\Vert \, p)$ |"
    assert book.tex_safe(r"| a \| b | $x$ |") == r"| a \| b | $x$ |"  # an escaped cell pipe outside math stays
    assert book.split_row(r"| $\|x\|$ | b |") == [r"$\|x\|$", "b"]
    bad = tmp_path / "05_bad.ipynb"
    table = "| English | 中文 | in this chapter |\n|---|---|---|\n| norm | 范数 | $|x|$ |\n"
    _fake_notebook(bad, "# T\n\n## Glossary / 术语表\n\n" + table)
    [chapter] = book.find_chapters(tmp_path)
    with pytest.raises(ValueError, match=r"05_bad.ipynb: glossary row .* has 5 cells, the header 3"):
        book.glossary_terms(chapter)


# --- staged notebooks ------------------------------------------------------------------------------


def test_a_staged_chapter_keeps_its_code_and_gains_links_and_folded_solutions():
    chapter = CHAPTER_LIST[0]
    staged = nbformat.reads(book.staged_notebook(chapter, "budget line", "https://github.com/me/course"), as_version=4)
    source = nbformat.read(chapter.path, as_version=4)
    code = [c.source for c in source.cells if c.cell_type == "code"]
    assert [c.source for c in staged.cells if c.cell_type == "code"] == code  # the execution cache still matches
    box = staged.cells[1].source
    assert staged.cells[0].source == source.cells[0].source and "budget line" in box
    assert "{download}`00_history.ipynb <_notebooks/student/00_history.ipynb>`" in box
    assert "https://github.com/me/course/blob/main/chapters/00_history.ipynb" in box
    assert "mybinder.org/v2/gh/me/course/main?urlpath=lab/tree/chapters/00_history.ipynb" in box
    solutions = [c for c in staged.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert solutions and all("hide-input" in c.metadata["tags"] for c in solutions)
    assert "```mermaid" not in json.dumps([c.source for c in staged.cells])


def test_mermaid_flowcharts_become_graphviz_and_anything_else_stays_source():
    dot = book.mermaid_to_dot("graph TD\n    AI[Artificial intelligence] --> ML[Machine<br/>learning]\n    ML --> DL\n")
    assert "rankdir=TB;" in dot and 'ML [shape=box, label="Machine\\nlearning"];' in dot
    assert "AI -> ML;" in dot and "ML -> DL;" in dot
    chain = book.mermaid_to_dot("graph LR\n  h0((h0)) --> C1[cell] --> h1((h1))\n  x1[x1] --> C1\n")
    assert 'h0 [shape=circle, label="h0"];' in chain and "C1 -> h1;" in chain and "x1 -> C1;" in chain
    assert book.mermaid_to_dot("sequenceDiagram\n  A->>B: hi\n") is None
    md = "text\n```mermaid\nsequenceDiagram\n  A->>B: hi\n```\nmore"
    assert book.draw_diagrams(md, graphviz=True) == "text\n```text\nsequenceDiagram\n  A->>B: hi\n```\nmore"
    assert book.draw_diagrams("```mermaid\ngraph TD\n A --> B\n```", graphviz=False).startswith("```text\n")


def test_widgets_are_drawn_from_their_saved_state_without_a_widget_manager():
    def model(name, **state):
        return {"model_name": name, "state": state}

    png = "iVBORw0KGgo="
    state = {
        "box": model(
            "VBoxModel", _dom_classes=["widget-interact"], children=["IPY_MODEL_z1", "IPY_MODEL_k", "IPY_MODEL_out"]
        ),
        "z1": model("FloatSliderModel", description="z1", value=0.5),
        "k": model("SelectionSliderModel", description="order", _options_labels=["1", "2", "3"], index=2),
        "out": model("OutputModel", outputs=[{"output_type": "display_data", "data": {"image/png": png + "\n"}}]),
        "bar": model("HBoxModel", children=["IPY_MODEL_text", "IPY_MODEL_progress", "IPY_MODEL_gone"]),
        "text": model("HTMLModel", value="fit: 100%"),
        "progress": model("FloatProgressModel", value=30.0, max=30.0),
    }
    html = book.widget_html("box", state)
    assert "Interactive in JupyterLab" in html and "z1: <b>0.5</b>" in html and "order: <b>3</b>" in html
    assert f'src="data:image/png;base64,{png}"' in html
    bar = book.widget_html("bar", state)
    assert "fit: 100%" in bar and '<progress class="aigc-widget-progress" value="30.0" max="30.0">' in bar
    assert book.widget_html("missing", state) == ""


def test_stage_writes_per_budget_cache_settings(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    import yaml

    monkeypatch.setenv("AIGC_WEIGHTS", "pretrained")  # a cache of its own: never the trained models' outputs
    book.stage(tmp_path, book.select(CHAPTER_LIST, ["A1"]), all_chapters=CHAPTER_LIST, budget="smoke", execute=True)
    config = yaml.safe_load((tmp_path / "_src" / "_config.yml").read_text())
    assert config["execute"]["cache"] == str((tmp_path / ".jupyter_cache" / "smoke-pretrained").resolve())
    monkeypatch.delenv("AIGC_WEIGHTS")

    chosen = book.select(CHAPTER_LIST, ["A1"])
    src = book.stage(tmp_path, chosen, all_chapters=CHAPTER_LIST, budget="smoke", execute=True)
    config = yaml.safe_load((src / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["cache"] == str((tmp_path / ".jupyter_cache" / "smoke-train").resolve())
    assert "`smoke`" in config["parse"]["myst_substitutions"]["budget_note"]
    assert sorted(p.name for p in src.glob("*.ipynb")) == ["A1_distributed.ipynb"]
    assert (src / "checkpoints").resolve() == (SOLUTIONS / "checkpoints").resolve()
    assert (src / "_notebooks/student/A1_distributed.ipynb").read_text() == (
        CHAPTERS / "A1_distributed.ipynb"
    ).read_text()
    src = book.stage(tmp_path, chosen, all_chapters=CHAPTER_LIST, budget="standard", execute=False)
    config = yaml.safe_load((src / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off" and config["execute"]["cache"].endswith("standard-train")


# --- without the toolchain -------------------------------------------------------------------------


def test_the_module_imports_without_the_toolchain():
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('jupyter_book', 'sphinx', 'myst_nb')]"
    done = subprocess.run(
        [sys.executable, "-c", f"{blocked}; import aigc_lib.book, aigc_lib.__main__"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_a_missing_toolchain_says_how_to_install_it(monkeypatch, capsys):
    real = book.importlib.util.find_spec
    monkeypatch.setattr(book.importlib.util, "find_spec", lambda n: None if n == "jupyter_book" else real(n))
    with pytest.raises(book.ToolchainMissing, match=re.escape("pip install -r requirements-book.txt")):
        book.require_toolchain()
    assert main(["book", "--no-execute"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: building the book needs jupyter-book") and "requirements-book.txt" in err
    assert "Traceback" not in err


# --- a real build (the optional toolchain) ----------------------------------------------------------


@pytest.mark.slow
def test_a_small_book_builds_with_warnings_as_errors(tmp_path):
    for module in ("jupyter_book", "sphinx-mathjax-offline"):  # the second's import name has hyphens
        if os.environ.get("AIGC_REQUIRE_BOOK"):  # CI's book check: a missing toolchain fails, never skips
            importlib.import_module(module)
        else:
            pytest.importorskip(module, reason="the book toolchain: pip install -r requirements-book.txt")
    html = book.build(out=tmp_path, chapters=["00", "A1"], execute=False, strict=True, quiet=True)
    pages = {p.name: p.read_text(encoding="utf-8") for p in html.glob("*.html")}
    assert {
        "index.html",
        "intro.html",
        "00_history.html",
        "A1_distributed.html",
        "glossary.html",
        "errata.html",
    } <= set(pages)
    assert "01_rnn_lstm.html" not in pages
    # the navigation follows the generated toc
    nav = pages["intro.html"]
    order = [nav.index(f'href="{p}.html"') for p in ("00_history", "A1_distributed", "glossary", "errata")]
    assert order == sorted(order)
    # math: MathJax source in the pages, MathJax itself served from the site
    for name in ("00_history.html", "glossary.html"):
        assert '<span class="math notranslate nohighlight">\\(' in pages[name]
        assert 'src="_static/mathjax/tex-chtml.js' in pages[name]
    assert (html / "_static/mathjax/tex-chtml.js").stat().st_size > 100_000
    assert not any(re.search(r'<script[^>]+src="https?:', text) for text in pages.values())
    assert not any("THEBE_JS_URL" in text and text.count("const THEBE_JS_URL") > 1 for text in pages.values())
    # the glossary: one row per term, TeX's double bar intact
    terms = sum(len(book.glossary_terms(ch)) for ch in CHAPTER_LIST)
    table = pages["glossary.html"].split("<table", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == terms + 1
    assert r"\mathrm{KL}(q \,\Vert \, p)" in table and r"\,|\," not in table
    assert 'href="00_history.html"' in table
    # each chapter page links to its notebooks, and the files are there
    for stem in ("00_history", "A1_distributed"):
        links = re.findall(r'href="(_downloads/[^"]+\.ipynb)"', pages[f"{stem}.html"])
        assert {link.rsplit("/", 1)[1] for link in links} == {f"{stem}.ipynb", f"{stem}_solutions.ipynb"}
        student = next(html / link for link in links if link.endswith(f"/{stem}.ipynb"))
        assert student.read_text(encoding="utf-8") == (CHAPTERS / f"{stem}.ipynb").read_text(encoding="utf-8")
    assert "E1" in pages["errata.html"] and "<table" in pages["errata.html"]
    if book.shutil.which("dot"):  # the Mermaid concept map, drawn by Graphviz
        assert 'class="graphviz"' in pages["00_history.html"] and list((html / "_images").glob("graphviz-*.png"))


def test_the_budget_note_says_when_the_models_were_loaded(monkeypatch):
    monkeypatch.delenv("AIGC_WEIGHTS", raising=False)
    assert "AIGC_WEIGHTS" not in book.budget_note("standard", True)
    monkeypatch.setenv("AIGC_WEIGHTS", "pretrained")
    assert "loaded from the course's packaged weights (`AIGC_WEIGHTS=pretrained`)" in book.budget_note("standard", True)
