"""The shape of ``src/cht_interop``, checked by reading its source (``ast``), not by running it.

The rules are the tables just below: change one on purpose, in review, never to make a failure go
away. Each failure names the file and line and says what to do instead.

(a) every module stays under ``MAX_LINES`` lines: split a longer one by responsibility;
(b) no import cycle between modules, counting every import (in functions, under ``TYPE_CHECKING``);
(c) each component imports only what ``LAYERS`` allows it, and the layers go one way;
(d) nobody reaches into another module's, or a library's, private names;
(e) nobody probes the FHIR client for an in-process ``store``;
(f) the composition roots (``tables.py``, ``handlers.py``, ``cli.py``) import every domain module of
    their kind, with import statements (a typo fails at import, not silently).

The last test checks the checks, on a small package made up for it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cht_interop"

# -- the rules -------------------------------------------------------------------------------

MAX_LINES = 600
NOT_CHECKED = ("cht/config/",)  # not Python: the CHT app configuration (JavaScript, forms)


@dataclass(frozen=True)
class May:
    """What one component may import from ``cht_interop`` besides itself: a component (``"fhir"``:
    any of its modules) or one module (``"fhir.client"``); ``types``: only under
    ``if TYPE_CHECKING:``, for annotations, never at run time."""

    run: frozenset[str]
    types: frozenset[str] = frozenset()


def may(*run: str, types: Iterable[str] = ()) -> May:
    return May(frozenset(run), frozenset(types))


# A module belongs to the longest key naming it or a package above it (``db.migrations.env`` is in
# "db.migrations"); "__init__" is the package root.
FHIR_PUBLIC = ("fhir.client", "fhir.errors", "fhir.validation", "fhir.registry", "fhir.datetimes")
LAYERS: dict[str, May] = {
    # foundations: no domain, usable by all
    "__init__": may(),  # the version
    "kit": may(),  # domain-free helpers (GC pause, group commit, FHIR JSON answers)
    "settings": may(),
    "db": may("kit"),  # engine, the transaction boundary, driver SQL, migrations runner
    "db.migrations": may("db", "tables"),  # Alembic's env and scripts: the whole MetaData
    # domains, each above the ones it uses
    "delivery": may("db", "kit", "settings"),  # the outbox and its worker
    "gateway": may("db", "kit", "settings"),  # API clients (their table), authentication, the role policy
    "cht": may("kit", "settings"),  # talking to a real CHT; its shipped configuration
    "sandbox": may("cht", "gateway", "kit", "settings"),  # the CHT emulator: never fhir or ltfu
    "fhir": may("__init__", "db", "delivery", "gateway", "kit", "settings"),
    # LTFU reaches FHIR through its client and public helpers, never the store or its HTTP layer
    "ltfu": may("cht", "db", "delivery", *FHIR_PUBLIC, "gateway", "kit", "settings"),
    # the HTTP layers: the only domain modules that see the composition root's Services (on app state)
    "fhir.endpoints": may("fhir", "gateway", "kit", "settings", types=["services"]),
    "ltfu.endpoints": may("ltfu", *FHIR_PUBLIC, "gateway", "kit", "settings", types=["services"]),
    "openhim": may(
        "__init__", "db", "gateway.credentials", "kit", "settings"
    ),  # registration, heartbeat, mediator config
    # the administrators' console: reads the domains' public functions and tables, acts through them
    "console": may(
        "cht.client",
        "db",
        "delivery",
        *FHIR_PUBLIC,
        "gateway",
        "journal.store",
        "kit",
        "ltfu.resources",
        "ltfu.tables",
        "ltfu.writes",
        "settings",
        types=["services"],
    ),
    # the transaction log (rows, writer, middleware, job journaling, purge) and what operators watch
    "journal": may("db", "delivery", "kit", "settings"),
    "observability": may(
        "db", "delivery", "fhir.client", "gateway", "journal", "kit", "settings", types=["services"]
    ),
    # the requesting side's client and callback receiver: used by facilities on its own
    "client": may(),
    # `cht-interop demo`: the LTFU story end to end (the client, the app and the sandbox it starts)
    "demo": may("app", "client", "db", "gateway", "sandbox", "settings"),
    # composition: wires the domains together (no domain imports these)
    "services": may(
        "db",
        "delivery",
        "settings",
        # kit.pooled_http: the callbacks' HTTP client, held and closed beside the httpx one
        types=[
            "fhir.client",
            "fhir.store",
            "gateway",
            "ltfu.service",
            "openhim.heartbeat",
            "journal.writer",
            "kit.pooled_http",
        ],
    ),
    "tables": may("db", "delivery.tables", "fhir.tables", "ltfu.tables", "gateway.tables", "journal.tables"),
    "handlers": may("services", "fhir.subscriptions.delivery", "ltfu.jobs", "journal.jobs"),
    "health": may("db", "services"),
    "apidocs": may("__init__", "fhir.errors", "gateway", "kit", "ltfu.openapi"),  # /openapi.json, /docs
    "app": may(
        "apidocs",
        "console.factory",
        "db",
        "delivery",
        "fhir",
        "gateway",
        "handlers",
        "health",
        "kit",
        "ltfu",
        "openhim",
        "services",
        "settings",
        "journal",
        "observability",
    ),
    "runner": may(  # kit: the process-wide settings that serving needs (``kit.fair.share_the_gil``)
        "app",
        "db",
        "delivery",
        "gateway",
        "kit",
        "openhim",
        "sandbox",
        "settings",
        "journal",
        "observability",
    ),
    "cli": may(
        "cht.cli",
        "db",
        "delivery.cli",
        "demo.cli",
        "gateway.cli",
        "openhim.cli",
        "runner",
        "sandbox.cli",
        "settings",
    ),
    "__main__": may("cli"),
}

# Underscore names that are a library's public API, named so to never clash with field names:
# namedtuple's, and SQLAlchemy Row's.
PUBLIC_UNDERSCORE_NAMES = {"_asdict", "_fields", "_make", "_replace", "_mapping", "_t", "_tuple"}

# The only modules allowed a library's internals: each wraps its one use, with a test that fails
# when the library changes them.
LIBRARY_INTERNALS = {
    # several statements in one call into aiosqlite's thread (tests/db/test_aiosqlite_compat.py)
    "db.aiosqlite_compat": {"_execute", "_conn"},
}

# Composition roots: (root module, what the domain modules it must import are, how to tell one).
ROOTS = (
    ("tables", "a `<domain>/tables.py` (its tables on the shared MetaData)", "tables"),
    ("handlers", "a module defining `register_handlers(...)`", "register_handlers()"),
    ("cli", "a `<domain>/cli.py` (its commands)", "cli"),
)
STRING_IMPORTS = ("import_module", "find_spec", "__import__")  # importlib's ways to import by name

# -- the source, read once -------------------------------------------------------------------


@dataclass
class Import:
    target: str  # a module of the package, dotted below it ("" is the package root)
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:``


@dataclass
class Module:
    name: str  # dotted below the package ("" for its root)
    where: str  # the file, for messages
    is_package: bool
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)

    def at(self, line: int) -> str:
        return f"{self.where}:{line}"


Modules = dict[str, Module]


def read_package(root: Path, shown_from: Path) -> Modules:
    """Every module of the package at ``root`` (``shown_from``: what file names are relative to)."""
    found: Modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(NOT_CHECKED):
            continue
        parts = rel.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        text = path.read_text()
        where = path.relative_to(shown_from).as_posix()
        found[name] = Module(name, where, is_package, ast.parse(text, where), len(text.splitlines()))
    for module in found.values():
        module.imports = list(_imports(module, found))
    return found


@cache
def modules() -> Modules:
    return read_package(SRC / PACKAGE, SRC.parent)


def _typing_only_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _imports(module: Module, known: Modules) -> Iterator[Import]:
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
                # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name``, pkg
                sub = _below(f"{base}.{alias.name}")
                yield Import(sub if sub in known else _below(base), node.lineno, lazy)


def _below(dotted: str) -> str:
    return dotted.removeprefix(PACKAGE).removeprefix(".")


def _show(name: str) -> str:
    return f"{PACKAGE}.{name}" if name else PACKAGE


def _report(problems: list[str]) -> str:
    """One problem a line (its continuation lines indented), by file and line number."""

    def where(problem: str) -> tuple[str, int]:
        path, _, rest = problem.partition(":")
        line = rest.split(":", 1)[0]
        return (path, int(line) if line.isdigit() else 0)

    return "\n" + "\n".join(sorted(problems, key=where))


# -- (a) size --------------------------------------------------------------------------------


def long_modules(mods: Modules) -> list[str]:
    return [
        f"{m.where}: {m.lines} lines (limit {MAX_LINES}). Split it by responsibility into modules "
        "of one job each (keep its public names importable, or update the importers)."
        for m in mods.values()
        if m.lines > MAX_LINES
    ]


def test_no_module_is_over_the_line_limit() -> None:
    assert not (problems := long_modules(modules())), _report(problems)


# -- (b) cycles ------------------------------------------------------------------------------


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph[start])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
    """A shortest way from the first member back to itself, inside the component."""
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
    raise AssertionError(f"no cycle through {members}")


def import_cycles(mods: Modules) -> list[str]:
    graph = {name: {i.target for i in m.imports if i.target != name} for name, m in mods.items()}
    problems = []
    for members in _strongly_connected(graph):
        inside = set(members)
        edges = sorted(
            {(a, i.line, i.target) for a in members for i in mods[a].imports if i.target in inside}
        )
        problems.append(
            f"import cycle {' -> '.join(_show(m) for m in _one_cycle(graph, members))}; the imports "
            "between its modules:\n"
            + "\n".join(f"    {mods[a].at(line)} imports {_show(b)}" for a, line, b in edges if a != b)
            + "\n  Break it: move what both need into the lower module (or kit/db), or have the lower "
            "one take it as a parameter; an import inside a function or under TYPE_CHECKING still counts."
        )
    return problems


def test_no_import_cycle_between_modules() -> None:
    assert not (problems := import_cycles(modules())), _report(problems)


# -- (c) layers ------------------------------------------------------------------------------


def component_of(name: str, layers: dict[str, May]) -> str | None:
    if name == "":
        return "__init__" if "__init__" in layers else None
    keys = [k for k in layers if name == k or name.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def _allows(entries: frozenset[str], target: str) -> bool:
    target = target or "__init__"
    return any(target == e or target.startswith(e + ".") for e in entries)


def undeclared_modules(mods: Modules, layers: dict[str, May]) -> list[str]:
    return [
        f"{m.where}: belongs to no component of LAYERS in tests/{Path(__file__).name}. Add it there "
        "with what it may import (a new package is a new row; a module of a listed package needs none)."
        for m in mods.values()
        if component_of(m.name, layers) is None
    ]


def layer_problems(layers: dict[str, May], mods: Modules) -> list[str]:
    """Entries that name nothing, and cycles between components (at run time)."""
    unknown = [
        f"LAYERS[{key!r}] names {entry!r}, which is no module or component of {PACKAGE}: fix the entry."
        for key, rule in layers.items()
        for entry in sorted(rule.run | rule.types)
        if entry != "__init__" and entry not in mods and entry not in layers
    ]
    graph = {
        key: {c for entry in rule.run if (c := component_of(entry, layers)) not in (None, key)}
        for key, rule in layers.items()
    }
    cycles = [
        f"LAYERS lets components import each other in a circle: {' -> '.join(_one_cycle(graph, members))}. "
        "Decide which is the lower one."
        for members in _strongly_connected(graph)
    ]
    return unknown + cycles


def layer_violations(mods: Modules, layers: dict[str, May]) -> list[str]:
    problems = []
    for m in mods.values():
        source = component_of(m.name, layers)
        if source is None:
            continue  # reported by undeclared_modules
        rule = layers[source]
        for imp in m.imports:
            if component_of(imp.target, layers) == source or _allows(rule.run, imp.target):
                continue
            if _allows(rule.types, imp.target):
                if not imp.typing_only:
                    problems.append(
                        f"{m.at(imp.line)}: `{source}` imports {_show(imp.target)} at run time; LAYERS "
                        "allows it for type annotations only. Put the import under `if TYPE_CHECKING:`, "
                        "or take the object as a parameter."
                    )
                continue
            problems.append(
                f"{m.at(imp.line)}: `{source}` may not import {_show(imp.target)} (LAYERS[{source!r}] "
                f"allows {', '.join(sorted(rule.run)) or 'nothing'}). Depend on a lower layer's public "
                "module, move the code to the component that owns it, or pass it in; widen LAYERS only "
                "on purpose, in review."
            )
    return problems


def test_every_module_belongs_to_a_declared_component() -> None:
    assert not (problems := undeclared_modules(modules(), LAYERS)), _report(problems)


def test_the_declared_layers_name_real_modules_and_go_one_way() -> None:
    assert not (problems := layer_problems(LAYERS, modules())), _report(problems)


def test_components_import_only_what_their_layer_allows() -> None:
    assert not (problems := layer_violations(modules(), LAYERS)), _report(problems)


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


def private_reaches(mods: Modules) -> list[str]:
    problems = []
    for m in mods.values():
        mine = _defined_here(m.tree) | LIBRARY_INTERNALS.get(m.name, set())
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [p for p in (node.module or "").split(".") if _private(p)]
                private += [a.name for a in node.names if _private(a.name)]
                if private:
                    problems.append(
                        f"{m.at(node.lineno)}: imports private {', '.join(private)} from "
                        f"{'.' * node.level}{node.module or ''}. Use (or add, in the module that owns it) "
                        "a public name."
                    )
            elif isinstance(node, ast.Import):
                problems += [
                    f"{m.at(node.lineno)}: imports private module {alias.name}. Use the library's public API."
                    for alias in node.names
                    if any(_private(p) for p in alias.name.split("."))
                ]
            elif (reached := _reached_name(node)) and reached not in mine | PUBLIC_UNDERSCORE_NAMES:
                assert isinstance(node, ast.expr)
                problems.append(
                    f"{m.at(node.lineno)}: `{ast.unparse(node)}` reaches into a private name defined "
                    "elsewhere (another module's, or a library's internals). Use its public API, or make "
                    "one in the module that owns it; for a library with none, wrap the one use in a "
                    "compat module listed in LIBRARY_INTERNALS, with a test that fails when it changes."
                )
    return problems


def test_no_reach_into_another_modules_or_a_librarys_private_names() -> None:
    assert not (problems := private_reaches(modules())), _report(problems)


# -- (e) the FHIR client ---------------------------------------------------------------------


def store_probes(mods: Modules) -> list[str]:
    return [
        f"{m.at(node.lineno)}: `{ast.unparse(node)}` probes an object for an in-process FHIR store. Code "
        "must work the same with any FhirClient: ask the client (fhir/client.py) through its public "
        "interface, and add to it what you need."
        for m in mods.values()
        for node in ast.walk(m.tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "store"
    ]


def test_nobody_probes_the_fhir_client_for_its_store() -> None:
    assert not (problems := store_probes(modules())), _report(problems)


# -- (f) composition roots -------------------------------------------------------------------


def _is_domain_module(name: str, module: Module, marker: str) -> bool:
    if marker.endswith("()"):
        return any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == marker[:-2]
            for node in module.tree.body
        )
    return name.count(".") == 1 and name.endswith("." + marker)


def incomplete_roots(mods: Modules) -> list[str]:
    problems = []
    for root, kind, marker in ROOTS:
        imported = {i.target for i in mods[root].imports}
        problems += [
            f"{m.where} is {kind}, but {mods[root].where} does not import it: add an import of "
            f"{_show(name)} there."
            for name, m in sorted(mods.items())
            if name != root and _is_domain_module(name, m, marker) and name not in imported
        ]
    return problems


def string_imports(mods: Modules) -> list[str]:
    return [
        f"{m.at(node.lineno)}: `{ast.unparse(node.func)}` imports a module named in a string: a typo there "
        "fails late or silently, and type checkers cannot follow it. Use an import statement."
        for m in mods.values()
        for node in ast.walk(m.tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in STRING_IMPORTS
    ]


def test_composition_roots_import_every_domain_module_of_their_kind() -> None:
    assert not (problems := incomplete_roots(modules())), _report(problems)


def test_modules_are_wired_with_import_statements_not_names_in_strings() -> None:
    assert not (problems := string_imports(modules())), _report(problems)


# -- the checks themselves -------------------------------------------------------------------


def test_the_checks_read_the_whole_package() -> None:
    """Every import resolves to a module that exists (else the checks would look at nothing)."""
    mods = modules()
    assert {"", "app", "db.engine", "delivery.outbox", "fhir.client", "ltfu.jobs", "sandbox.app"} <= set(mods)
    dangling = [
        f"{m.at(i.line)}: imports {_show(i.target)}, which is no module of the package"
        for m in mods.values()
        for i in m.imports
        if i.target not in mods
    ]
    assert not dangling, _report(dangling)


FAKE = {
    "__init__.py": "",
    "kit/__init__.py": "",
    "kit/helpers.py": "import cht_interop.fhir.store\n",  # (c) kit imports a domain
    "fhir/__init__.py": "",
    "fhir/store.py": (
        "from typing import TYPE_CHECKING\n"
        "from . import search\n"  # (b) store -> search -> store
        "if TYPE_CHECKING:\n"
        "    from cht_interop.services import Services\n"  # allowed: for types only
        "def _mine(): ...\n"
        "class Store:\n"
        "    def _own(self): return self._x, _mine()\n"
    ),
    "fhir/search.py": (
        "import aiosqlite\n"
        "def find(conn, store):\n"
        "    from cht_interop.fhir.store import Store\n"
        "    from cht_interop.services import Services\n"  # (c) at run time
        "    getattr(conn, 'store', None)\n"  # (e)
        "    return conn.raw._conn, store._own(), conn._asdict()\n"  # (d) twice; _asdict is public
    ),
    "services.py": "",
    "tables.py": "",  # (f) misses fhir/tables.py
    "fhir/tables.py": "",
    "handlers.py": "import importlib\nimportlib.import_module('cht_interop.fhir.jobs')\n",  # (f)
    "cli.py": "",
}


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    mods = read_package(root, tmp_path)
    layers = {
        "__init__": may(),
        "kit": may(),
        "fhir": may("kit", types=["services"]),
        "services": may("fhir"),
        "tables": may("fhir.tables"),
        "handlers": may(),
        "cli": may(),
    }
    assert mods["fhir.store"].imports == [
        Import("fhir.search", 2, False),
        Import("services", 4, True),
    ]

    def lines(problems: list[str]) -> list[str]:
        return sorted(p.split(": ", 1)[0].split(" ", 1)[0] for p in problems)

    assert [p.split(";")[0] for p in import_cycles(mods)] == [
        "import cycle cht_interop.fhir.search -> cht_interop.fhir.store -> cht_interop.fhir.search"
    ]
    violations = layer_violations(mods, layers)
    assert lines(violations) == ["cht_interop/fhir/search.py:4", "cht_interop/kit/helpers.py:1"]
    assert "at run time" in violations[0] and "may not import cht_interop.fhir.store" in violations[1]
    assert lines(undeclared_modules(mods, {k: v for k, v in layers.items() if k != "kit"})) == [
        "cht_interop/kit/__init__.py",
        "cht_interop/kit/helpers.py",
    ]
    bad_layers = layer_problems({**layers, "kit": may("fhir"), "fhir": may("kit", "nowhere")}, mods)
    assert len(bad_layers) == 2 and "'nowhere'" in bad_layers[0] and "fhir -> kit -> fhir" in bad_layers[1]
    assert lines(private_reaches(mods)) == ["cht_interop/fhir/search.py:6", "cht_interop/fhir/search.py:6"]
    assert lines(store_probes(mods)) == ["cht_interop/fhir/search.py:5"]
    assert lines(string_imports(mods)) == ["cht_interop/handlers.py:2"]
    assert [p.split(" ", 1)[0] for p in incomplete_roots(mods)] == ["cht_interop/fhir/tables.py"]
    assert long_modules(mods) == []
    mods["kit.helpers"].lines = MAX_LINES + 1
    assert lines(long_modules(mods)) == ["cht_interop/kit/helpers.py"]
