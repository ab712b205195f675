"""The layout keeps its promises: short modules, no import cycles, documented packages, light imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adaptrix_core", "adaptrix_plugins")
MAX_LINES = 400
HEAVY = ("torch", "transformers", "onnxruntime", "onnxruntime_genai", "faiss", "peft", "sentence_transformers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports when it is imported (function bodies and TYPE_CHECKING skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    imported: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                imported.add(base)
                imported.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return {module for module in imported if module in known and module != name}


def test_no_module_is_longer_than_the_limit():
    too_long = {name: n for name, path in _modules().items()
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert too_long == {}


def test_every_package_says_what_it_owns():
    undocumented = [name for name, path in _modules().items()
                    if path.name == "__init__.py" and not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert undocumented == []


def test_no_import_cycles_between_modules():
    modules = _modules()
    known = set(modules)
    graph = {name: _module_level_imports(name, path, known) for name, path in modules.items()}
    # A module importing its own package's __init__ (or a parent package) is not a cycle worth reporting.
    graph = {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}
    cycles, state = [], {}

    def walk(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert cycles == []


@pytest.mark.parametrize("code", [
    "import adaptrix_core\nfrom adaptrix_core import ModularAdaptrixEngine, load_config\nModularAdaptrixEngine()",
    "import adaptrix_core.plugin",
    "from adaptrix_core.cli import main\nimport sys\nsys.argv = ['adaptrix', '--help']\ntry:\n    main()\nexcept SystemExit:\n    pass",
])
def test_light_entry_points_import_no_heavy_library(code):
    probe = code + f"\nimport sys\nprint('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert output.strip().splitlines()[-1] == "HEAVY:"
