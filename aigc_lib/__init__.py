"""aigc_lib — the tested library behind the "AIGC from scratch" notebook course."""

from aigc_lib.runtime import budget, current_budget, get_device, seed_everything, setup


def _version() -> str:
    """This code's version: pyproject.toml's in a source tree (an editable install's metadata keeps the
    version it was installed at), else the installed distribution's metadata."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "aigc_lib" and "version" in project:
            return project["version"]
    try:
        return metadata.version("aigc_lib")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
__all__ = ["budget", "current_budget", "get_device", "seed_everything", "setup", "__version__"]
