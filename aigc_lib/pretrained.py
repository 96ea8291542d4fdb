"""Pretrained weights: compact copies of the models the chapters train at the standard budget, shipped
in the package, so a learner can load a chapter's models instead of training them.

    AIGC_WEIGHTS=pretrained jupyter lab workspace/    # every model that has packaged weights loads them
    AIGC_WEIGHTS=train (the default)                  # train here (or load your own checkpoints/)

The switch works inside `training.fit`, the loop every trainer of the course goes through: when a run
is asked for with `checkpoint=checkpoints/NAME.pt` and the package holds `NAME.pt`, fit loads it and
returns its History instead of training, and prints that it did. The weights are those of the standard
budget (names carry the budget), so under AIGC_WEIGHTS=pretrained the budget defaults to standard, even
with a GPU. A learner's own file in checkpoints/ is not read then: "pretrained" shows the packaged
weights, whatever was trained before. A run the package does not have (another budget, a renamed
checkpoint) trains as usual. One the packaged weights do not fit — another architecture, number of
steps, optimizer setting (learning rate, betas, weight decay), scheduler or extra state — trains too,
and fit prints why. What fit cannot see is a changed loss, batch or data setting (a β, free bits, the batch
size) under an unchanged checkpoint name: after editing one, train (AIGC_WEIGHTS=train).

A packaged file is a finished `fit` checkpoint without what only training needs: the weights of the
model and of its non-optimizer `extra_state` (an EMA copy, a GAN's sample snapshots) in float16 (a
tensor that float16 cannot hold stays float32), the History, the optimizers' settings (not their
state) and the random state at the end of training: on one CPU process the cells after it draw what
they would have drawn after training here (the CUDA state is not kept; under several ranks each rank
forks its own stream, as a fresh distributed run does). A pretrained model cannot be resumed, only used
or trained afresh. `export()` writes the files from a folder of checkpoints and `MANIFEST.json` lists
each with its size, steps and SHA-256 (`tools/export_pretrained.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

WEIGHTS_ENV = "AIGC_WEIGHTS"
CHOICES = ("train", "pretrained")
BUDGET = "standard"  # the budget whose runs are packaged
FOLDER = Path(__file__).resolve().parent / "assets" / "pretrained"
MANIFEST = "MANIFEST.json"
FORMAT = "aigc-pretrained-1"
FIX = (
    "restore the files (a clone: git checkout -- aigc_lib/assets/pretrained; an installed wheel: pip install "
    "--force-reinstall aigc_lib), or train instead: unset AIGC_WEIGHTS"
)


def choice() -> str:
    """'pretrained' when `$AIGC_WEIGHTS` asks for the packaged weights, else 'train' (the default)."""
    value = os.environ.get(WEIGHTS_ENV, "").strip().lower() or "train"
    if value not in CHOICES:
        raise ValueError(f"${WEIGHTS_ENV}: expected one of {', '.join(CHOICES)}, got {value!r}")
    return value


def packaged(checkpoint: str | os.PathLike, folder: Path | None = None) -> Path | None:
    """The packaged file for a run checkpointed at `checkpoint` (matched by file name), or None."""
    candidate = (folder or FOLDER) / Path(checkpoint).name
    return candidate if candidate.is_file() else None


def wanted(checkpoint: str | os.PathLike) -> Path | None:
    """The packaged file to load instead of training, when the learner chose pretrained weights."""
    return packaged(checkpoint) if choice() == "pretrained" else None


def available(checkpoint: str | os.PathLike) -> bool:
    """Whether finished weights may be at hand without training: the packaged file under
    AIGC_WEIGHTS=pretrained, else a checkpoint file where fit would look (it does not check that they
    fit the run: fit does, and trains when they do not)."""
    from aigc_lib.runtime import checkpoint_path  # runtime imports this module

    return wanted(checkpoint) is not None or checkpoint_path(checkpoint).exists()


# --- writing ---------------------------------------------------------------------------------------


def _is_optimizer_state(state: Any) -> bool:
    return isinstance(state, Mapping) and {"state", "param_groups"} <= set(state)


def _settings(optimizer_state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An optimizer's settings per parameter group (learning rate, betas, ...), without its state."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer_state["param_groups"]]


def _half(t: torch.Tensor) -> torch.Tensor:
    """float16 when it holds the tensor (no overflow), else the tensor as it is."""
    if not t.is_floating_point() or t.dtype == torch.float16:
        return t
    half = t.to(torch.float16)
    return half if bool(half.isfinite().all()) == bool(t.isfinite().all()) else t


def _map(obj: Any, fn) -> Any:
    """`fn` applied to every tensor in a nest of dicts/lists/tuples."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def compact(state: Mapping[str, Any]) -> dict[str, Any]:
    """A finished fit checkpoint reduced to what using the model needs (see the module's docstring)."""
    for key in ("step", "model", "optimizer", "extra", "history", "rng"):
        if key not in state:
            raise ValueError(f"checkpoint: not a checkpoint written by fit() (no {key!r})")
    target = state.get("steps")
    if target is not None and state["step"] < target:
        raise ValueError(f"checkpoint: an unfinished run (step {state['step']} of {target})")
    extra = state["extra"]
    return {
        "format": FORMAT,
        "step": int(state["step"]),
        "model": _map(state["model"], _half),
        "extra": {k: _map(v, _half) for k, v in extra.items() if not _is_optimizer_state(v)},
        "optimizers": {"": _settings(state["optimizer"])}
        | {k: _settings(v) for k, v in extra.items() if _is_optimizer_state(v)},
        "scheduler": state["scheduler"] is not None,
        "history": state["history"],
        "rng": {k: v for k, v in state["rng"].items() if k in ("torch", "python", "numpy")},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _values(model_state: Mapping[str, Any]) -> int:
    return sum(t.numel() for t in model_state.values() if isinstance(t, torch.Tensor) and t.is_floating_point())


def export(checkpoints: Iterable[Path], folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Write the compact copy of each finished checkpoint into `folder` (default: the package's) and
    rewrite its MANIFEST.json; files of earlier exports not among `checkpoints` are removed. Every
    checkpoint is read and checked before anything is written; each file is written atomically.
    Returns the manifest."""
    folder = folder or FOLDER
    small = {}
    for src in checkpoints:
        try:
            state = torch.load(src, map_location="cpu", weights_only=True)
            small[src.name] = compact(state)
        except Exception as err:
            raise ValueError(f"export: {src}: {err}") from err
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, state in sorted(small.items()):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        _write_atomic(folder / name, buffer.getvalue())
        manifest[name] = {
            "steps": state["step"],
            "values": _values(state["model"]),
            "bytes": len(buffer.getvalue()),
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        }
    _write_atomic(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    for stale in folder.glob("*.pt"):
        if stale.name not in manifest:
            stale.unlink()
    return manifest


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def verify(folder: Path | None = None) -> tuple[int, int]:
    """(files, bytes) of the packaged weights, after checking each against MANIFEST.json; raises
    RuntimeError naming the first missing or damaged file (ValueError for a damaged MANIFEST.json)."""
    folder = folder or FOLDER
    if not (folder / MANIFEST).is_file():
        raise RuntimeError(f"no packaged weights: {folder / MANIFEST} is missing; {FIX}")
    manifest = _listed(folder)  # a damaged MANIFEST.json: ValueError naming the fix
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise RuntimeError(f"packaged weights {name}: missing or damaged (SHA-256 differs from {MANIFEST})")
    return len(manifest), sum(entry["bytes"] for entry in manifest.values())


# --- reading ---------------------------------------------------------------------------------------


def _listed(folder: Path) -> dict[str, Any]:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        return json.loads(manifest_path.read_text())
    except ValueError as err:
        raise ValueError(f"pretrained: {manifest_path} is damaged ({err}); {FIX}") from err


def missing(checkpoint: str | os.PathLike, folder: Path | None = None) -> bool:
    """Whether MANIFEST.json lists a file for this checkpoint that is not there (a damaged install)."""
    folder = folder or FOLDER
    name = Path(checkpoint).name
    return name in _listed(folder) and not (folder / name).is_file()


def read(path: Path) -> dict[str, Any]:
    """A packaged file, checked against MANIFEST.json's SHA-256, its float16 tensors back in float32."""
    entry = _listed(path.parent).get(path.name)
    if entry is not None and _sha256(path) != entry["sha256"]:
        raise ValueError(f"pretrained: {str(path)!r} is damaged (its SHA-256 differs from {MANIFEST}); {FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"pretrained: cannot read {str(path)!r} ({type(err).__name__}); {FIX}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"pretrained: {str(path)!r} is not a packaged weights file ({FORMAT}); {FIX}")
    return _map(state, lambda t: t.float() if t.dtype == torch.float16 else t)


def _shapes(obj: Any, prefix: str = "") -> dict[str, tuple | type]:
    """Key path -> tensor shape (or the type of a non-tensor) of a nested state."""
    if isinstance(obj, torch.Tensor):
        return {prefix: tuple(obj.shape)}
    if isinstance(obj, Mapping):
        out: dict[str, tuple | type] = {}
        for k, v in obj.items():
            out.update(_shapes(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: type(obj)}


def mismatch(current: Mapping[str, Any], saved: Mapping[str, Any]) -> str | None:
    """Why `saved` cannot be loaded where `current` is (missing/extra keys, other shapes), or None."""
    mine, theirs = _shapes(current), _shapes(saved)
    if mine.keys() != theirs.keys():
        missing, unexpected = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, shape in mine.items():
        if isinstance(shape, tuple) and shape != theirs[key]:
            return f"{key}: shape {theirs[key]} in the file, {shape} in this model"
    return None


def _same_settings(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> bool:
    """Equal settings in every parameter group; `lr` is skipped where a scheduler keeps the starting value
    in `initial_lr` (it moves `lr` during training), and only keys both sides have are compared."""
    if len(mine) != len(theirs):
        return False
    for a, b in zip(mine, theirs, strict=True):
        keys = (a.keys() & b.keys()) - ({"lr"} if "initial_lr" in a else set())
        if any(a[k] != b[k] for k in keys):
            return False
    return True


def unusable(
    state: Mapping[str, Any], steps: int, model_state: Mapping, optimizer, scheduler, extra: Mapping[str, Any]
) -> str | None:
    """Why the packaged `state` does not fit this run, or None."""
    if state["step"] != steps:
        return f"they are for {state['step']} steps, this run asks for {steps}"
    why = mismatch(model_state, state["model"])
    if why:
        return f"the model differs ({why})"
    if state["scheduler"] != (scheduler is not None):
        return f"they were trained {'with' if state['scheduler'] else 'without'} a learning-rate scheduler"
    optimizers = {"": optimizer} | {k: v for k, v in extra.items() if isinstance(v, torch.optim.Optimizer)}
    if set(optimizers) != set(state["optimizers"]) or set(extra) - set(optimizers) != set(state["extra"]):
        return f"the run keeps other extra state ({sorted(extra)} here)"
    for name, opt in optimizers.items():
        if not _same_settings(_settings(opt.state_dict()), state["optimizers"][name]):
            return f"the optimizer{' ' + repr(name) if name else ''}'s settings differ (learning rate, betas, ...)"
    for name in state["extra"]:
        why = mismatch(extra[name].state_dict(), state["extra"][name])
        if why:
            return f"{name!r} differs ({why})"
    return None
