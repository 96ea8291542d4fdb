"""Kernel side of grading: call the learner's functions on every case and save plain results.

Runs inside the learner's kernel, so it decides nothing: it writes tensors (read back with
`torch.load(weights_only=True)`) and JSON; the grader process compares them with references.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from aigc_lib.exercises import exercises_for
from aigc_lib.exercises.core import Raised, call_safely


def encode(value: Any) -> tuple[dict, torch.Tensor | None]:
    """Plain-data description of a returned value; tensors travel separately."""
    if isinstance(value, Raised):
        return {"kind": "raised", "type": value.type_name, "message": value.message}, None
    if type(value) is torch.Tensor:
        return {"kind": "tensor"}, value.detach().cpu().clone().contiguous()
    if type(value) in (float, int, str):
        return {"kind": type(value).__name__, "value": value}, None
    return {"kind": "other", "type": type(value).__name__}, None


def collect(chapter: str, namespace: dict, path: str) -> None:
    """Write `path`.pt (tensors) and `path`.json (everything else) for all of the chapter's cases."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for key, exercise in exercises_for(chapter).items():
        fn = namespace.get(exercise.function)
        for i, case in enumerate(exercise.all_cases()):
            slot = f"{key}/{i}"
            if not callable(fn):
                outcome: Any = Raised("NameError", f"no function named {exercise.function!r} is defined")
            else:
                outcome = call_safely(fn, case.inputs())
            meta[slot], tensor = encode(outcome)
            if tensor is not None:
                tensors[slot] = tensor
    torch.save(tensors, path + ".pt")
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
