"""radixrt.lang's modules import one another without a circle, function-level imports included:
each depends only on modules below it."""

from __future__ import annotations

import ast
from pathlib import Path

import radixrt.lang

PACKAGE = Path(radixrt.lang.__file__).parent
MODULES = {f"radixrt.lang.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imports(path: Path) -> set[str]:
    """The radixrt.lang modules that the source at ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & MODULES.keys()


def test_no_module_of_the_language_imports_one_that_imports_it_back():
    graph = {module: imports(path) for module, path in MODULES.items()}
    placed: set[str] = set()  # modules whose imports are all placed: bottom up
    while len(placed) < len(graph):
        ready = {m for m in graph if m not in placed and graph[m] <= placed}
        assert ready, f"an import circle among {sorted(set(graph) - placed)}"
        placed |= ready
