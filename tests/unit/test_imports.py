"""gsm's modules import no cycle, respect the package layering, and import no private name of another module.

Every .py under gsm/ is parsed (ast, gsm is not imported); every `import gsm.x` / `from gsm.x import y`
anywhere in a file, top level or inside a function or an `if TYPE_CHECKING:` block, is an edge. A deferred
import only moves a cycle from import time to call time, so it counts: the layout by concern is meant to
be a DAG (docs/architecture.md).

Edges, from module m:
* `import gsm.a.b` and `from gsm.a.b import f` → gsm.a.b; `from gsm.a import b` → gsm.a.b when that is a
  module, else gsm.a; relative imports are resolved against m's package;
* a name a package re-exports lazily (`lazy_exports` in its __init__, PEP 562) → the module that defines it
  (`from gsm.samplers import Langevin` imports gsm.samplers.langevin, on first use);
* importing gsm.a.b runs gsm/a/__init__.py first: an edge to every parent package as well, except the root
  `gsm`, which every module imports implicitly; test_root_package_imports_only_lazy checks that
  gsm/__init__.py (and what it imports) pulls in no other gsm module, so no cycle can pass through it.

The layering (docs/architecture.md, "Layering") also counts a package's lazy re-exports as its own edges
(gsm/a/__init__.py re-exporting gsm.b.f depends on gsm.b, though it imports it only on first use).
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


def executed_on_import(tree: ast.AST):
    """The nodes of a module that run when it is imported: all but the bodies of functions."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += reversed(list(ast.iter_child_nodes(node)))


def imports_of(source: str, module: str, *, is_package: bool, modules, lazy=None, root: str = "gsm",
               top_level_only: bool = False) -> list[tuple[str, int]]:
    """[(imported module, line)] for the gsm modules `source` (the text of `module`) imports, anywhere in it
    (or only in its top-level statements), parent packages included (the root package excluded).

    modules: the known module names; lazy: {package: {name: module}} (lazy re-exports)."""
    lazy = lazy or {}
    tree = ast.parse(source)
    nodes = executed_on_import(tree) if top_level_only else ast.walk(tree)
    package = module if is_package else module.rpartition(".")[0]

    def targets(name: str) -> list[str]:
        """The modules that importing `name` runs: itself and its parents."""
        found = []
        while name and name not in modules:        # `import gsm.a.b.f`-like names: the longest module prefix
            name = name.rpartition(".")[0]
        while name and name != root:
            found.append(name)
            name = name.rpartition(".")[0]
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
                if sub in modules:
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
    graph = {}
    for m, path in files.items():
        where = path.relative_to(package_dir.parent).as_posix()
        graph[m] = {}
        for target, line in imports_of(sources[m], m, is_package=path.name == "__init__.py", modules=files,
                                       lazy=lazy, root=package_dir.name):
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
    for name in ("gsm", "gsm._lazy", "gsm.bench", "gsm.samplers", "gsm.samplers.vp", "gsm.pipeline.run",
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


def test_root_package_imports_only_lazy():
    """The exemption of the root package `gsm` from the graph is safe: gsm/__init__.py imports no gsm
    module but gsm._lazy at top level, and gsm._lazy imports no gsm module at all."""
    files = module_files()
    top = {t for t, _ in imports_of(files["gsm"].read_text(), "gsm", is_package=True, modules=files,
                                    top_level_only=True)}
    assert top == {"gsm._lazy"}, f"gsm/__init__.py imports {sorted(top)} at top level"
    tree = ast.parse(files["gsm"].read_text())
    other = [ast.unparse(n) for n in executed_on_import(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             and not (isinstance(n, ast.ImportFrom) and n.module in ("gsm._lazy", "__future__"))]
    assert not other, f"gsm/__init__.py imports more than gsm._lazy: {other}"
    assert not imports_of(files["gsm._lazy"].read_text(), "gsm._lazy", is_package=False, modules=files)


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


# ------------------------------------------------------------------------------------------- layering

# The package layering, lowest first (docs/architecture.md, "Layering"). A module may import from its own
# package, from another package of its own layer (only the utilities share one), or from a lower layer.
LAYERS = (
    ("gsm.checks", "gsm.io", "gsm._lazy", "gsm.conf", "gsm.algebra", "gsm.figures"),   # utilities (gsm.conf: YAML)
    ("gsm.data",),
    ("gsm.scores",),
    ("gsm.training",),        # the objectives own their score-error statistics, which theory composes
    ("gsm.theory",),
    ("gsm.samplers",),        # a sampler is its step map; its law and prediction come from theory
    ("gsm.pipeline",),
    ("gsm.cli",),
    ("gsm", "gsm.__main__", "gsm.bench"),                    # the top: the package and its entry points
)

# Edges that break the layering today, in packages being rewritten by others (issue 21: theory/ stops
# importing samplers/; samplers.vp's figure moves out). Delete an entry when its edge is gone:
# test_known_violations_are_current fails on an entry that no longer occurs.
KNOWN_VIOLATIONS: set = set()


def layer_of(module: str) -> int:
    """The index in LAYERS of the package that holds `module` (the longest matching prefix)."""
    best, rank = -1, None
    for i, packages in enumerate(LAYERS):
        for p in packages:
            inside = module == p or (p != "gsm" and module.startswith(p + "."))
            if inside and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it to the table (and docs/architecture.md)")
    return rank


def lazy_edges(package_dir: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """{package: {module: ["gsm/a/__init__.py:line"]}}: the modules each package's lazy_exports names."""
    out = {}
    for m, path in module_files(package_dir).items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", getattr(n.func, "attr", None)) == "lazy_exports"]
        for call in calls:
            for module in set(lazy_exports_of(ast.Module(body=[ast.Expr(call)], type_ignores=[])).values()):
                if module != m:
                    where = f"{path.relative_to(package_dir.parent).as_posix()}:{call.lineno}"
                    out.setdefault(m, {}).setdefault(module, []).append(where)
    return out


def layering_violations(graph, lazy=None) -> dict[tuple[str, str], list[str]]:
    """{(module, imported module): ["file:line", ...]} for every edge to a higher layer. An edge to a parent
    package that only comes with edges to its modules (from the same lines) is not listed twice."""
    out = {}
    for m in sorted(set(graph) | set(lazy or {})):
        targets = {t: list(w) for t, w in graph.get(m, {}).items()}
        for t, w in (lazy or {}).get(m, {}).items():
            targets.setdefault(t, []).extend(w)
        for t, where in sorted(targets.items()):
            below = {w for u in targets if u.startswith(t + ".") for w in targets[u]}
            implied = bool(below) and set(where) <= below
            if layer_of(t) > layer_of(m) and not implied:
                out[m, t] = where
    return out


def describe_edges(title: str, edges: dict) -> str:
    return "\n".join([title] + [f"  {a} → {b}: {', '.join(w)}" for (a, b), w in sorted(edges.items())])


def test_every_module_has_a_layer():
    for m in module_files():
        layer_of(m)


def test_packages_respect_the_layering():
    """No module imports from a higher layer (LAYERS), apart from the edges listed in KNOWN_VIOLATIONS."""
    found = layering_violations(import_graph(), lazy_edges())
    print(describe_edges(f"{len(found)} edge(s) to a higher layer (KNOWN_VIOLATIONS: {len(KNOWN_VIOLATIONS)}):",
                         found))
    new = {e: w for e, w in found.items() if e not in KNOWN_VIOLATIONS}
    assert not new, describe_edges(f"{len(new)} import(s) break the layering "
                                   f"({' < '.join('|'.join(p) for p in LAYERS)}):", new)


def test_known_violations_are_current():
    """Every KNOWN_VIOLATIONS entry still occurs: one that was fixed is deleted from the list."""
    found = layering_violations(import_graph(), lazy_edges())
    stale = KNOWN_VIOLATIONS - set(found)
    assert not stale, f"fixed, delete from KNOWN_VIOLATIONS: {sorted(stale)}"


def test_layering_check_finds_violations():
    """The check is not vacuous: an upward edge, one through a lazy re-export and one inside a function are
    found; downward and same-package edges are not; a parent-package edge is not listed twice."""
    modules = {"gsm", "gsm.data", "gsm.data.gaussian", "gsm.theory", "gsm.theory.vp", "gsm.samplers",
               "gsm.samplers.vp", "gsm.pipeline", "gsm.io"}
    src = ("from gsm.samplers.vp import VP\n"
           "from gsm.data.gaussian import make_gaussian\n"
           "from gsm.io import write_json_atomic\n"
           "def f():\n"
           "    import gsm.pipeline\n")
    edges = imports_of(src, "gsm.theory.vp", is_package=False, modules=modules)
    graph = {"gsm.theory.vp": {}}
    for t, line in edges:
        graph["gsm.theory.vp"].setdefault(t, []).append(f"gsm/theory/vp.py:{line}")
    found = layering_violations(graph, {"gsm.data": {"gsm.theory.vp": ["gsm/data/__init__.py:3"]}})
    assert found == {("gsm.theory.vp", "gsm.samplers.vp"): ["gsm/theory/vp.py:1"],
                     ("gsm.theory.vp", "gsm.pipeline"): ["gsm/theory/vp.py:5"],
                     ("gsm.data", "gsm.theory.vp"): ["gsm/data/__init__.py:3"]}
    text = describe_edges("x", found)
    assert "gsm.theory.vp → gsm.samplers.vp: gsm/theory/vp.py:1" in text
    assert layer_of("gsm.cli.report") > layer_of("gsm.pipeline.run") > layer_of("gsm.samplers.vp") > \
        layer_of("gsm.theory.bures") > layer_of("gsm.training.dsm") > layer_of("gsm.scores.linear") > \
        layer_of("gsm.data.gaussian") > layer_of("gsm.checks") == layer_of("gsm.figures")
    assert layer_of("gsm.bench") == layer_of("gsm") > layer_of("gsm.cli")


# -------------------------------------------------------------------------------------- private names

# Private names imported across modules today, in packages being rewritten by others (issue 21).
# {(file, the private name as imported)}; delete an entry when it is gone (test_known_private_imports_are_current).
KNOWN_PRIVATE_IMPORTS: set = set()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, module: str, *, is_package: bool = False, root: str = "gsm") -> list[tuple[str, int]]:
    """[(dotted private name, line)] that `source` (the text of `module`; a test file: any name outside gsm)
    takes from another module: `from gsm.x import _y`, `import gsm.x._y`, `from gsm.x._y import z`,
    `gsm.x._y` and `m._y` for a module `m` bound by an import. A private module `gsm.a._m` is private to its
    package gsm.a: modules inside gsm.a may import it (every gsm module imports `gsm._lazy`)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]

    def crossing(dotted: str) -> bool:
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if is_private(part):
                owner = ".".join(parts[:i])               # the module or package the name is private to
                return not (module == owner or module.startswith(owner + "."))
        return False

    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    bound[alias.asname or root] = alias.name if alias.asname else root
                    if crossing(alias.name):
                        found.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            if base == root or base.startswith(root + "."):
                for alias in node.names:
                    dotted = f"{base}.{alias.name}"
                    bound[alias.asname or alias.name] = dotted
                    if crossing(dotted):
                        found.append((dotted, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                dotted = ".".join([bound[base.id]] + chain[::-1])
                if crossing(dotted):
                    found.append((dotted, node.lineno))
    return found


def private_imports() -> dict[tuple[str, str], list[int]]:
    """{(file, private name): [lines]} over gsm/ and tests/."""
    out = {}
    for m, path in module_files().items():
        for name, line in private_uses(path.read_text(), m, is_package=path.name == "__init__.py"):
            out.setdefault((path.relative_to(ROOT).as_posix(), name), []).append(line)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for name, line in private_uses(path.read_text(), "tests." + path.stem):
            out.setdefault((path.relative_to(ROOT).as_posix(), name), []).append(line)
    return out


def describe_private(title: str, found: dict) -> str:
    return "\n".join([title] + [f"  {f}:{','.join(map(str, lines))} {name}" for (f, name), lines in sorted(found.items())])


def test_no_private_name_crosses_a_module():
    found = private_imports()
    print(describe_private(f"{len(found)} private name(s) taken from another module "
                           f"(KNOWN_PRIVATE_IMPORTS: {len(KNOWN_PRIVATE_IMPORTS)}):", found))
    new = {k: v for k, v in found.items() if k not in KNOWN_PRIVATE_IMPORTS}
    assert not new, describe_private(f"{len(new)} private name(s) imported from another module "
                                     "(make them public, or keep them in their module):", new)


def test_known_private_imports_are_current():
    stale = KNOWN_PRIVATE_IMPORTS - set(private_imports())
    assert not stale, f"fixed, delete from KNOWN_PRIVATE_IMPORTS: {sorted(stale)}"


def test_private_name_check_finds_them():
    src = ("from gsm.samplers.vp_schemes import _check, exact_scores\n"
           "import gsm.pipeline._hidden\n"
           "from gsm._lazy import lazy_exports\n"
           "from . import _sibling\n"
           "import gsm.theory.vp as vp\n"
           "def f():\n"
           "    return vp._series(gsm.io._tmp, __name__)\n")
    found = private_uses(src, "gsm.theory.x")
    assert sorted(found) == [("gsm.io._tmp", 7), ("gsm.pipeline._hidden", 2), ("gsm.samplers.vp_schemes._check", 1),
                             ("gsm.theory.vp._series", 7)]
    # a private module (or name) of a package is for that package's modules (gsm._lazy, and `_sibling` of
    # gsm.theory above); a test file may import none
    assert private_uses("from gsm.theory._kernels import k\n", "gsm.theory.vp") == []
    assert private_uses("from gsm.theory._kernels import k\n", "gsm.samplers.vp") == [("gsm.theory._kernels.k", 1)]
    assert private_uses("from gsm.training.dsm import _EpochStream\n", "tests.test_x") == \
        [("gsm.training.dsm._EpochStream", 1)]
