"""Import hygiene of the method package: its pure core loads without torch, and no module imports itself
back, not even through an import written inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fedalign

PACKAGE = Path(fedalign.__file__).parent
# What the backend's API process and the protocol machine need: no torch, no Opacus.
PURE = (
    "fedalign.config",
    "fedalign.metrics",
    "fedalign.phases",
    "fedalign.privacy_accounting",
    "fedalign.protocol",
    "fedalign.schedules",
    "fedalign.unmasking",
    "fedalign.weighting",
)


def test_the_protocol_config_and_metrics_import_without_torch() -> None:
    code = (
        f"import sys\nimport {', '.join(PURE)}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'opacus'))\n"
        "assert not heavy, heavy[:10]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


class _Imports(ast.NodeVisitor):
    """Every module an import statement names, anywhere in a file (function bodies included), except in
    ``if TYPE_CHECKING:`` blocks, which never run."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        self.names.add(base)
        self.names.update(f"{base}.{alias.name}" for alias in node.names)


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        # Importing a module runs every package above it first, except those the importer sits in: they
        # are already being imported when it runs.
        own = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        targets = set(visitor.names)
        for imported in visitor.names:
            parts = imported.split(".")
            targets.update(
                ".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) not in own
            )
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_import_graph_of_the_package_has_no_cycle() -> None:
    graph = _import_graph()
    assert "fedalign.phases" in graph["fedalign.protocol"], "the graph reads the package's imports"
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_a_function_local_import_counts_as_an_edge() -> None:
    visitor = _Imports("fedalign.config", is_package=False)
    visitor.visit(ast.parse("def f():\n    from fedalign.privacy import x\n"))
    assert "fedalign.privacy" in visitor.names
