"""The import layers of ``src/mammolab`` stay as drawn in ``docs/architecture.md`` ("Layers").

The graph is built from the source with :mod:`ast`, so every import counts, module-level and
inside functions alike (an import moved into a function still makes the loop, it only hides it).
Four rules, each checked on the real tree and shown to fail on a small fake tree in ``tmp_path``:

(a) no import cycle between units (subpackages and top-level modules of ``mammolab``);
(b) no import cycle among the modules of one subpackage;
(c) no private name (``_x``) imported from another unit;
(d) imports only point down :data:`LAYERS` (or sideways, within one layer).

Imports by name at run time (the lazy exports of ``mammolab/__init__.py``, ``api.py`` and
``cli/_help.py``: ``"module:attr"`` strings) are not imports here: they point from the top of the
layers to the stages, which is the direction the layers allow anyway.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mammolab"

#: Units from the bottom up; a unit may import units of its own layer or below, never above.
#: ``mammolab`` is the package's ``__init__`` (``__version__``; its stage functions are lazy strings).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "mammolab", "_callable"),
    ("config", "io", "imagesize", "progress", "reporting", "figures"),
    ("data",),
    ("preprocess", "models"),
    ("recipe",),
    ("train",),
    ("infer",),
    ("evaluate", "explain"),
    ("tune",),
    ("app", "api"),
    ("cli",),
    ("__main__",),
)

#: Import cycles that exist today and are being removed; each entry is a set of units (rule a) or of
#: modules of one subpackage (rule b). A cycle inside an entry is tolerated; an entry that no longer
#: matches what is found fails too, so it is shrunk or deleted as soon as the code allows.
KNOWN_TANGLES: tuple[frozenset[str], ...] = ()

#: Private names imported from another unit today, as ``(module, name)``; same ratchet as above.
KNOWN_PRIVATE: frozenset[tuple[str, str]] = frozenset({
})


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``importer`` (a module) imports ``target`` (a module), maybe ``name`` from it."""

    importer: str
    target: str
    name: str | None
    path: Path
    line: int
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}{' (inside a function)' if self.in_function else ''}"


def _module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _existing(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module of the tree (``a.b.attr`` -> ``a.b``); None outside it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> list[Import]:
    """Every import of the package at ``root`` that lands in the package itself."""
    modules = _module_names(root)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        inside = _function_nodes(tree)
        for node in ast.walk(tree):
            found: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                found = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub, None) if sub in modules else (base, alias.name))
            for name, imported in found:
                target = _existing(name, modules)
                if target is not None and target != module:
                    edges.append(Import(module, target, imported, path, node.lineno, id(node) in inside))
    return edges


def unit_of(module: str) -> str:
    """The first-level unit: ``mammolab.data.organize`` -> ``data``; the package itself -> its name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(edges: Iterable[tuple[str, str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit_cycles(edges: Sequence[Import]) -> list[frozenset[str]]:
    """Rule (a): cycles between units."""
    return cycles((unit_of(e.importer), unit_of(e.target)) for e in edges
                  if unit_of(e.importer) != unit_of(e.target))


def package_cycles(edges: Sequence[Import]) -> list[frozenset[str]]:
    """Rule (b): cycles among the modules of one subpackage (its ``__init__`` included)."""
    def package(module: str) -> str | None:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else None

    found = []
    for pkg in sorted({p for e in edges if (p := package(e.importer)) is not None}):
        found += cycles((e.importer, e.target) for e in edges
                        if package(e.importer) == pkg and package(e.target) == pkg)
    return found


def private_imports(edges: Sequence[Import]) -> list[Import]:
    """Rule (c): ``from other_unit import _name`` (dunders such as ``__version__`` are public)."""
    return [e for e in edges if e.name and e.name.startswith("_") and not e.name.startswith("__")
            and unit_of(e.importer) != unit_of(e.target)]


def layer_violations(edges: Sequence[Import], layers: Sequence[Sequence[str]],
                     tangles: Sequence[frozenset[str]] = ()) -> list[str]:
    """Rule (d): imports that point up the layers, and units the layers do not place."""
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    problems = []
    for unit in sorted({unit_of(m) for e in edges for m in (e.importer, e.target)} - set(rank)):
        problems.append(f"unit {unit!r} is not in LAYERS: place it (tests/test_layers.py) and in the "
                        "docs/architecture.md diagram")
    for e in edges:
        a, b = unit_of(e.importer), unit_of(e.target)
        if a == b or a not in rank or b not in rank or any({a, b} <= t for t in tangles):
            continue
        if rank[b] > rank[a]:
            problems.append(f"{e.importer} imports {e.target} ({e.where}): {b} is above {a} in LAYERS")
    return problems


def tangle_problems(found: Sequence[frozenset[str]], known: Sequence[frozenset[str]]) -> list[str]:
    """New cycles (not inside a known tangle), and known tangles that are smaller or gone."""
    problems = [f"import cycle: {' <-> '.join(sorted(c))}" for c in found if not any(c <= k for k in known)]
    for k in known:
        now = frozenset().union(*(c for c in found if c <= k))
        if now != k:
            problems.append(f"KNOWN_TANGLES entry {sorted(k)} is now {sorted(now) or 'gone'}: "
                            + ("delete it" if not now else f"shrink it to {sorted(now)}"))
    return problems


def private_problems(found: Sequence[Import], known: frozenset[tuple[str, str]]) -> list[str]:
    """Private names crossing a unit border that are not known, and known ones no longer imported."""
    seen = {(e.target, str(e.name)) for e in found}
    problems = [f"{e.importer} imports the private {e.name} from {e.target} ({e.where}): make it public "
                "or move it" for e in found if (e.target, e.name) not in known]
    problems += [f"KNOWN_PRIVATE entry {k} is no longer imported: delete it" for k in sorted(known - seen)]
    return problems


# ------------------------------------------------------------------------------------------ the real tree

@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return import_graph(SRC)


def test_the_graph_sees_imports_inside_functions(graph: list[Import]) -> None:
    """Sanity of the reader on the real tree: a known lazy import and a known module-level one are there."""
    lazy = [e for e in graph if e.importer == "mammolab.cli.organize_cmds" and e.target == "mammolab.data.organize"]
    assert lazy and all(e.in_function for e in lazy)
    assert any(e.importer == "mammolab.data.cbis_import" and e.target == "mammolab.data.output"
               and not e.in_function for e in graph)


def test_no_cycle_between_units(graph: list[Import]) -> None:
    assert tangle_problems(unit_cycles(graph), [k for k in KNOWN_TANGLES if "." not in next(iter(k))]) == []


def test_no_cycle_inside_a_subpackage(graph: list[Import]) -> None:
    assert tangle_problems(package_cycles(graph), [k for k in KNOWN_TANGLES if "." in next(iter(k))]) == []


def test_no_private_name_crosses_a_unit_border(graph: list[Import]) -> None:
    assert private_problems(private_imports(graph), KNOWN_PRIVATE) == []


def test_imports_point_down_the_layers(graph: list[Import]) -> None:
    assert layer_violations(graph, LAYERS, KNOWN_TANGLES) == []


def test_every_unit_of_the_tree_is_placed() -> None:
    """A new subpackage or top-level module must be placed in LAYERS even before anything imports it."""
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.is_file() and p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    placed = {u for layer in LAYERS for u in layer}
    assert units - placed == set()


# ------------------------------------------------------------------------------------------ a fake tree

def _tree(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "fakelab"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


FAKE_LAYERS = (("low",), ("high",), ("top",))


@pytest.fixture
def clean_tree(tmp_path: Path) -> Path:
    return _tree(tmp_path, {
        "low/__init__.py": "from fakelab.low.base import thing\n",
        "low/base.py": "thing = 1\n",
        "low/util.py": "from .base import thing\n",
        "high/__init__.py": "",
        "high/run.py": "from fakelab.low import base\nfrom fakelab.low.util import thing\n",
        "top.py": "import fakelab.high.run\n\ndef main():\n    from fakelab.high import run\n",
    })


def test_a_clean_fake_tree_passes_every_rule(clean_tree: Path) -> None:
    edges = import_graph(clean_tree)
    assert {(e.importer, e.target) for e in edges} >= {
        ("fakelab.low", "fakelab.low.base"), ("fakelab.low.util", "fakelab.low.base"),
        ("fakelab.high.run", "fakelab.low.base"), ("fakelab.top", "fakelab.high.run")}
    assert unit_cycles(edges) == [] and package_cycles(edges) == []
    assert private_imports(edges) == [] and layer_violations(edges, FAKE_LAYERS) == []


def test_a_cycle_between_units_fails_even_when_hidden_in_a_function(clean_tree: Path) -> None:
    (clean_tree / "low" / "late.py").write_text("def f():\n    from fakelab.high.run import thing\n")
    edges = import_graph(clean_tree)
    assert unit_cycles(edges) == [frozenset({"low", "high"})]
    assert tangle_problems(unit_cycles(edges), []) == ["import cycle: high <-> low"]
    assert layer_violations(edges, FAKE_LAYERS) == [
        "fakelab.low.late imports fakelab.high.run (late.py:2 (inside a function)): high is above low in LAYERS"]
    # named as a known tangle it is tolerated; once it is gone the entry must go too
    assert tangle_problems(unit_cycles(edges), [frozenset({"low", "high"})]) == []
    assert tangle_problems([], [frozenset({"low", "high"})]) == [
        "KNOWN_TANGLES entry ['high', 'low'] is now gone: delete it"]


def test_a_cycle_inside_a_subpackage_fails(clean_tree: Path) -> None:
    (clean_tree / "low" / "base.py").write_text("from fakelab.low.util import other\nthing = 1\n")
    (clean_tree / "low" / "util.py").write_text("from . import base\nother = 2\n")
    cyc = package_cycles(import_graph(clean_tree))
    assert cyc == [frozenset({"fakelab.low.base", "fakelab.low.util"})]
    assert unit_cycles(import_graph(clean_tree)) == []
    # a registry importing its own plug-ins is such a cycle; a package __init__ importing them is not
    assert tangle_problems(cyc, [frozenset({"fakelab.low.base", "fakelab.low.util", "fakelab.low.x"})]) == [
        "KNOWN_TANGLES entry ['fakelab.low.base', 'fakelab.low.util', 'fakelab.low.x'] is now "
        "['fakelab.low.base', 'fakelab.low.util']: shrink it to ['fakelab.low.base', 'fakelab.low.util']"]


def test_a_private_name_from_another_unit_fails(clean_tree: Path) -> None:
    (clean_tree / "low" / "base.py").write_text("_secret = 1\n__version__ = '1'\n")
    (clean_tree / "low" / "util.py").write_text("from .base import _secret\n")  # same unit: fine
    (clean_tree / "high" / "run.py").write_text("from fakelab.low.base import __version__, _secret as s\n")
    found = private_imports(import_graph(clean_tree))
    assert [(e.importer, e.target, e.name) for e in found] == [("fakelab.high.run", "fakelab.low.base", "_secret")]
    assert private_problems(found, frozenset()) == [
        "fakelab.high.run imports the private _secret from fakelab.low.base (run.py:1): make it public or move it"]
    assert private_problems(found, frozenset({("fakelab.low.base", "_secret")})) == []
    assert private_problems([], frozenset({("fakelab.low.base", "_secret")})) == [
        "KNOWN_PRIVATE entry ('fakelab.low.base', '_secret') is no longer imported: delete it"]


def test_an_unplaced_unit_fails(clean_tree: Path) -> None:
    (clean_tree / "extra.py").write_text("from fakelab.low import base\n")
    assert layer_violations(import_graph(clean_tree), FAKE_LAYERS) == [
        "unit 'extra' is not in LAYERS: place it (tests/test_layers.py) and in the docs/architecture.md diagram"]
