"""Check the course in the tool a learner uses: JupyterLab, in a real (headless) Chromium.

    pip install -e ".[browser]"            # playwright (its driver only: no browser download)
    sudo apt-get install chromium          # or any Chromium/Chrome; --chromium PATH to choose one
    python tools/check_jupyterlab.py                # screenshots in build/lab-check/

What it does, as a learner would:

1. copies the student edition into a fresh temporary workspace (`python -m aigc_lib workspace`),
2. starts `jupyter lab` there on a free local port with a token and AIGC_BUDGET=smoke,
3. opens the chapter (default 03, the VAE: its latent-space sliders draw a matplotlib figure) in
   headless Chromium and runs "Run All Above Selected Cell", then the chapter's first widget cell,
4. checks that the widget is drawn as a widget (``.jupyter-widgets`` / ``.widget-slider``), not
   as ``interactive(children=(FloatSlider(...`` text (what a learner sees when the ipywidgets
   JupyterLab extension is missing), that no output says ``Error rendering`` / ``Error displaying
   widget`` or holds a Python traceback, and that matplotlib figures render as images,
5. drags the first slider with the mouse and checks that the widget's figure is redrawn,
6. saves screenshots to --out, prints a short summary and exits 0 (pass), 1 (a check failed,
   including JupyterLab not starting) or 2 (cannot check here: no browser or no playwright, or
   the browser would not start).

The server, its kernels and the browser are stopped on every exit path (also on Ctrl-C/SIGTERM;
on Linux the server is also told to stop if this process is killed outright).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDGET_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Text that must never be in an output: a widget drawn as its repr, or a renderer's failure.
BAD_TEXT = {
    "interactive(children=": "the widget was drawn as text (its Python repr), not as a widget",
    "Error rendering": "JupyterLab could not render an output",
    "Error displaying widget": "the widget manager could not display the widget",
    "Failed to load model class": "the widget manager could not load the widget's model class",
    "Traceback (most recent call last)": "a Python traceback",
}
EXIT_PASS, EXIT_FAIL, EXIT_CANNOT_RUN = 0, 1, 2


class CannotRun(Exception):
    """No browser to check with (no Chromium, no playwright, or it would not start): exit 2."""


class CheckFailed(Exception):
    pass


# --------------------------------------------------------------------------- environment


def find_chromium(explicit: str | None = None) -> tuple[str | None, str]:
    """(path, how it was found) of a Chromium-family browser, or (None, why not)."""
    for label, candidate in (("--chromium", explicit), ("$AIGC_CHROMIUM", os.environ.get("AIGC_CHROMIUM"))):
        if candidate:
            path = shutil.which(candidate) or candidate
            if Path(path).is_file() and os.access(path, os.X_OK):
                return path, label
            return None, f"{label} {candidate!r} is not an executable file"
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path, f"{name} on PATH"
    return None, (
        "no Chromium/Chrome found (looked for "
        + ", ".join(BROWSER_NAMES)
        + " on PATH and $AIGC_CHROMIUM); install one, e.g. `sudo apt-get install chromium`"
    )


def find_playwright() -> tuple[bool, str]:
    if importlib.util.find_spec("playwright") is None:
        return False, "the `playwright` package is not installed (pip install -e '.[browser]')"
    return True, "playwright importable"


def launch_chromium(playwright, chromium: str):
    """Headless `chromium` started by playwright (`--no-sandbox` as root); CannotRun if it will not start."""
    from playwright.sync_api import Error as PlaywrightError

    launch_args = ["--no-sandbox"] if (hasattr(os, "geteuid") and os.geteuid() == 0) else []
    try:
        return playwright.chromium.launch(executable_path=chromium, headless=True, args=launch_args)
    except PlaywrightError as e:
        raise CannotRun(f"could not start {chromium}: {str(e).splitlines()[0]}") from e


def missing_requirements(chromium: str | None = None) -> list[str]:
    """Why this check cannot run here (empty when it can). Used by tests/test_jupyterlab.py."""
    why = []
    ok, reason = find_playwright()
    if not ok:
        why.append(reason)
    path, reason = find_chromium(chromium)
    if path is None:
        why.append(reason)
    if importlib.util.find_spec("jupyterlab") is None:
        why.append("jupyterlab is not installed")
    return why


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():  # runs in the server's child process before exec (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)  # so every `finally` (server, kernels, browser) runs


# --------------------------------------------------------------------------- the server


class LabServer:
    """`jupyter lab` in its own process group, with all its state under one temporary folder."""

    def __init__(self, root: Path, state: Path, env: dict[str, str]):
        self.root, self.state, self.env = root, state, env
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_path = state / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        for sub in ("runtime", "settings", "lab-workspaces"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        # No news/update pop-ups (and no attempt to reach the internet for them).
        notif = self.state / "settings" / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True, exist_ok=True)
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        self.env["JUPYTER_RUNTIME_DIR"] = str(self.state / "runtime")
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: to find cells, kernel state
            f"--LabApp.user_settings_dir={self.state / 'settings'}",
            f"--LabApp.workspaces_dir={self.state / 'lab-workspaces'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise CheckFailed(f"jupyter lab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join("    " + line for line in lines[-n:])

    def _api(self, method: str, path: str, timeout: float = 5):
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def _our_processes(self) -> list[int]:
        """Processes started for this check: their command line names our private runtime folder
        (kernels get their connection file from there), or the server itself."""
        marker = str(self.state).encode()
        pids = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                continue
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:  # kernels first, politely: the server would do it too, but not if it is killed
                for kernel in self._api("GET", "/api/kernels") or []:
                    self._api("DELETE", f"/api/kernels/{kernel['id']}", timeout=10)
            except Exception:
                pass
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if Path("/proc").is_dir():  # anything left of ours (a kernel in its own session)
            for pid in self._our_processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc = None


# --------------------------------------------------------------------------- in the page

JS_HELPERS = r"""
() => {
  const outputText = (node) => Array.from(node.querySelectorAll('.jp-OutputArea-output'))
      .map(o => o.innerText).join('\n');
  window.__aigc = {
    panel(name) {
      const app = window.jupyterapp;
      for (const w of app.shell.widgets('main')) {
        if (w.context && w.context.path && w.context.path.endsWith(name)) return w;
      }
      return null;
    },
    state(name, upto) {
      const panel = this.panel(name);
      if (!panel) return {panel: false};
      const cells = panel.content.widgets;
      const out = {panel: true, ncells: cells.length, kernel: panel.sessionContext.kernelDisplayStatus,
                   errors: [], unexecuted: 0, running: 0};
      for (let i = 0; i <= Math.min(upto, cells.length - 1); i++) {
        const m = cells[i].model;
        if (m.type !== 'code') continue;
        if (m.executionCount === null) out.unexecuted += 1;
        if (m.executionState === 'running') out.running += 1;
        for (const o of m.outputs.toJSON()) {
          if (o.output_type === 'error') out.errors.push({cell: i, ename: o.ename, evalue: o.evalue});
        }
      }
      return out;
    },
    cellInfo(name, i) {
      const panel = this.panel(name);
      const cell = panel.content.widgets[i];
      return {type: cell.model.type, source: cell.model.sharedModel.getSource()};
    },
    async runUpTo(name, i) {
      const panel = this.panel(name);
      window.jupyterapp.shell.activateById(panel.id);
      panel.content.activeCellIndex = i;
      try { await panel.content.scrollToItem(i, 'start'); } catch (e) {}
      // as a learner: Run > "Run All Above Selected Cell", then Shift+Enter on the widget cell
      const commands = window.jupyterapp.commands;
      (async () => {
        const ok = await commands.execute('notebook:run-all-above');
        if (ok === false) return;  // a cell above failed: a learner would stop there too
        panel.content.activeCellIndex = i;
        await commands.execute('notebook:run-cell');
      })();
      return true;
    },
    async mark(name, i) {
      const panel = this.panel(name);
      try { await panel.content.scrollToItem(i, 'start'); } catch (e) {}
      document.querySelectorAll('[data-aigc-check]').forEach(n => n.removeAttribute('data-aigc-check'));
      panel.content.widgets[i].node.setAttribute('data-aigc-check', 'widget-cell');
      return true;
    },
    outputs(name, upto) {
      const panel = this.panel(name);
      const found = [];
      panel.content.widgets.slice(0, upto + 1).forEach((cell, i) => {
        if (cell.model.type === 'code') found.push({cell: i, text: outputText(cell.node)});
      });
      return found;
    },
    images(name, upto) {
      const panel = this.panel(name);
      const found = [];
      panel.content.widgets.slice(0, upto + 1).forEach((cell, i) => {
        for (const img of cell.node.querySelectorAll('.jp-OutputArea-output img')) {
          found.push({cell: i, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
                      src: (img.getAttribute('src') || '').slice(0, 40),
                      inWidget: !!img.closest('.jupyter-widgets')});
        }
      });
      return found;
    },
    widgetView(name, i) {
      const node = this.panel(name).content.widgets[i].node;
      const img = node.querySelector('.jupyter-widgets img');
      const out = Array.from(node.querySelectorAll('.widget-output')).map(o => o.innerText).join('\n');
      const imgOk = img ? (img.complete && img.naturalWidth > 0) : false;
      return {
        widgets: node.querySelectorAll('.jupyter-widgets').length,
        sliders: node.querySelectorAll('.widget-slider').length,
        readouts: Array.from(node.querySelectorAll('.widget-slider .widget-readout')).map(r => r.innerText || r.value || ''),
        imgSrc: img ? img.getAttribute('src') : null,
        imgOk,
        out,  // the text the widget's own output shows (a figure's <img> aside)
        drawn: imgOk || out.trim().length > 0,
        text: outputText(node),
      };
    },
    extensions() {
      const app = window.jupyterapp;
      let config = {};
      try { config = JSON.parse(document.getElementById('jupyter-config-data').textContent); } catch (e) {}
      const plugins = (app.listPlugins ? app.listPlugins() : []).filter(p => p.startsWith('@jupyter-widgets/'));
      return {
        plugins,
        activated: plugins.filter(p => app.isPluginActivated && app.isPluginActivated(p)),
        federated: (config.federated_extensions || []).map(e => e.name),
        disabled: config.disabledExtensions || [],
        version: config.appVersion || '?',
      };
    },
  };
  return true;
}
"""


def widget_cell_index(notebook: Path) -> int:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and ("interact(" in cell.source or "interactive(" in cell.source):
            return i
    raise CheckFailed(f"{notebook.name} has no widget cell (no `interact(` in a code cell)")


def extension_diagnosis(ext: dict) -> str:
    """Why the widget extension is not working, from the page's own record of its extensions."""
    name = WIDGET_EXTENSION
    if any(d == name or d.startswith(name + ":") for d in ext.get("disabled", [])):
        return (
            f"the ipywidgets JupyterLab extension {name} is DISABLED in this JupyterLab "
            f"(see `jupyter labextension list`); fix: `jupyter labextension enable {name}`, then reload"
        )
    if name not in ext.get("federated", []) and not ext.get("plugins"):
        return (
            f"the ipywidgets JupyterLab extension {name} is MISSING: JupyterLab "
            f"{ext.get('version', '?')} did not load it (it is not among the page's extensions "
            f"{sorted(ext.get('federated', []))}); fix: `pip install jupyterlab_widgets` (it comes "
            "with `pip install -r requirements.txt`) in the environment that runs `jupyter lab`, "
            "restart JupyterLab and reload the page"
        )
    if not ext.get("activated"):
        return (
            f"the ipywidgets JupyterLab extension {name} is installed but none of its plugins "
            f"was activated (plugins {ext.get('plugins')}); see the browser console log below"
        )
    return f"the widget extension {name} is loaded (plugins {ext.get('activated')})"


# --------------------------------------------------------------------------- the check


def run_check(args) -> tuple[int, list[str]]:
    """Returns (exit code, summary lines)."""
    from aigc_lib.notebooks import make_workspace

    summary: list[str] = []
    t0 = time.monotonic()

    def note(msg: str) -> None:
        line = f"[{time.monotonic() - t0:6.1f}s] {msg}"
        summary.append(line)
        print(line, flush=True)

    chromium, how = find_chromium(args.chromium)
    if chromium is None:
        raise CannotRun(how)
    ok, why = find_playwright()
    if not ok:
        raise CannotRun(why)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from aigc_lib.notebooks import CHAPTERS

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    matches = sorted(CHAPTERS.glob(f"{args.chapter}_*.ipynb"))
    if not matches:
        raise CheckFailed(f"no chapter {args.chapter!r} in {CHAPTERS}")
    name = matches[0].name
    idx = widget_cell_index(matches[0])
    note(f"chapter {name}: running cells 0..{idx} (first widget cell: {idx}), AIGC_BUDGET={args.budget}")

    env = dict(os.environ)
    env["AIGC_BUDGET"] = args.budget
    for var in ("AIGC_STRICT", "MPLBACKEND", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"):
        env.pop(var, None)  # a learner's environment, not a test session's
    state = Path(tempfile.mkdtemp(prefix="aigc-lab-check-"))
    workspace = state / "workspace"
    server = LabServer(workspace, state, env)
    console: list[str] = []
    failures: list[str] = []
    shots: list[Path] = []
    try:
        make_workspace(workspace)  # what `python -m aigc_lib workspace` does for a learner
        server.start()
        note(f"jupyter lab up on {server.url} (log {server.log_path})")
        with sync_playwright() as p:
            browser = launch_chromium(p, chromium)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on(
                    "console",
                    lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
                )
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                note(f"browser {browser.version} ({chromium}, {how})")

                def shot(tag: str, locator=None) -> Path:
                    path = out / f"{len(shots) + 1:02d}_{tag}.png"
                    (locator or page).screenshot(path=str(path))
                    shots.append(path)
                    return path

                page.goto(f"{server.url}/lab/tree/{name}?token={server.token}", timeout=120_000)
                page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=120_000)
                page.evaluate(JS_HELPERS)
                page.wait_for_function(
                    f"() => window.__aigc.panel({name!r}) && window.__aigc.state({name!r}, 0).kernel === 'idle'",
                    timeout=120_000,
                )
                ext = page.evaluate("() => window.__aigc.extensions()")
                note(f"JupyterLab {ext['version']}; widget plugins active: {ext['activated'] or 'NONE'}")
                info = page.evaluate(f"() => window.__aigc.cellInfo({name!r}, {idx})")
                if "interact(" not in info["source"]:
                    raise CheckFailed(f"cell {idx} in JupyterLab is not the widget cell found on disk")
                shot("opened")

                page.evaluate(f"() => window.__aigc.runUpTo({name!r}, {idx})")
                deadline = time.monotonic() + args.run_timeout
                state_js = f"() => window.__aigc.state({name!r}, {idx})"
                last_report = time.monotonic()
                while True:
                    st = page.evaluate(state_js)
                    if st["errors"]:
                        break
                    if st["unexecuted"] == 0 and st["running"] == 0 and st["kernel"] == "idle":
                        break
                    if time.monotonic() > deadline:
                        shot("timeout")
                        raise CheckFailed(
                            f"cells 0..{idx} did not finish within {args.run_timeout:.0f} s "
                            f"(kernel {st['kernel']}, {st['unexecuted']} cells not run)"
                        )
                    if time.monotonic() - last_report > 30:
                        last_report = time.monotonic()
                        print(f"    ... kernel {st['kernel']}, {st['unexecuted']} code cells to go", flush=True)
                    time.sleep(0.5)
                note(
                    f"cells 0..{idx} ran (kernel {st['kernel']})"
                    if not st["errors"]
                    else f"stopped: cell {st['errors'][0]['cell']} raised an error"
                )
                page.evaluate(f"() => window.__aigc.mark({name!r}, {idx})")
                cell = page.locator("[data-aigc-check=widget-cell]")
                cell.scroll_into_view_if_needed()
                for e in st["errors"]:
                    failures.append(f"cell {e['cell']} raised {e['ename']}: {e['evalue']}")
                if st["errors"]:
                    first = st["errors"][0]["cell"]
                    failures.append(f"the cells after cell {first} (the widget cell {idx} among them) were not run")
                    page.evaluate(f"() => window.__aigc.mark({name!r}, {first})")
                    shot("failed_cell", page.locator("[data-aigc-check=widget-cell]"))
                else:
                    # the widget: drawn as a widget, and its first figure drawn
                    view_js = f"() => window.__aigc.widgetView({name!r}, {idx})"
                    try:
                        page.wait_for_function(  # drawn, or drawn as text / an error: no need to wait longer
                            f"(bad) => {{ const v = ({view_js})(); return (v.sliders > 0 && v.drawn) || "
                            f"bad.some(t => v.text.includes(t)); }}",
                            arg=list(BAD_TEXT),
                            timeout=args.widget_timeout * 1000,
                        )
                    except PlaywrightError:
                        pass
                    view = page.evaluate(view_js)
                    shot("widget_cell", cell)
                    shot("page_after_run")
                    if view["sliders"] == 0:
                        why = (
                            "it was drawn as text: " + view["text"].strip()[:90] + "..."
                            if "interactive(children=" in view["text"]
                            else f"the cell's output: {view['text'].strip()[:200]!r}"
                        )
                        failures.append(f"no widget rendered in cell {idx} ({why}); {extension_diagnosis(ext)}")
                    else:
                        note(
                            f"widget rendered: {view['sliders']} sliders (readouts {view['readouts']}), "
                            f"{view['widgets']} .jupyter-widgets nodes"
                        )
                        if not view["drawn"]:
                            failures.append(
                                "the widget drew nothing: no figure (loaded <img>) and no text in its output"
                            )
                        else:
                            note(
                                "the widget drew "
                                + ("a matplotlib figure" if view["imgOk"] else f"text: {view['out'].strip()[:60]!r}...")
                            )

                    for o in page.evaluate(f"() => window.__aigc.outputs({name!r}, {idx})"):
                        for text, what in BAD_TEXT.items():
                            if text in o["text"]:
                                at = o["text"].index(text)
                                failures.append(f"cell {o['cell']} output: {what}: {o['text'][at : at + 90]!r}...")
                    images = page.evaluate(f"() => window.__aigc.images({name!r}, {idx})")
                    plots = [i for i in images if not i["inWidget"]]
                    broken = [i for i in images if not i["ok"]]
                    note(
                        f"matplotlib images: {sum(i['ok'] for i in plots)} figures in cells "
                        f"{sorted({i['cell'] for i in plots if i['ok']})}, {len(broken)} broken"
                    )
                    if not any(i["ok"] for i in plots):
                        failures.append("no matplotlib figure rendered as an image in the cells above the widget")
                    for i in broken:
                        failures.append(f"cell {i['cell']}: an image did not load ({i['src']}...)")

                    # move the slider with the mouse; the widget's figure (or text) must be redrawn
                    if view["sliders"] and view["drawn"]:
                        handle = cell.locator(".widget-slider .noUi-handle").first
                        track = cell.locator(".widget-slider .noUi-target").first
                        handle.scroll_into_view_if_needed()
                        hb, tb = handle.bounding_box(), track.bounding_box()
                        x, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
                        step = max(40.0, tb["width"] * 0.25)  # towards the side with more room
                        if x < tb["x"] + tb["width"] / 2:
                            dx = min(tb["x"] + tb["width"] - 2, x + step) - x
                        else:
                            dx = max(tb["x"] + 2, x - step) - x
                        page.mouse.move(x, y)
                        page.mouse.down()
                        page.mouse.move(x + dx, y, steps=8)
                        page.mouse.up()
                        try:
                            page.wait_for_function(
                                f"([src, out, r]) => {{ const v = ({view_js})(); return v.drawn && v.readouts[0] !== r "
                                f"&& (src ? v.imgOk && v.imgSrc !== src : v.out !== out); }}",
                                arg=[view["imgSrc"] if view["imgOk"] else None, view["out"], view["readouts"][0]],
                                timeout=args.widget_timeout * 1000,
                            )
                            page.wait_for_function(
                                f"() => window.__aigc.state({name!r}, 0).kernel === 'idle'",
                                timeout=args.widget_timeout * 1000,
                            )
                            time.sleep(1.0)  # let the last continuous update land
                        except PlaywrightError:
                            pass
                        after = page.evaluate(view_js)
                        shot("widget_after_slider", cell)
                        if after["readouts"][:1] == view["readouts"][:1]:
                            failures.append(
                                f"dragging the first slider did not change its value ({view['readouts'][0]})"
                            )
                        elif (
                            (after["imgSrc"] == view["imgSrc"] or not after["imgOk"])
                            if view["imgOk"]
                            else after["out"] == view["out"]
                        ):
                            failures.append(
                                f"slider moved {view['readouts'][0]} -> {after['readouts'][0]}, "
                                f"but the widget's {'figure' if view['imgOk'] else 'output'} was not redrawn"
                            )
                        else:
                            note(
                                f"slider dragged {view['readouts'][0]} -> {after['readouts'][0]}: "
                                f"{'figure' if view['imgOk'] else 'output'} redrawn"
                            )
                        for text, what in BAD_TEXT.items():
                            if text in after["text"]:
                                at = after["text"].index(text)
                                failures.append(f"after the slider moved, {what}: {after['text'][at : at + 120]!r}")
            finally:
                browser.close()
    finally:
        server.stop()
        if args.keep:
            note(f"kept {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)

    note(f"screenshots: {', '.join(str(s) for s in shots)}")
    if failures:
        if console:
            counts: dict[str, int] = {}
            for c in console:
                counts[c[:300]] = counts.get(c[:300], 0) + 1
            summary.append(f"browser console ({len(console)} errors/warnings; the first 10 kinds):")
            summary += [f"    {c}" + (f"  (x{n})" if n > 1 else "") for c, n in list(counts.items())[:10]]
        summary.append("FAIL:")
        summary += [f"  - {f}" for f in dict.fromkeys(failures)]
        return EXIT_FAIL, summary
    summary.append(
        f"PASS: {name} works in JupyterLab in Chromium (widget rendered, dragging a slider "
        f"redraws it, figures render, no tracebacks) in {time.monotonic() - t0:.0f} s"
    )
    return EXIT_PASS, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--chapter", default="03", help="chapter number whose first widget cell is checked (default 03)"
    )
    parser.add_argument(
        "--out", default="build/lab-check", help="folder for the screenshots (default build/lab-check/, git-ignored)"
    )
    parser.add_argument("--chromium", help="browser executable (default: $AIGC_CHROMIUM, else chromium/chrome on PATH)")
    parser.add_argument("--budget", default="smoke", help="AIGC_BUDGET for the kernel (default smoke)")
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds for the cells to run (default 600)")
    parser.add_argument(
        "--widget-timeout", type=float, default=60, help="seconds for a widget to draw/redraw (default 60)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace and server log")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # aigc_lib, when run from a checkout without an install

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        code, summary = run_check(args)
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print(
                f"INTERRUPTED (signal {e.code - 128}): JupyterLab, its kernel and the browser were stopped", flush=True
            )
        raise
    except CannotRun as e:
        print(f"CANNOT RUN: {e}", flush=True)
        return EXIT_CANNOT_RUN
    except CheckFailed as e:
        print(f"FAIL: {e}", flush=True)
        return EXIT_FAIL
    print("\n".join(line for line in summary if line.startswith(("PASS", "FAIL", "  -", "browser", "    "))))
    return code


if __name__ == "__main__":
    sys.exit(main())
