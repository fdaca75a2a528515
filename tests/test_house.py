"""The package's imports, read from the source (every import statement,
those inside functions too): no module imports itself back through others,
and each room (a subpackage or top-level module) imports only rooms on
lower floors."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "agentfly_min"

FLOORS: list[set[str]] = [
    {"errors"},
    {"_validation", "_text", "_user_code"},
    {"records", "configs"},
    {"stream", "images", "structured", "templates", "tools", "local"},
    {"middleware"},
    {"transports"},
    {"agent"},
    {"rewards", "testing", "runfile"},
    {"bench", "gateway"},
    {"integrations"},
    {"cli"},
    {"__main__"},
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_itself_back() -> None:
    modules = _modules()
    assert len(modules) > 80  # the walk found the package
    assert _cycles(_imports(modules)) == []


def test_the_cycle_check_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_has_a_floor_and_imports_only_below_it() -> None:
    modules = _modules()
    rooms = {_room(m) for m in modules} - {"__init__"}
    assert rooms == set(FLOOR), f"rooms without a floor, or floors without a room: {rooms ^ set(FLOOR)}"
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in _imports(modules).items()
        for t in targets
        if _room(m) != "__init__" and _room(t) != "__init__" and _room(m) != _room(t) and FLOOR[_room(t)] >= FLOOR[_room(m)]
    )
    assert upward == []


def test_no_product_module_is_over_400_lines() -> None:
    # Rooms split along what they do keep a module readable in one sitting;
    # past 400 lines they had grown two jobs each (the engine and its
    # requests, verl's rows and its loop, the bench's options and its run).
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
