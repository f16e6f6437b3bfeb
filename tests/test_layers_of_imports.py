"""The direction of imports: every module imports only its own layer or the layers below it, no two
modules import each other through any chain, and only ``pipeline.app.tracking`` imports MLflow.

Read from the code as text (``ast``), top-level and function-level imports alike, so the layering of
docs/development.md ("Where things live") cannot erode silently."""

import ast
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

LAYERS = [  # bottom to top; a module belongs to the first prefix it starts with
    ("pipeline.validation", "pipeline.native_logs", "pipeline"),  # "pipeline": the package's __init__
    ("pipeline.effects",),
    ("pipeline.config", "pipeline.perturbation"),
    ("pipeline.hwmodel",),
    ("pipeline.learning",),
    ("pipeline.evaluation", "pipeline.deploy"),
    ("pipeline.flow",),
    ("pipeline.app.compare", "pipeline.app.plots", "pipeline.app.tracking", "pipeline.app.ui"),
    ("pipeline.app.stages",),
    ("sweeps",),
    ("pipeline.cli", "benchmarks"),
]


def modules() -> dict[str, Path]:
    found = {}
    for root in ("pipeline", "sweeps", "benchmarks"):
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The project's modules ``path`` imports (the longest known prefix of each import)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")] + [base])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def layer_of(name: str) -> int:
    best = max(((len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
                if name == prefix or name.startswith(prefix + ".")), default=None)
    assert best is not None, f"{name} is in no layer: add it to LAYERS (and to docs/development.md)"
    return best[1]


GRAPH = {name: imported(path, name, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name):
    upward = sorted(target for target in GRAPH[name] if layer_of(target) > layer_of(name)
                    and not (name == "pipeline" and target == "pipeline.native_logs"))
    assert not upward, f"{name} (layer {layer_of(name)}) imports upward: {upward}"


def test_no_import_cycle():
    """No chain of imports leads from a module back to itself (the package ``pipeline`` aside: every
    module imports it first, for the Keras switch, and it imports only native_logs)."""
    graph = {name: {t for t in targets if t != "pipeline"} for name, targets in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path[path.index(target):], target])
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_only_tracking_imports_mlflow():
    importers = sorted(name for name, path in modules().items()
                       if any(isinstance(node, (ast.Import, ast.ImportFrom))
                              and any((alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] == "mlflow"
                                      for alias in node.names)
                              for node in ast.walk(ast.parse(path.read_text()))))
    assert importers == ["pipeline.app.tracking"]


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: a deploy module importing the stages is upward."""
    path = tmp_path / "probe.py"
    path.write_text("from pipeline.app import stages\nimport pipeline.flow\n")
    targets = imported(path, "pipeline.deploy.probe", set(modules()))
    assert targets == {"pipeline.app", "pipeline.app.stages", "pipeline.flow"}
    assert all(layer_of(target) > layer_of("pipeline.deploy.probe") for target in targets - {"pipeline.app"})
