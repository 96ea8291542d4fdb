"""Check the built website as a reader sees it: every page in a real (headless) Chromium.

    pip install -r requirements-book.txt       # includes playwright (its driver only: no browser download)
    sudo apt-get install chromium fonts-noto-cjk   # any Chromium/Chrome; --chromium PATH to choose one
    python -m aigc_lib book --budget smoke --chapters 00 03
    python tools/check_book.py                 # screenshots and report.json in build/book-check/

For each page of the book (intro, chapters, appendices, glossary, errata; `--pages` to choose) it
opens the built HTML from disk with the network cut off, waits for MathJax, and reports:

- figures: images drawn with a non-zero natural size; a broken image (zero size) fails the page;
- math: the formulas in the page and how many MathJax typeset (`mjx-container`); math left as
  source, or a TeX error MathJax shows (`mjx-merror`), fails the page;
- errors: output cells with a traceback or an unindented `...Error:` line fail the page; stderr cells (progress
  bars, warnings) are counted, not failed; with `--require-outputs` a chapter without any output
  (a build made with --no-execute) fails too;
- against the executed notebook beside the site (`_build/jupyter_execute/PAGE.ipynb`): a page that
  draws fewer figures than the notebook's image outputs, or fewer audio players than its audio
  outputs, fails;
- requests the page tried to make outside the site (blocked: the site must work offline) and
  JavaScript errors are listed;
- for a build with the packaged weights (`weights: pretrained` in the chapters' first output): which of
  MANIFEST.json's files the chapters loaded, and any a chapter refused ("...are not used") or did not
  find, which fails the check: the build is then the test that every packaged file loads into its
  chapter's model;

and takes a full-page screenshot of it. Exits 0 (every page passed), 1 (a page failed, or no
page to check) or 2 (cannot check here: no browser or no playwright).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_jupyterlab import (  # noqa: E402
    EXIT_CANNOT_RUN,
    EXIT_FAIL,
    EXIT_PASS,
    CannotRun,
    find_chromium,
    find_playwright,
    launch_chromium,
)

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_PAGE = re.compile(r"^(?:\d\d|A\d)_\w+$")
# an exception's last line starts the line; an indented one is a cell printing an error it caught on
# purpose (chapter 02 shows the sources' shape errors that way)
ERROR_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception):", re.MULTILINE)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/svg+xml")
# what aigc_lib.training.fit prints when it loads a packaged file, and when it cannot use one
LOADED = re.compile(r"loaded the pretrained weights shipped with the course \(([^:()\s]+\.pt):")
REFUSED = re.compile(r"are not used|the course has no pretrained weights named")

# Runs in the page: what a reader would see, counted.
MEASURE = """async () => {
  const main = document.querySelector('main') || document.body;
  const imgs = [...main.querySelectorAll('img')];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const outputs = [...main.querySelectorAll('.cell_output .output')];
  const text = el => (el.innerText || '').trim();
  return {
    title: document.title,
    figures: imgs.filter(i => i.naturalWidth > 0 && i.naturalHeight > 0).length,
    broken: imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    math: main.querySelectorAll('.math').length,
    typeset: main.querySelectorAll('mjx-container').length,
    tex_errors: [...main.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || text(e)),
    outputs: outputs.length,
    audio: main.querySelectorAll('audio').length,
    tracebacks: outputs.filter(o => o.matches('.traceback, .error')
                                   || text(o).includes('Traceback (most recent call last)')).map(text),
    error_text: outputs.filter(o => !o.matches('.stderr')).map(text),
    stderr: outputs.filter(o => o.matches('.stderr')).map(text),
    height: document.documentElement.scrollHeight,
  };
}"""


def pages_in(html: Path, wanted: list[str] | None) -> list[Path]:
    """The book's pages in reading order (intro, chapters, appendices, glossary, errata) or `wanted`."""
    if wanted:
        found = [html / (w if w.endswith(".html") else f"{w}.html") for w in wanted]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such page: {', '.join(missing)}")
        return found
    chapters = sorted(p for p in html.glob("*.html") if CHAPTER_PAGE.match(p.stem))
    chapters.sort(key=lambda p: (not p.stem[0].isdigit(), p.stem))
    extra = [html / f"{name}.html" for name in ("intro", "glossary", "errata")]
    return [extra[0]] * extra[0].is_file() + chapters + [p for p in extra[1:] if p.is_file()]


def executed(notebook: Path) -> dict:
    """What an executed notebook holds: the images and audio players its page should show, and the
    packaged weights its cells loaded (file names) or refused (the lines saying so)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    images = audio = 0
    text = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += any(kind in data for kind in IMAGE_TYPES)
            audio += "<audio" in "".join(data.get("text/html", ""))
            if out.get("output_type") == "stream":
                text.append("".join(out.get("text", "")))
    text = "".join(text)
    return {
        "images": images,
        "audio": audio,
        "pretrained": "weights: pretrained" in text,
        "loaded": sorted(set(LOADED.findall(text))),
        "refused": [line.strip() for line in text.splitlines() if REFUSED.search(line)],
    }


def judge(page: str, seen: dict, require_outputs: bool, expected: dict | None = None) -> list[str]:
    """The reasons `page` fails (empty when it passes); `expected`: `executed(...)` of its notebook."""
    why = []
    if expected is not None:
        if seen["figures"] < expected["images"]:
            why.append(f"{seen['figures']} figures drawn, {expected['images']} images in the executed notebook")
        if seen.get("audio", 0) < expected["audio"]:
            why.append(f"{seen.get('audio', 0)} audio players, {expected['audio']} in the executed notebook")
    if seen["broken"]:
        why.append(f"{len(seen['broken'])} broken image(s): {seen['broken'][:3]}")
    if seen["math"] and not seen["typeset"]:
        why.append(f"{seen['math']} formulas, none typeset by MathJax")
    if seen["tex_errors"]:
        why.append(f"{len(seen['tex_errors'])} TeX error(s): {seen['tex_errors'][:3]}")
    errors = seen["tracebacks"] + [t for t in seen["error_text"] if ERROR_LINE.search(t)]
    if errors:
        first = next((ln for ln in errors[0].splitlines() if ERROR_LINE.search(ln)), errors[0].splitlines()[0])
        why.append(f"{len(errors)} error output(s), first: {first.strip()[:160]}")
    if require_outputs and CHAPTER_PAGE.match(page) and not seen["outputs"]:
        why.append("no cell outputs (was the book built with --no-execute?)")
    return why


def check(args: argparse.Namespace) -> int:
    html = Path(args.html).resolve()
    if not (html / "index.html").is_file():
        print(f"FAIL: no book in {html} (build it: python -m aigc_lib book)")
        return EXIT_FAIL
    chromium, how = find_chromium(args.chromium)
    if chromium is None:
        raise CannotRun(how)
    ok, why = find_playwright()
    if not ok:
        raise CannotRun(why.replace("'.[browser]'", "-r requirements-book.txt"))
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    pages = pages_in(html, args.pages)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report, failed, notebooks = [], 0, {}
    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        print(f"browser: Chromium {browser.version} ({chromium}, {how}); pages from {html}")
        try:
            for path in pages:
                page = browser.new_page(viewport={"width": args.width, "height": 1000})
                external, js_errors = [], []

                def route(r, request, external=external):
                    if request.url.startswith(("file:", "data:", "blob:")):
                        r.continue_()
                    else:
                        external.append(request.url)
                        r.abort()

                page.route("**/*", route)
                page.on("pageerror", lambda e, js_errors=js_errors: js_errors.append(str(e)))
                page.goto(path.as_uri(), wait_until="load", timeout=120_000)
                try:  # MathJax loaded and done (its promise), or no math on the page
                    page.wait_for_function(
                        "() => !document.querySelector('.math') || (window.MathJax && MathJax.startup"
                        " && MathJax.startup.promise)",
                        timeout=60_000,
                    )
                    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
                except PlaywrightError as e:
                    js_errors.append(f"MathJax did not start: {str(e).splitlines()[0]}")
                seen = page.evaluate(MEASURE)
                shot = out / f"{path.stem}.png"
                page.screenshot(path=str(shot), full_page=True)
                page.close()
                notebook = html.parent / "jupyter_execute" / f"{path.stem}.ipynb"
                expected = executed(notebook) if notebook.is_file() else None
                if expected is not None:
                    notebooks[path.stem] = expected
                reasons = judge(path.stem, seen, args.require_outputs, expected)
                failed += bool(reasons)
                entry = {
                    "page": path.stem,
                    "passed": not reasons,
                    "figures": seen["figures"],
                    "broken_images": seen["broken"],
                    "math": seen["math"],
                    "typeset": seen["typeset"],
                    "outputs": seen["outputs"],
                    "audio": seen["audio"],
                    "stderr_outputs": len(seen["stderr"]),
                    "failures": reasons,
                    "external_requests": sorted(set(external)),
                    "js_errors": js_errors,
                    "height_px": seen["height"],
                    "screenshot": str(shot),
                }
                report.append(entry)
        finally:
            browser.close()
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{'page':<22}{'figures':>8}{'math':>7}{'typeset':>9}{'outputs':>9}{'stderr':>8}  verdict")
    for e in report:
        verdict = "ok" if e["passed"] else "FAIL: " + "; ".join(e["failures"])
        line = (
            f"{e['page']:<22}{e['figures']:>8}{e['math']:>7}{e['typeset']:>9}{e['outputs']:>9}{e['stderr_outputs']:>8}"
        )
        print(f"{line}  {verdict}")
        for url in e["external_requests"]:
            print(f"{'':<22}blocked request outside the site: {url}")
        for err in e["js_errors"]:
            print(f"{'':<22}JavaScript error: {err[:160]}")
    print(f"screenshots and report.json in {out}")
    if not report:
        print("FAIL: no page to check")
        return EXIT_FAIL
    print(f"{len(report) - failed} of {len(report)} pages passed")
    weights_ok = audit_weights(notebooks, ROOT / "aigc_lib/assets/pretrained")
    return EXIT_FAIL if failed or not weights_ok else EXIT_PASS


def audit_weights(notebooks: dict[str, dict], folder: Path) -> bool:
    """Print which packaged files the chapters loaded; False when a chapter refused or missed one."""
    if not any(nb["pretrained"] for nb in notebooks.values()):
        return True  # a build that trains: nothing to audit
    listed = set(json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8")))
    loaded = set().union(*(nb["loaded"] for nb in notebooks.values()))
    refused = [f"{page}: {line}" for page, nb in notebooks.items() for line in nb["refused"]]
    print(
        f"packaged weights: {len(loaded & listed)} of {len(listed)} files in {folder.name}/MANIFEST.json "
        f"loaded by the {len(notebooks)} executed pages checked; {len(refused)} refused or missing"
    )
    for name in sorted(listed - loaded):
        print(f"{'':<22}not loaded by a checked page: {name}")
    for line in refused:
        print(f"{'':<22}FAIL: {line[:200]}")
    return not refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default=str(ROOT / "build/book/_build/html"), help="the built site")
    parser.add_argument("--out", default=str(ROOT / "build/book-check"), help="screenshots and report.json")
    parser.add_argument("--pages", nargs="+", help="page names, e.g. 00_history glossary (default: all)")
    parser.add_argument("--chromium", help="browser executable (default: chromium on PATH, or $AIGC_CHROMIUM)")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    parser.add_argument("--require-outputs", action="store_true", help="fail a chapter page without outputs")
    args = parser.parse_args(argv)
    try:
        return check(args)
    except CannotRun as e:
        print(f"CANNOT CHECK HERE: {e}")
        return EXIT_CANNOT_RUN
    except FileNotFoundError as e:
        print(f"FAIL: {e}")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
