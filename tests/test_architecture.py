"""The layering of docs/architecture.md, checked on the source: which way imports may point."""

import ast
from pathlib import Path

import pytest

from aigc_lib.paths import ROOT

PACKAGE = ROOT / "aigc_lib"
LAYERS = {
    0: {
        "__init__",
        "runtime",
        "checks",
        "distributed",
        "pretrained",
        "training",
        "data",
        "captions",
        "plots",
        "generation",
        "metrics",
        "paths",
    },
    1: {"history", "rnn", "gan", "vae", "transformer", "diffusion"},  # one model family per chapter 00-05
    2: {"clip", "text_to_image", "speech", "responsible"},  # compositions of several families (chapters 06 on)
    3: {"recipes", "exercises", "grading", "notebooks", "book", "kernel_wait", "doctor", "__main__"},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The top-level part of the library a module belongs to: aigc_lib.diffusion.unet -> diffusion."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The aigc_lib modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = {f"{base}.{a.name}" for a in node.names}
            submodules = names & MODULES  # `from aigc_lib import rnn` imports aigc_lib.rnn
            found |= submodules | ({base} if names - submodules else set())
    return {m for m in found if m == "aigc_lib" or m.startswith("aigc_lib.")}


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p) for p in SOURCES}


def known(module: str) -> str | None:
    """`module` if it is a module of the library (not a name imported from one), else its parent's."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def test_every_part_of_the_library_has_a_layer():
    units = {unit(module_name(p)) for p in SOURCES}
    assert units <= set(LAYER_OF), f"add to LAYERS (and docs/architecture.md): {sorted(units - set(LAYER_OF))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_families_stay_apart(path):
    mine = unit(module_name(path))
    for target in filter(None, map(known, imports(path))):
        theirs = unit(target)
        if theirs == mine:
            continue
        assert LAYER_OF[theirs] <= LAYER_OF[mine], (
            f"{mine} (layer {LAYER_OF[mine]}) imports {target} (layer {LAYER_OF[theirs]})"
        )
        if LAYER_OF[mine] == LAYER_OF[theirs] == 1:
            pytest.fail(f"chapter module {mine} imports chapter module {target}: move the shared part to layer 0")
        if mine == "grading":
            assert theirs in LAYERS[0] | {"exercises"}, f"the grader imports {target}"


def test_no_import_cycles():
    graph = {module_name(p): {m for m in map(known, imports(p, top_level_only=True)) if m} for p in SOURCES}
    done, active = set(), []

    def visit(node):
        if node in active:
            cycle = active[active.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        active.append(node)
        for nxt in sorted(graph.get(node, ()) - {node}):
            visit(nxt)
        active.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
