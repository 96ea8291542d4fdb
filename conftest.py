"""Test-session settings shared by the library tests and nbval's notebook kernels.

Kernels inherit this process's environment when nbval starts them, so setting variables here
configures every notebook run: the smoke budget, one torch thread per kernel (xdist runs
several), a headless matplotlib, and strict exercise checks for the authored solutions.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("AIGC_BUDGET", "smoke")
os.environ.pop("AIGC_WEIGHTS", None)  # the tests train (tests/test_pretrained.py sets it where it tests it)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SOLUTIONS = Path(__file__).parent / "solutions"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Runs before nbval starts a notebook's kernel: a failing check in solutions/ must raise.
    if item.path.suffix == ".ipynb":
        if SOLUTIONS in item.path.parents:
            os.environ["AIGC_STRICT"] = "1"
        else:
            os.environ.pop("AIGC_STRICT", None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
