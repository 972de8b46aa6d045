"""The shape of ``src/cht_interop``, checked by reading its source (``ast``), not by running it.

The rules are the tables just below: change one on purpose, in review, never to make a failure go
away. Each failure names the file and line and says what to do instead.

- every module stays under ``MAX_LINES`` lines: split a longer one by responsibility;
- no import cycle between modules, counting every import (in functions, under ``TYPE_CHECKING``);
- each component imports only what ``LAYERS`` allows it, so dependencies go one way;
- nobody reaches into another module's (or a library's) private names;
- nobody probes the FHIR client for an in-process ``store``;
- the composition roots (``tables.py``, ``handlers.py``, ``cli.py``) list every domain module of
  their kind, with plain imports (a typo fails at import, not silently).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cht_interop"

# -- rules -----------------------------------------------------------------------------------

MAX_LINES = 600
# not Python: the CHT app configuration (JavaScript, forms, its own node_modules)
NOT_CHECKED = ("cht/config/",)


@dataclass(frozen=True)
class May:
    """What one component may import from ``cht_interop`` besides itself.

    An entry is a component (``"fhir"``: any of its modules) or one module (``"fhir.client"``).
    ``types``: only under ``if TYPE_CHECKING:``, for annotations (never at run time).
    """

    run: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def __init__(self, run: set[str] | None = None, types: set[str] | None = None) -> None:
        object.__setattr__(self, "run", frozenset(run or ()))
        object.__setattr__(self, "types", frozenset(types or ()))


# A module belongs to the longest key that is its dotted name below ``cht_interop`` or a package
# above it (``db.migrations.env`` -> "db.migrations"). "__init__" is the package root.
FHIR_PUBLIC = {"fhir.client", "fhir.errors", "fhir.validation", "fhir.registry", "fhir.datetimes"}
LAYERS: dict[str, May] = {
    # foundations: no domain, usable by all
    "__init__": May(),  # the version
    "kit": May(),  # domain-free helpers (GC pause, group commit, FHIR JSON answers)
    "settings": May(),
    "db": May({"kit"}),  # engine, transactions, driver SQL, migrations runner
    "db.migrations": May({"db", "tables"}),  # Alembic's env and scripts: the whole MetaData
    # domains, each above the ones it uses
    "delivery": May({"db", "kit", "settings"}),  # the outbox and its worker
    "gateway": May({"kit", "settings"}),  # interop clients' credentials and authentication
    "cht": May({"kit", "settings"}),  # talking to a real CHT, and its shipped configuration
    "sandbox": May({"cht", "gateway", "kit", "settings"}),  # the CHT emulator: never fhir/ltfu
    "fhir": May({"__init__", "db", "delivery", "gateway", "kit", "settings"}, types={"services"}),
    # LTFU reaches FHIR through its client and public helpers, never the store or its HTTP layer
    "ltfu": May({"cht", "db", "delivery", *FHIR_PUBLIC, "gateway", "kit", "services", "settings"}),
    "openhim": May(),  # later issue
    "console": May(),  # later issue
    # composition: wire the domains together (no domain imports these)
    "services": May({"db", "delivery", "settings"}, types={"fhir.client", "gateway"}),
    "tables": May({"db", "delivery.tables", "fhir.tables", "ltfu.tables"}),
    "handlers": May({"services", "fhir.subscriptions.delivery", "ltfu.jobs"}),
    "health": May({"db", "services"}),
    "app": May(
        {"db", "delivery", "fhir", "gateway", "handlers", "health", "kit", "ltfu", "services", "settings"}
    ),
    "runner": May({"app", "db", "delivery", "gateway", "sandbox", "settings"}),
    "cli": May({"cht.cli", "db", "delivery.cli", "runner", "sandbox.cli", "settings"}),
    "__main__": May({"cli"}),
}

# Underscore names that are a library's public API (named so to never clash with field names):
# namedtuple's, and SQLAlchemy Row's.
PUBLIC_UNDERSCORE_NAMES = {"_asdict", "_fields", "_make", "_replace", "_mapping", "_t", "_tuple"}

# The only modules allowed a library's internals, each wrapping its one use, with a test that fails
# when the library changes them.
LIBRARY_INTERNALS = {
    # several statements in one call into aiosqlite's thread (tests/db/test_aiosqlite_compat.py)
    "db.aiosqlite_compat": {"_execute", "_conn"},
}

# Composition roots and the domain modules each must import: (root, what a domain module of that
# kind looks like, how to recognise one).
ROOTS = (
    ("tables", "a `<domain>/tables.py` (its tables on the shared MetaData)", "tables"),
    ("handlers", "a module defining `register_handlers(services)`", "register_handlers"),
    ("cli", "a `<domain>/cli.py` (its command group)", "cli"),
)

# -- the source, read once -------------------------------------------------------------------


@dataclass
class Import:
    target: str  # a module of cht_interop, dotted below it ("" is the package root)
    line: int
    typing_only: bool


@dataclass
class Module:
    name: str  # dotted below cht_interop ("" for the package root)
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)

    @property
    def where(self) -> str:
        return str(self.path.relative_to(SRC.parent))

    def at(self, line: int) -> str:
        return f"{self.where}:{line}"


@cache
def modules() -> dict[str, Module]:
    root = SRC / PACKAGE
    found: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(NOT_CHECKED):
            continue
        parts = rel.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package, ast.parse(text, str(path)), len(text.splitlines()))
    for module in found.values():
        module.imports = list(_imports(module, found))
    return found


def _typing_only_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _imports(module: Module, known: dict[str, Module]) -> Iterator[Import]:
    typing_only = _typing_only_nodes(module.tree)
    for node in ast.walk(module.tree):
        lazy = id(node) in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Import(_below(alias.name), node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = [PACKAGE, *module.name.split(".")] if module.name else [PACKAGE]
                if not module.is_package:
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` pkg
                sub = _below(f"{base}.{alias.name}")
                yield Import(sub if sub in known else _below(base), node.lineno, lazy)


def _below(dotted: str) -> str:
    return dotted.removeprefix(PACKAGE).removeprefix(".")


def component_of(name: str) -> str | None:
    if name == "":
        return "__init__"
    best = None
    for key in LAYERS:
        if (name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _allows(entries: frozenset[str], target: str) -> bool:
    target = target or "__init__"
    return any(target == e or target.startswith(e + ".") for e in entries)


def _show(name: str) -> str:
    return f"{PACKAGE}.{name}" if name else PACKAGE


# -- (a) size --------------------------------------------------------------------------------


def test_no_module_is_over_the_line_limit() -> None:
    long = [
        f"{m.where}: {m.lines} lines (limit {MAX_LINES}). Split it by responsibility into modules "
        "of one job each (keep its public names importable, or update the importers)."
        for m in modules().values()
        if m.lines > MAX_LINES
    ]
    assert not long, "\n".join(long)


# -- (b) cycles ------------------------------------------------------------------------------


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return found


def _one_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest path from the first member back to itself, inside the component."""
    inside = set(members)
    start = members[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & inside):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError("not a cycle")  # pragma: no cover


def test_no_import_cycle_between_modules() -> None:
    mods = modules()
    graph = {name: {i.target for i in m.imports if i.target != name} for name, m in mods.items()}
    problems = []
    for members in _strongly_connected(graph):
        cycle = _one_cycle(graph, members)
        steps = []
        for a, b in itertools.pairwise(cycle):
            line = min(i.line for i in mods[a].imports if i.target == b)
            steps.append(f"    {mods[a].at(line)} imports {_show(b)}")
        problems.append(
            f"import cycle through {len(members)} modules ({', '.join(_show(m) for m in members)}):\n"
            + "\n".join(steps)
            + "\n  Break it: move what both need into the lower module (or kit/db), or have the lower "
            "one take it as a parameter; an import inside a function or under TYPE_CHECKING still counts."
        )
    assert not problems, "\n".join(problems)


# -- (c) layering ----------------------------------------------------------------------------


def test_every_module_belongs_to_a_declared_component() -> None:
    stray = [
        f"{m.where}: belongs to no component of LAYERS in {Path(__file__).name}. Add it there with "
        "what it may import (a new package is a new row; a module of an existing package needs nothing)."
        for m in modules().values()
        if component_of(m.name) is None
    ]
    assert not stray, "\n".join(stray)


def test_the_declared_layers_go_one_way() -> None:
    graph = {
        key: {c for entry in may.run if (c := component_of(entry)) is not None and c != key}
        for key, may in LAYERS.items()
    }
    unknown = [
        f"LAYERS[{key!r}] names {entry!r}, which is no module or component of {PACKAGE}"
        for key, may in LAYERS.items()
        for entry in may.run | may.types
        if entry != "__init__" and entry not in modules() and entry not in LAYERS
    ]
    cycles = [" -> ".join(_one_cycle(graph, members)) for members in _strongly_connected(graph)]
    assert not unknown and not cycles, "\n".join(
        unknown + [f"LAYERS allows a cycle between components: {c}" for c in cycles]
    )


def test_components_import_only_what_their_layer_allows() -> None:
    problems = []
    for m in modules().values():
        source = component_of(m.name)
        if source is None:
            continue  # reported by test_every_module_belongs_to_a_declared_component
        may = LAYERS[source]
        for imp in m.imports:
            if component_of(imp.target) == source:
                continue
            if _allows(may.run, imp.target) or (imp.typing_only and _allows(may.types, imp.target)):
                continue
            if _allows(may.types, imp.target):
                problems.append(
                    f"{m.at(imp.line)}: `{source}` imports {_show(imp.target)} at run time; LAYERS allows it "
                    "for type annotations only. Put the import under `if TYPE_CHECKING:`, or take the "
                    "object as a parameter."
                )
                continue
            problems.append(
                f"{m.at(imp.line)}: `{source}` may not import {_show(imp.target)} (LAYERS[{source!r}] allows "
                f"{', '.join(sorted(may.run)) or 'nothing'}). Depend on a lower layer's public module, move "
                "the code to the component that owns it, or pass it in; widen LAYERS only on purpose."
            )
    assert not problems, "\n".join(problems)


# -- (d) privates ----------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.Module) -> set[str]:
    """Private names this module defines: functions, classes, assigned names, ``self._x = ...``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if _private(n)}


def _reached_name(node: ast.AST) -> str | None:
    """The private name read off an object other than ``self``/``cls``: ``obj._x``, or
    ``getattr(obj, "_x")`` (``hasattr``, ``setattr``, ``delattr`` alike)."""
    if isinstance(node, ast.Attribute):
        owner, name = node.value, node.attr
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        owner, name = node.args[0], node.args[1].value
    else:
        return None
    if not _private(name) or (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
        return None
    return name


def test_no_reach_into_another_modules_or_a_librarys_private_names() -> None:
    problems = []
    for m in modules().values():
        mine = _defined_here(m.tree) | LIBRARY_INTERNALS.get(m.name, set())
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private_path = [p for p in (node.module or "").split(".") if _private(p)]
                names = [a.name for a in node.names if _private(a.name)]
                if private_path or names:
                    problems.append(
                        f"{m.at(node.lineno)}: imports private {', '.join(private_path + names)} from "
                        f"{'.' * node.level}{node.module or ''}. Use (or add, in the module that owns it) a "
                        "public name."
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(_private(p) for p in alias.name.split(".")):
                        problems.append(f"{m.at(node.lineno)}: imports private module {alias.name}.")
            elif (reached := _reached_name(node)) and reached not in mine | PUBLIC_UNDERSCORE_NAMES:
                problems.append(
                    f"{m.at(node.lineno)}: `{ast.unparse(node)}` reaches into a private name defined "
                    "elsewhere (another module's, or a library's internals). Use its public API; if there "
                    "is none, wrap the one use in a compat module you own, with a test that fails when "
                    "the library changes."
                )
    assert not problems, "\n".join(problems)


# -- (e) the FHIR client ---------------------------------------------------------------------


def test_nobody_probes_the_fhir_client_for_its_store() -> None:
    problems = []
    for m in modules().values():
        for node in ast.walk(m.tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "store"
            ):
                problems.append(
                    f"{m.at(node.lineno)}: `{ast.unparse(node)}` probes an object for an in-process FHIR "
                    "store. Code must work the same with any FhirClient: ask the client (fhir/client.py) "
                    "through its public interface, and add to it what you need."
                )
    assert not problems, "\n".join(problems)


# -- (f) composition roots -------------------------------------------------------------------


def _defines_function(module: Module, name: str) -> bool:
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
        for node in module.tree.body
    )


def test_composition_roots_import_every_domain_module_of_their_kind() -> None:
    mods = modules()
    problems = []
    for root, kind, marker in ROOTS:
        if marker == "register_handlers":
            wanted = {n for n, m in mods.items() if n != root and _defines_function(m, marker)}
        else:
            wanted = {n for n in mods if n.count(".") == 1 and n.endswith("." + marker)}
        imported = {i.target for i in mods[root].imports}
        for name in sorted(wanted - imported):
            problems.append(
                f"{mods[name].where} is {kind}, but {mods[root].where} does not import it: add a plain "
                f"import of {_show(name)} there."
            )
    assert not problems, "\n".join(problems)


def test_modules_are_wired_with_import_statements_not_names_in_strings() -> None:
    problems = []
    for m in modules().values():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in (
                "import_module",
                "find_spec",
                "__import__",
            ):
                problems.append(
                    f"{m.at(node.lineno)}: `{ast.unparse(node.func)}` imports a module named in a string: "
                    "a typo there fails silently or late, and type checkers cannot follow it. Import the "
                    "module with an import statement."
                )
    assert not problems, "\n".join(problems)
