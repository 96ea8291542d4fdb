"""`python -m aigc_lib doctor`: each check fails for real on a broken setting and prints a fix that works."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from aigc_lib import doctor
from aigc_lib.doctor import LAB_MANAGER, PYTHON, Check, _lab_widgets


def run(name: str, capsys) -> tuple[int, str]:
    """Run the doctor's check called `name` alone; (failures, output)."""
    failed = doctor.doctor(tuple(check for check in doctor.CHECKS if check.name == name))
    return failed, capsys.readouterr().out


def kernel(folder: Path, python: str) -> Path:
    """A `python3` kernel spec in `folder`/kernels that runs `python`."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return spec


@pytest.fixture
def no_torch_python(tmp_path) -> str:
    """A real Python without torch or aigc_lib: a fresh venv."""
    venv.create(tmp_path / "bare", with_pip=False)
    python = str(tmp_path / "bare" / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    return python


def test_kernel_without_torch_in_jupyter_path_fails(tmp_path, monkeypatch, capsys, no_torch_python):
    spec = kernel(tmp_path / "jupyter", no_torch_python)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched first
    failed, out = run("Jupyter kernel", capsys)
    assert failed == 1
    assert f"[FAIL] Jupyter kernel: the python3 kernel ({spec}) runs {no_torch_python}" in out
    assert "No module named 'torch'" in out
    assert f"fix: delete {spec} (it comes first through $JUPYTER_PATH)" in out


def test_kernel_without_torch_in_user_dir_fails_and_the_fix_works(tmp_path, monkeypatch, capsys, no_torch_python):
    kernel(tmp_path / "data", no_torch_python)
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))  # the --user kernels
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")  # ... come before this environment's
    failed, out = run("Jupyter kernel", capsys)
    assert failed == 1 and "No module named 'torch'" in out
    fix = f"{PYTHON} -m ipykernel install --user --name python3"
    assert f"fix: {fix}, then restart JupyterLab" in out

    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True)
    failed, out = run("Jupyter kernel", capsys)
    assert failed == 0, out
    assert f"[OK]   Jupyter kernel: {sys.executable} with torch" in out


def test_kernel_whose_python_is_gone_fails(tmp_path, monkeypatch, capsys):
    kernel(tmp_path, str(tmp_path / "deleted-env" / "bin" / "python"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    failed, out = run("Jupyter kernel", capsys)
    assert failed == 1 and "FileNotFoundError" in out and "fix: delete" in out


def test_invalid_budget_and_device_fail_with_the_value_and_fix(monkeypatch, capsys):
    monkeypatch.setenv("AIGC_BUDGET", "fast")
    failed, out = run("compute budget", capsys)
    assert failed == 1
    assert "[FAIL] compute budget: ValueError: $AIGC_BUDGET: expected one of smoke, standard, full, got 'fast'" in out
    assert "fix: unset AIGC_BUDGET (or set it to smoke, standard or full: export AIGC_BUDGET=standard)" in out
    monkeypatch.setenv("AIGC_BUDGET", "smoke")
    assert run("compute budget", capsys)[1].startswith("[OK]   compute budget: smoke (from $AIGC_BUDGET=smoke)")

    monkeypatch.setenv("AIGC_DEVICE", "gpu")
    failed, out = run("compute device", capsys)
    assert failed == 1 and "got 'gpu'" in out and "fix: unset AIGC_DEVICE" in out
    monkeypatch.delenv("AIGC_DEVICE")
    assert "(default: $AIGC_DEVICE is not set)" in run("compute device", capsys)[1]


def test_weights_choice_and_damaged_packaged_weights_fail_with_the_fix(tmp_path, monkeypatch, capsys):
    from aigc_lib import pretrained

    monkeypatch.setenv("AIGC_WEIGHTS", "trained")
    failed, out = run("model weights", capsys)
    assert failed == 1 and "got 'trained'" in out and "fix: unset AIGC_WEIGHTS (train) or set it to pretrained" in out
    monkeypatch.delenv("AIGC_BUDGET", raising=False)
    failed, out = run("compute budget", capsys)  # its default depends on the choice: reported once, above
    assert failed == 0 and "not known until $AIGC_WEIGHTS is valid (see model weights)" in out
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # nbgrader's default is smoke whatever the weights
    assert run("compute budget", capsys)[1].startswith("[OK]   compute budget: smoke")
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("AIGC_WEIGHTS", "pretrained")
    monkeypatch.setenv("AIGC_BUDGET", "full")
    failed, out = run("model weights", capsys)
    assert failed == 1 and "the budget is full: the packaged weights are the standard budget's" in out
    monkeypatch.delenv("AIGC_BUDGET")
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "a_standard.pt").write_bytes(b"weights")
    (folder / pretrained.MANIFEST).write_text(json.dumps({"a_standard.pt": {"sha256": "0" * 64, "bytes": 7}}))
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    failed, out = run("model weights", capsys)
    assert (
        failed == 1
        and "a_standard.pt: missing or damaged" in out
        and "git checkout -- aigc_lib/assets/pretrained" in out
    )
    monkeypatch.setattr(pretrained, "_sha256", lambda path: "0" * 64)
    assert run("model weights", capsys)[1].startswith("[OK]   model weights: pretrained (from $AIGC_WEIGHTS=pretrained")
    (folder / pretrained.MANIFEST).write_text("{not json")
    failed, out = run("model weights", capsys)
    assert failed == 1 and "MANIFEST.json is damaged" in out and "git checkout -- aigc_lib/assets/pretrained" in out
    (folder / pretrained.MANIFEST).unlink()
    failed, out = run("model weights", capsys)
    assert failed == 1 and "MANIFEST.json is missing" in out and "git checkout -- aigc_lib/assets/pretrained" in out


def manager(folder: Path, version: str) -> Path:
    """A copy of the widget manager's lab extension of `version` in the labextensions `folder`."""
    path = folder / LAB_MANAGER
    path.mkdir(parents=True)
    (path / "package.json").write_text(json.dumps({"name": LAB_MANAGER, "version": version}))
    return path


def lab_check(paths: list[Path]) -> tuple[Check, ...]:
    fix = next(check.fix for check in doctor.CHECKS if check.name == "JupyterLab widgets")
    return (Check("JupyterLab widgets", lambda: _lab_widgets([str(p) for p in paths]), fix),)


def test_widget_extension_missing_fails_with_fix(tmp_path, capsys):
    assert doctor.doctor(lab_check([tmp_path / "a", tmp_path / "b"])) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] JupyterLab widgets: RuntimeError: {LAB_MANAGER} is in none of " in out
    assert "fix: " + PYTHON + ' -m pip install --force-reinstall --no-deps "jupyterlab_widgets~=3.0"' in out


def test_widget_extension_too_old_fails(tmp_path, capsys):
    old = manager(tmp_path / "old", "3.1.1")  # ipywidgets 7's
    assert doctor.doctor(lab_check([tmp_path / "old"])) == 1
    assert f"{old} is version 3.1.1; ipywidgets 8" in capsys.readouterr().out
    manager(tmp_path / "new", "5.0.16")  # found later: the old copy shadows it
    assert doctor.doctor(lab_check([tmp_path / "old", tmp_path / "new"])) == 1
    assert f"fix: delete {old} (an old copy found first)" in capsys.readouterr().out
    assert doctor.doctor(lab_check([tmp_path / "new", tmp_path / "old"])) == 0


def test_widget_extension_disabled_fails(tmp_path, monkeypatch, capsys):
    manager(tmp_path / "lab", "5.0.16")
    config = tmp_path / "config" / "labconfig"
    config.mkdir(parents=True)
    (config / "page_config.json").write_text(json.dumps({"disabledExtensions": {LAB_MANAGER: True}}))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))  # what `jupyter labextension disable` writes
    assert doctor.doctor(lab_check([tmp_path / "lab"])) == 1
    assert f"fix: {PYTHON} -m jupyterlab.labextensions enable --level=user {LAB_MANAGER}, then restart JupyterLab" in (
        capsys.readouterr().out
    )


def test_widget_extension_found_on_the_default_path():
    assert _lab_widgets().startswith("5.")


def doctor_cli(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aigc_lib", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_doctor_passes_on_this_install():
    done = doctor_cli()
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("Jupyter kernel", "JupyterLab widgets", "compute budget", "compute device"):
        assert f"[OK]   {name}: " in done.stdout
    assert done.stdout.rstrip().endswith("all required checks passed")


def test_doctor_exits_1_on_a_broken_setting(tmp_path, no_torch_python):
    kernel(tmp_path, no_torch_python)
    done = doctor_cli(AIGC_BUDGET="fast", JUPYTER_PATH=str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[FAIL] compute budget" in done.stdout and "[FAIL] Jupyter kernel" in done.stdout
    assert done.stdout.rstrip().endswith("2 required check(s) failed")
