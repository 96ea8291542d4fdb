"""Pretrained weights: compact copies of the models the chapters train at the standard budget, shipped
in the package, so a learner can load a chapter's models instead of training them.

    AIGC_WEIGHTS=pretrained jupyter lab workspace/    # every model that has packaged weights loads them
    AIGC_WEIGHTS=train (the default)                  # train here (or load your own checkpoints/)

The switch works inside `training.fit`, the loop every trainer of the course goes through: when a run
is asked for with `checkpoint=checkpoints/NAME.pt` and the package holds `NAME.pt`, fit loads it and
returns its History instead of training (and says so in the notebook). A learner's own file in
checkpoints/ is not read then: the packaged weights are what "pretrained" shows, whatever was trained
before. A run the package does not have (another budget, a changed name) trains as usual; one whose
model no longer matches the packaged weights (a changed width, say) or asks for other steps trains
too, with a warning that says why.

A packaged file is a finished `fit` checkpoint without what only training needs: the weights of the
model and of its non-optimizer `extra_state` (an EMA copy, a GAN's sample snapshots) in float16, the
History, and the random state at the end of training (so the cells after it draw what they would have
drawn after training here). Optimizer and scheduler states are dropped: a pretrained model cannot be
resumed, only used or trained afresh. `export()` writes them from a folder of checkpoints;
`MANIFEST.json` lists each file with its size, steps and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

WEIGHTS_ENV = "AIGC_WEIGHTS"
CHOICES = ("train", "pretrained")
FOLDER = Path(__file__).resolve().parent / "assets" / "pretrained"
MANIFEST = "MANIFEST.json"
FORMAT = "aigc-pretrained-1"


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
    """Whether a finished model is at hand without training: the packaged weights under
    AIGC_WEIGHTS=pretrained, else a checkpoint file at that path."""
    return wanted(checkpoint) is not None or Path(checkpoint).exists()


# --- writing ---------------------------------------------------------------------------------------


def _is_optimizer_state(state: Any) -> bool:
    return isinstance(state, Mapping) and {"state", "param_groups"} <= set(state)


def _cast(obj: Any, dtype: torch.dtype, only: torch.dtype | None = None) -> Any:
    """Every floating tensor in a nest of dicts/lists/tuples cast to `dtype` (only those of dtype `only`)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and (only is None or obj.dtype == only):
            return obj.to(dtype)
        return obj
    if isinstance(obj, Mapping):
        return {k: _cast(v, dtype, only) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(v, dtype, only) for v in obj)
    return obj


def compact(state: Mapping[str, Any]) -> dict[str, Any]:
    """A finished fit checkpoint reduced to what using the model needs (see the module's docstring)."""
    for key in ("step", "model", "extra", "history", "rng"):
        if key not in state:
            raise ValueError(f"checkpoint: not a checkpoint written by fit() (no {key!r})")
    rng = {k: v for k, v in state["rng"].items() if k in ("torch", "python", "numpy")}
    return {
        "format": FORMAT,
        "step": int(state["step"]),
        "model": _cast(state["model"], torch.float16),
        "extra": {k: _cast(v, torch.float16) for k, v in state["extra"].items() if not _is_optimizer_state(v)},
        "history": state["history"],
        "rng": rng,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parameters(model_state: Mapping[str, Any]) -> int:
    return sum(t.numel() for t in model_state.values() if isinstance(t, torch.Tensor) and t.is_floating_point())


def export(checkpoints: Iterable[Path], folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Write the compact copy of each finished checkpoint into `folder` (default: the package's) and
    update its MANIFEST.json; returns the manifest."""
    folder = folder or FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for src in checkpoints:
        state = torch.load(src, map_location="cpu", weights_only=True)
        small = compact(state)
        dest = folder / src.name
        torch.save(small, dest)
        manifest[src.name] = {
            "steps": small["step"],
            "parameters": _parameters(small["model"]),
            "bytes": dest.stat().st_size,
            "sha256": _sha256(dest),
        }
    manifest = dict(sorted(manifest.items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(folder: Path | None = None) -> tuple[int, int]:
    """(files, bytes) of the packaged weights, after checking each against MANIFEST.json; raises
    RuntimeError naming the first missing or damaged file."""
    folder = folder or FOLDER
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise RuntimeError(f"no packaged weights: {manifest_path} is missing")
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise RuntimeError(f"packaged weights {name}: missing or damaged (SHA-256 differs from {MANIFEST})")
    return len(manifest), sum(entry["bytes"] for entry in manifest.values())


# --- reading ---------------------------------------------------------------------------------------


def read(path: Path) -> dict[str, Any]:
    """A packaged file, its float16 tensors back in float32."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"pretrained: {str(path)!r} is not a packaged weights file ({FORMAT})")
    return _cast(state, torch.float32, only=torch.float16)


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


def unusable(state: Mapping[str, Any], steps: int, model_state: Mapping, extra: Mapping[str, Any]) -> str | None:
    """Why the packaged `state` does not fit this run (steps, model, extra state), or None."""
    if state["step"] != steps:
        return f"they are for {state['step']} steps, this run asks for {steps}"
    why = mismatch(model_state, state["model"])
    if why:
        return f"the model differs ({why})"
    for name, obj in extra.items():
        if isinstance(obj, torch.optim.Optimizer):
            continue
        if name not in state["extra"]:
            return f"they have no {name!r} state"
        why = mismatch(obj.state_dict(), state["extra"][name])
        if why:
            return f"{name!r} differs ({why})"
    return None


def warn_unusable(path: Path, why: str) -> None:
    warnings.warn(f"pretrained weights {path.name}: not used, {why}; training here instead", stacklevel=3)
