"""gsm's modules import no cycle.

Every .py under gsm/ is parsed (ast, gsm is not imported); every `import gsm.x` / `from gsm.x import y`
anywhere in a file, top level or inside a function or an `if TYPE_CHECKING:` block, is an edge. A deferred
import only moves a cycle from import time to call time, so it counts: the layout by concern is meant to
be a DAG (docs/architecture.md).

Edges, from module m:
* `import gsm.a.b` and `from gsm.a.b import f` → gsm.a.b; `from gsm.a import b` → gsm.a.b when that is a
  module, else gsm.a; relative imports are resolved against m's package;
* a name a package re-exports lazily (`lazy_exports` in its __init__, PEP 562) → the module that defines it
  (`from gsm.samplers import Langevin` imports gsm.samplers.langevin, on first use);
* an old module name of gsm._compat (`gsm.experiment`, ...) → the modules that now hold its contents;
* importing gsm.a.b runs gsm/a/__init__.py first: an edge to every parent package as well, except the root
  `gsm`, which every module imports implicitly; test_root_package_imports_only_compat_and_lazy checks
  that gsm/__init__.py (and what it imports) pulls in no other gsm module, so no cycle can pass through it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gsm"


def module_files(package_dir: Path = PACKAGE) -> dict[str, Path]:
    """{module name: path} for every .py under package_dir (gsm/a/__init__.py is the package gsm.a)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def lazy_exports_of(tree: ast.AST) -> dict[str, str]:
    """{name: defining module} from a `lazy_exports(__name__, {module: (names, ...)})` call in the tree."""
    out = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "lazy_exports"
                and len(node.args) > 1 and isinstance(node.args[1], ast.Dict)):
            for module, names in ast.literal_eval(node.args[1]).items():
                out.update({name: module for name in names})
    return out


def moved_modules(path: Path = PACKAGE / "_compat.py") -> dict[str, tuple[str, ...]]:
    """gsm._compat.MOVED (old module name → the modules holding its contents), read without importing gsm."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MOVED" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def executed_on_import(tree: ast.AST):
    """The nodes of a module that run when it is imported: all but the bodies of functions."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += reversed(list(ast.iter_child_nodes(node)))


def imports_of(source: str, module: str, *, is_package: bool, modules, lazy=None, moved=None, root: str = "gsm",
               top_level_only: bool = False) -> list[tuple[str, int]]:
    """[(imported module, line)] for the gsm modules `source` (the text of `module`) imports, anywhere in it
    (or only in its top-level statements), parent packages included (the root package excluded).

    modules: the known module names; lazy: {package: {name: module}} (lazy re-exports); moved: old names."""
    lazy, moved = lazy or {}, moved or {}
    tree = ast.parse(source)
    nodes = executed_on_import(tree) if top_level_only else ast.walk(tree)
    package = module if is_package else module.rpartition(".")[0]

    def targets(name: str) -> list[str]:
        """The modules that importing `name` runs: itself (or what an old name moved to) and its parents."""
        found = []
        for new in moved.get(name, (name,)):
            while new and new not in modules:      # `import gsm.a.b.f`-like names: the longest module prefix
                new = new.rpartition(".")[0]
            while new and new != root:
                found.append(new)
                new = new.rpartition(".")[0]
        return found

    edges = []
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    edges += [(t, node.lineno) for t in targets(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == root or base.startswith(root + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules or sub in moved:
                    name = sub
                else:
                    name = lazy.get(base, {}).get(alias.name, base)
                edges += [(t, node.lineno) for t in targets(name)]
    return [(t, line) for t, line in edges if t != module]


def import_graph(package_dir: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: ["gsm/x.py:line", ...]}} for every module of the package."""
    files = module_files(package_dir)
    sources = {m: p.read_text() for m, p in files.items()}
    lazy = {m: lazy_exports_of(ast.parse(s)) for m, s in sources.items() if files[m].name == "__init__.py"}
    moved = moved_modules(package_dir / "_compat.py")
    graph = {}
    for m, path in files.items():
        where = path.relative_to(package_dir.parent).as_posix()
        graph[m] = {}
        for target, line in imports_of(sources[m], m, is_package=path.name == "__init__.py", modules=files,
                                       lazy=lazy, moved=moved, root=package_dir.name):
            graph[m].setdefault(target, [])
            if f"{where}:{line}" not in graph[m][target]:
                graph[m][target].append(f"{where}:{line}")
    return graph


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components of {node: iterable of successors} with more than one node
    or a self-loop (those are exactly the nodes on a cycle)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):       # recursive: module graphs are shallow
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def find_cycles(graph) -> list[list[str]]:
    """Cycles [a, b, ..., a] covering every edge that lies on a cycle: for each such edge u → v, the
    shortest path back from v to u; rotations of the same cycle are listed once."""
    cycles, seen = [], set()
    for comp in strongly_connected(graph):
        members = set(comp)
        for u in comp:
            for v in sorted(w for w in graph.get(u, ()) if w in members):
                prev, frontier = {v: None}, [v]        # BFS v → u inside the component
                while frontier and u not in prev:
                    nxt = []
                    for x in frontier:
                        for y in sorted(graph.get(x, ())):
                            if y in members and y not in prev:
                                prev[y] = x
                                nxt.append(y)
                    frontier = nxt
                path, x = [], u
                while x is not None:
                    path.append(x)
                    x = prev[x]
                cycle = [u] + path[::-1]          # u → v → ... → u
                ring = cycle[:-1]
                k = ring.index(min(ring))
                key = tuple(ring[k:] + ring[:k])
                if key not in seen:
                    seen.add(key)
                    cycles.append(list(key) + [key[0]])
    return sorted(cycles, key=lambda c: (len(c), c))


def describe(cycles, graph) -> str:
    lines = [f"{len(cycles)} import cycle(s) in gsm (imports inside functions count: they only defer the cycle):"]
    for cycle in cycles:
        lines.append("  " + " → ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"      {a} → {b}: {', '.join(graph[a][b])}")
    return "\n".join(lines)


def test_modules_are_found():
    files = module_files()
    for name in ("gsm", "gsm._compat", "gsm._lazy", "gsm.samplers", "gsm.samplers.vp", "gsm.pipeline.run",
                 "gsm.cli.report"):
        assert name in files, name
    graph = import_graph()
    assert set(graph) == set(files)
    assert sum(len(v) for v in graph.values()) > len(files), "suspiciously few imports found"
    importers = [m for m, targets in graph.items() if "gsm.data.gaussian" in targets and m != "gsm.data"]
    assert importers, "no module imports gsm.data.gaussian: the parser misses imports"
    for package, path in files.items():      # every lazy re-export names a module that exists
        if path.name == "__init__.py":
            missing = set(lazy_exports_of(ast.parse(path.read_text())).values()) - set(files)
            assert not missing, f"{path.relative_to(ROOT)}: lazy_exports names no such module {sorted(missing)}"


def test_root_package_imports_only_compat_and_lazy():
    """The exemption of the root package `gsm` from the graph is safe: gsm/__init__.py imports no gsm
    module but gsm._compat and gsm._lazy at top level, and these import no gsm module at all."""
    files = module_files()
    moved = moved_modules()
    top = {t for t, _ in imports_of(files["gsm"].read_text(), "gsm", is_package=True, modules=files, moved=moved,
                                    top_level_only=True)}
    assert top == {"gsm._compat", "gsm._lazy"}, f"gsm/__init__.py imports {sorted(top)} at top level"
    tree = ast.parse(files["gsm"].read_text())
    other = [ast.unparse(n) for n in executed_on_import(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             and not (isinstance(n, ast.ImportFrom) and n.module in ("gsm", "gsm._compat", "gsm._lazy", "__future__"))]
    assert not other, f"gsm/__init__.py imports more than gsm._compat and gsm._lazy: {other}"
    for name in ("gsm._compat", "gsm._lazy"):
        assert not imports_of(files[name].read_text(), name, is_package=False, modules=files), name


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, describe(cycles, graph)


def test_cycle_finder_finds_cycles():
    """The finder is not vacuous: synthetic graphs with cycles are caught, an acyclic one passes, and an
    import inside a function (or a relative one, or a lazy re-export) is an edge."""
    graph = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:2"]}, "c": {"a": ["c.py:3"], "d": ["c.py:4"]},
             "d": {}, "e": {"a": ["e.py:1"]}, "f": {"f": ["f.py:9"]}}
    cycles = find_cycles(graph)
    assert cycles == [["f", "f"], ["a", "b", "c", "a"]]
    text = describe(cycles, graph)
    assert "a → b → c → a" in text and "c → a: c.py:3" in text and "f → f: f.py:9" in text
    assert find_cycles({"a": {"b": []}, "b": {"c": []}, "c": {}, "d": {"a": []}}) == []
    # two cycles sharing a node are both listed
    assert find_cycles({"r": {"t": [], "v": []}, "t": {"r": []}, "v": {"r": [], "m": []}, "m": {"v": []}}) == \
        [["m", "v", "m"], ["r", "t", "r"], ["r", "v", "r"]]

    modules = {"gsm", "gsm.pkg", "gsm.pkg.a", "gsm.pkg.b", "gsm.pkg.c", "gsm.other"}
    a = ("import os\n"
         "from typing import TYPE_CHECKING\n"
         "def f():\n"
         "    from gsm.pkg.b import thing\n"
         "    return thing\n"
         "if TYPE_CHECKING:\n"
         "    import gsm.other\n"
         "from . import c\n"
         "from gsm.pkg import Lazy\n")
    edges = imports_of(a, "gsm.pkg.a", is_package=False, modules=modules, lazy={"gsm.pkg": {"Lazy": "gsm.pkg.c"}})
    assert ("gsm.pkg.b", 4) in edges and ("gsm.pkg", 4) in edges
    assert ("gsm.other", 7) in edges and ("gsm.pkg.c", 8) in edges and ("gsm.pkg.c", 9) in edges
    assert all(t != "gsm" for t, _ in edges), "the root package is exempt"
    assert imports_of(a, "gsm.pkg.a", is_package=False, modules=modules, top_level_only=True) == \
        [("gsm.other", 7), ("gsm.pkg.c", 8), ("gsm.pkg", 8), ("gsm.pkg", 9)]
    b = "from .a import f\n"
    graph = {"gsm.pkg.a": {t: [f"a.py:{n}"] for t, n in edges},
             "gsm.pkg.b": {t: [f"b.py:{n}"] for t, n in imports_of(b, "gsm.pkg.b", is_package=False, modules=modules)}}
    assert ["gsm.pkg.a", "gsm.pkg.b", "gsm.pkg.a"] in find_cycles(graph)
    assert "gsm.pkg.a → gsm.pkg.b: a.py:4" in describe(find_cycles(graph), graph)
