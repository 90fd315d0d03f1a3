"""The shape of the code, checked: no import circle (imports inside functions included), the
layers' dependencies point one way, and no module grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 425  # "about 400": a docstring or two over is no second concept

# module prefix -> radixrt modules it must not import (the floors above it)
FORBIDDEN = {
    "radixrt.cache": (
        "radixrt.engine",
        "radixrt.model",
        "radixrt.server",
        "radixrt.client",
        "radixrt.http",
        "radixrt.lang",
        "radixrt.replay",
        "radixrt.wire",
        "radixrt.kernels",
    ),
    "radixrt.kernels": ("radixrt.",),
    "radixrt.params": ("radixrt.",),
    "radixrt.outputs": ("radixrt.",),
    "radixrt.prompts": ("radixrt.",),
    "radixrt.wire": (
        "radixrt.engine",
        "radixrt.model",
        "radixrt.server",
        "radixrt.client",
        "radixrt.http",
        "radixrt.lang",
    ),
    "radixrt.client": (
        "radixrt.engine",
        "radixrt.model",
        "radixrt.server",
        "radixrt.http",
        "radixrt.lang",
        "radixrt.replay",
    ),
    "radixrt.http": ("radixrt.engine", "radixrt.model", "radixrt.server", "radixrt.lang", "radixrt.replay"),
    "radixrt.lang": ("radixrt.server", "radixrt.http", "radixrt.wire", "radixrt.replay"),
    "radixrt.replay": ("radixrt.server", "radixrt.http", "radixrt.wire"),
}
ALLOWED = {
    # the pool's memory is laid out as the kernels read it: its formats and scale shapes are defined
    # once, in the kernel layer's layout module, which imports nothing but torch
    ("radixrt.cache.kv_pool", "radixrt.kernels.layout"),
}


def modules() -> dict[str, Path]:
    found = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): p
        for p in (ROOT / "radixrt").rglob("*.py")
        if "kernels" not in p.relative_to(ROOT).parts
    }
    found |= {f"radixrt.kernels.{p.stem}": p for p in (ROOT / "kernels").glob("*.py")}
    return {name.removesuffix(".__init__"): path for name, path in found.items()}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The radixrt modules ``name`` imports anywhere in its file (a package's ``__init__`` counts as
    the package; ``from package import module`` as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            }
    return {m for m in found if m in known and m != name}


def test_no_import_circle():
    known = modules()
    graph = {name: imports(name, path, set(known)) for name, path in known.items()}
    # a package's __init__ re-exporting its own modules is no circle: leave those edges out
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                circles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_dependencies_point_one_way():
    known = modules()
    wrong = [
        f"{name} imports {dep}"
        for name, path in known.items()
        for dep in imports(name, path, set(known))
        for floor, banned in FORBIDDEN.items()
        if name == floor or name.startswith(floor + ".")
        if dep.startswith(banned) and not dep.startswith(floor) and (name, dep) not in ALLOWED
    ]
    assert not wrong, wrong


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(ROOT)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
