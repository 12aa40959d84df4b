"""The package layout is the architecture: imports run one way, and there are no cycles.

Rooms, from the top: `runner.cli` -> `commands` (click only) and `orchestration` -> `jobs` (one job per
command) -> `engine` (the batch loop) -> `stores` (Postgres, Kafka, ClickHouse) -> `rules` (pure) ->
`config`. A module may import its own room and any room below it, never one above. `runner.local` (the
throwaway stack and demo data) may import any production room, and no production module imports it,
not even inside a function.

The test reads the source with `ast`, so imports inside functions and under `TYPE_CHECKING` count too,
and so does a module named in a string (`importlib.import_module`, a registry): such a name must follow
the same direction, except in the two places that load local-only tooling by name so that production
commands never import it: `runner.cli`'s command registry and `runner db init-local`.
"""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "runner"

# Lower number = lower room. Same number = may import each other.
RANKS = {
    "config": 0,
    "rules": 1,
    "stores": 2,
    "engine": 3,
    "jobs": 4,
    "commands": 5,
    "orchestration": 5,
    "local": 6,
    "cli": 7,
    "__main__": 8,
}
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "cli.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNNER.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(RUNNER.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The runner modules `module` imports (a `from pkg import name` of a submodule counts as that)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("runner"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("runner"):
                continue
            subs = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(subs or {target})
    return {name for name in found if name != module}


def _named(path: Path, known: set[str]) -> set[str]:
    """The runner modules a module names in a string constant (loaded by name); a logger's name is no
    import."""
    tree = ast.parse(path.read_text(), str(path))
    logger_names = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
        for arg in node.args
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in known
        and id(node) not in logger_names
    }


# Modules allowed to name local-only tooling in a string, and only these names.
LOADS_LOCAL_BY_NAME = {
    "runner.cli": {"runner.local.stack.cli", "runner.local.seed.cli", "runner.local.warehouse_cli"},
    "runner.commands.db": {"runner.local.sources"},
}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        named = _named(path, known) - LOADS_LOCAL_BY_NAME.get(name, set())
        graph[name] = _imports(name, path, known) | {n for n in named if n != name}
    return graph


def test_local_tooling_is_loaded_by_name_only_where_listed() -> None:
    modules = _modules()
    known = set(modules)
    for name, allowed in LOADS_LOCAL_BY_NAME.items():
        assert allowed <= known, allowed - known
        assert allowed <= _named(modules[name], known), f"{name} no longer names {allowed}: update the list"


def test_runner_top_level_holds_only_the_entry_points() -> None:
    files = {p.name for p in RUNNER.iterdir() if p.is_file() and p.suffix == ".py"}
    assert files == TOP_LEVEL_FILES
    rooms = {p.name for p in RUNNER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(RANKS) - {"cli", "__main__"}


def test_imports_go_one_way() -> None:
    wrong = []
    for module, targets in _graph().items():
        room = _room(module)
        if room == "__init__":
            continue
        for target in targets:
            target_room = _room(target)
            if target_room == "__init__":
                continue  # runner.__version__
            if target_room == "local" and room != "local":
                wrong.append(f"{module} imports {target}: production code never imports runner.local")
            elif RANKS[target_room] > RANKS[room]:
                wrong.append(f"{module} ({room}) imports {target} ({target_room}), a room above it")
    assert not wrong, "\n".join(sorted(wrong))


def test_rules_do_no_io() -> None:
    io_modules = {"psycopg", "confluent_kafka", "clickhouse_connect", "chdb", "click", "subprocess", "socket"}
    wrong = []
    for path in sorted((RUNNER / "rules").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in io_modules]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    # Only cycles among modules count: a package's __init__ importing a child is not a cycle of code.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
def test_no_module_over_600_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, long


def test_no_class_over_300_lines() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > 300:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, "\n".join(long)
