"""The two install routes (pip, conda) and the README's commands stay in step."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-e"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt must pin exactly: {line}"
            pins[req.name.lower()] = spec.version
    return pins


def test_requirements_pin_torch_cpu_wheel_and_install_the_package():
    assert _pins()["torch"] == "2.13.0"
    assert "-e ." in (ROOT / "requirements.txt").read_text()


def test_pins_satisfy_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = _pins()
    for dep in map(Requirement, deps):
        if dep.name.lower() in pins:
            assert dep.specifier.contains(pins[dep.name.lower()]), f"{dep} vs pin {pins[dep.name.lower()]}"
    for dep in map(Requirement, project["dependencies"]):
        assert dep.name.lower() in pins, f"{dep.name} is a dependency but has no pin in requirements.txt"


def test_environment_yml_installs_requirements():
    env = (ROOT / "environment.yml").read_text()
    assert re.search(r"python=3\.11", env) and "-r requirements.txt" in env


def test_ci_runs_the_readme_commands():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci/run").read_text()
    for command in ["pip install -r requirements.txt", "pytest"]:
        assert command in readme and command in ci
