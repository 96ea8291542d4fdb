"""One code dialect: ruff's formatter and linter (settings in pyproject.toml) over the whole repository."""

import subprocess
import sys

import pytest

from aigc_lib.paths import ROOT


@pytest.mark.parametrize("command", [["format", "--check", "--diff"], ["check", "--no-fix"]], ids=["format", "lint"])
def test_ruff(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"run `ruff {' '.join(command[:1])} .` to fix, or see:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    )
