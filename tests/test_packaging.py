"""The two install routes (pip, conda) and the README's commands stay in step."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pins(name: str = "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith(("-e", "-r")):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name} must pin exactly: {line}"
            pins[req.name.lower()] = spec.version
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_requirements_pin_torch_cpu_wheel_and_install_the_package():
    assert _pins()["torch"] == "2.13.0"
    assert "-e ." in (ROOT / "requirements.txt").read_text()


def test_pins_satisfy_pyproject_ranges():
    project = _project()
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = {**_pins(), **_pins("requirements-book.txt")}
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


def test_the_book_toolchain_is_an_optional_extra_pinned_on_its_own():
    course, book = _pins(), _pins("requirements-book.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-book.txt").read_text()  # one command installs both
    for dep in map(Requirement, _project()["optional-dependencies"]["book"]):
        assert dep.name.lower() in book, f"the book extra's {dep.name} has no pin in requirements-book.txt"
    assert not set(course) & set(book), "a package pinned in both files"
    toolchain = {"jupyter-book", "sphinx", "myst-nb", "myst-parser", "jupyter-cache", "sphinx-mathjax-offline"}
    assert not toolchain & set(course), "the default install stays lean: the book's toolchain is optional"


def test_version_is_one_number_everywhere():
    import aigc_lib

    version = _project()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and aigc_lib.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)
    assert f"v{version}" in changelog and "MIT" in (ROOT / "LICENSE").read_text()


def test_the_pretrained_weights_are_package_data():
    from fnmatch import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aigc_lib"]
    for name in ("assets/pretrained/05_unet_standard_12.pt", "assets/pretrained/MANIFEST.json"):
        assert any(fnmatch(name, p) for p in patterns), f"{name} would be left out of a wheel"
