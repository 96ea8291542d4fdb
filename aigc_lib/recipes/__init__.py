"""Recipes: a chapter's trained models as data — architecture, sizes per budget, training settings
and checkpoint name — written once and used by the notebooks, the benchmarks and the command line.

A chapter that reuses another's model (chapter 03 scores chapter 02's DCGAN) asks for the recipe by
name instead of retyping it, so both load the same checkpoint:

    from aigc_lib import recipes
    G, D, run = recipes.get("02.dcgan").run(data.mnist5k("train"), device=rt.device)  # trains, or loads

Each chapter's recipes live in `recipes/chNN.py` as a tuple `RECIPES`; this module collects them.
Layering: recipes import the chapter modules, never the reverse.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aigc_lib import pretrained
from aigc_lib.runtime import current_budget


@dataclass(frozen=True)
class Recipe:
    """A trained model's definition. `sizes[budget]` holds the numbers that change with the budget
    (width, steps, ...); `train(sizes, data, device, **run_options)` (`data`: the chapter's dataset,
    e.g. `data.mnist5k("train")`) builds the model from a fixed
    seed, trains it with `training.fit` through the chapter's trainer (checkpointed under
    `checkpoint.format(budget=..., **sizes)`) and returns what the chapter uses (a model, or a tuple)."""

    name: str  # "<chapter>.<model>", e.g. "02.dcgan"
    summary: str
    sizes: Mapping[str, Mapping[str, Any]]  # budget -> sizes
    checkpoint: str  # a file name pattern under checkpoints/, e.g. "02_dcgan_{budget}_{width}.pt"
    train: Callable[..., Any]
    # data(sizes) -> the `data` the notebook passes to run(), for the command line (`python -m aigc_lib
    # train NAME`); None when training needs more than a dataset (another recipe's trained model)
    data: Callable[[Mapping[str, Any]], Any] | None = None

    def sizes_for(self, budget: str | None = None) -> dict[str, Any]:
        budget = budget or current_budget()
        if budget not in self.sizes:
            raise ValueError(f"budget: recipe {self.name!r} has sizes for {sorted(self.sizes)}, got {budget!r}")
        return dict(self.sizes[budget])

    def checkpoint_for(self, budget: str | None = None) -> str:
        budget = budget or current_budget()
        return "checkpoints/" + self.checkpoint.format(budget=budget, **self.sizes_for(budget))

    def trained(self, budget: str | None = None) -> bool:
        """Whether `run` would load a finished model rather than train: the package's pretrained weights
        under AIGC_WEIGHTS=pretrained, or a checkpoint under checkpoints/ (a finished one, or the
        run resumes it)."""
        return pretrained.available(self.checkpoint_for(budget))

    def run(self, data: Any, *, device: Any = "cpu", budget: str | None = None, **run_options: Any) -> Any:
        """Train (or load the finished checkpoint) at `budget` (default: the current one)."""
        budget = budget or current_budget()
        run_options.setdefault("checkpoint", self.checkpoint_for(budget))
        return self.train(self.sizes_for(budget), data, device, **run_options)


def _collect() -> dict[str, Recipe]:
    found: dict[str, Recipe] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ch"):
            for recipe in importlib.import_module(f"{__name__}.{info.name}").RECIPES:
                if recipe.name in found:
                    raise RuntimeError(f"two recipes named {recipe.name!r}")
                found[recipe.name] = recipe
    return found


def all_recipes() -> dict[str, Recipe]:
    """Every recipe of the course, by name."""
    return _collect()


def get(name: str) -> Recipe:
    recipes = _collect()
    if name not in recipes:
        raise ValueError(f"recipe: unknown {name!r}; the course has {', '.join(sorted(recipes)) or 'none yet'}")
    return recipes[name]


def train_replica(ranks: Any, device: Any, name: str, sizes: Mapping[str, Any], data: Any, run: Mapping) -> tuple:
    """One rank's part of training recipe `name` at `sizes` on `data` (`distributed.run_local`'s
    worker: `run_local(train_replica, 2, "04.char_gpt", sizes, data, {"progress": False})`).
    Returns this rank's trained weights (on the CPU) and its History."""
    result = get(name).train(dict(sizes), data, device, **{"checkpoint": None, **run})
    parts = result if isinstance(result, tuple) else (result,)
    model = next(p for p in parts if hasattr(p, "state_dict"))
    history = next(p for p in parts if hasattr(p, "losses"))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, history
