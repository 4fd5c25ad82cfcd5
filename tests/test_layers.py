"""The package reads as the pipeline: every module belongs to one layer, imports only from its own layer or the ones
below it (imports inside functions included), and no modules import each other in a circle.

    errors, utils -> data -> networks -> artifact -> inference -> evaluation -> engine -> study, bundle -> cli, demo,
    release

The engines sit above inference and evaluation because fine-tuning validates with the predictor and scores with the
one Dice (as nnU-Net's trainer does); nothing below them trains."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "volmae"

LAYERS = [
    ("errors", "utils"),
    ("data",),
    ("networks",),
    ("artifact",),
    ("inference",),
    ("evaluation",),
    ("engine",),
    ("study", "bundle"),
    ("cli", "demo", "release"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every volmae module ``path`` imports, at the top or inside a function (``from volmae.x import y`` counts
    ``volmae.x.y`` when that is a module, else ``volmae.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("volmae")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("volmae") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module(p) for p in FILES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # the package itself (volmae/__init__) imports lazily, by name


def test_every_module_has_a_layer():
    unplaced = sorted({_layer(m) for m in MODULES} - set(RANK) - {None})
    assert not unplaced, f"modules outside the layer table: {unplaced}; place them in tests/test_layers.py"


def _upward(module: str, targets: set[str]) -> list[str]:
    own = _layer(module)
    if own is None:
        return []
    return [
        f"{module} ({own}) imports {t} ({_layer(t)})" for t in sorted(targets) if RANK.get(_layer(t), -1) > RANK[own]
    ]


def test_no_module_imports_a_higher_layer():
    upward = [line for path in FILES for line in _upward(_module(path), _imports(path))]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_layer_check_catches_an_upward_import():
    assert _upward("volmae.networks.registry", {"volmae.engine.loop", "volmae.utils.io"}) == [
        "volmae.networks.registry (networks) imports volmae.engine.loop (engine)"
    ]
    assert _upward("volmae.engine.finetune", {"volmae.inference.predictor", "volmae.evaluation.metrics"}) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in FILES:
        here = _module(path)
        graph[here] |= {t for t in _imports(path) if t in MODULES and t != here and not here.startswith(t + ".")}
    return graph


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ re-exports its modules; a module importing its own package is the circle to catch
    assert _cycles(graph) == []


@pytest.mark.parametrize(
    "graph, circles",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"a"}}, []),
    ],
)
def test_the_circle_finder_finds_circles(graph, circles):
    assert _cycles(graph) == circles


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from volmae.cli.common import run_main\n    import volmae.study.runner\n")
    assert _imports(f) == {"volmae.cli.common", "volmae.study.runner"}
