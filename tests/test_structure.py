"""The package's shape: its imports point one way (no module imports, however indirectly, one that imports it)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mobilenetv3"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules an ``import`` or ``from ... import`` names: ``from .x import y`` names ``.x.y`` when
    that is a module, else ``.x`` (whose ``__init__`` runs to give ``y``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, at the top or inside a function."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        imports = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports |= imported_modules(node, module, path.name == "__init__.py", set(paths))
        graph[module] = {name for name in imports if name in paths and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import circle."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return found


def test_finds_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("source, expected", [
    ("from .loader import Batch", {"mobilenetv3.data.loader"}),
    ("from . import gpu_decode", {"mobilenetv3.data.gpu_decode"}),
    ("from .. import checkpoint, errors", {"mobilenetv3.checkpoint", "mobilenetv3.errors"}),
    ("from .. import __version__", {"mobilenetv3"}),
    ("def f():\n    from ..errors import UsageError", {"mobilenetv3.errors"}),
])
def test_reads_relative_imports(source, expected):
    modules = {"mobilenetv3", "mobilenetv3.data", "mobilenetv3.data.loader", "mobilenetv3.data.gpu_decode",
               "mobilenetv3.checkpoint", "mobilenetv3.errors"}
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= imported_modules(node, "mobilenetv3.data.batches", False, modules)
    assert found == expected


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "mobilenetv3.data.loader" in graph and len(graph) > 50
    assert cycles(graph) == []


MAX_FUNCTION_LINES = 50  # a function fits on a screen (STYLE.md); the model's constructor is the one exception
LONGER_ALLOWED = {("mobilenetv3.models.mobilenetv3", "MobileNetV3.__init__")}


def long_functions() -> list[tuple[str, str, int]]:
    """``(module, Class.function, lines)`` of every function of the package longer than ``MAX_FUNCTION_LINES``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for owner in ast.walk(tree):
            for node in ast.iter_child_nodes(owner):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{owner.name}.{node.name}" if isinstance(owner, ast.ClassDef) else node.name
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES and (module_name(path), name) not in LONGER_ALLOWED:
                        found.append((module_name(path), name, lines))
    return found


def test_no_function_longer_than_a_screen():
    assert long_functions() == []


def test_the_training_task_keeps_the_runner_only():
    assert len((PACKAGE / "tasks" / "train.py").read_text().splitlines()) < 550
