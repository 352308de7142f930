"""The shape of the package, checked on its source: no import cycle (lazy imports inside
functions included), no module over 700 lines, imports that run one way (cli -> api -> domain
-> _native). A failure names the modules, so the fix is where the message points."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "bincache")
MAX_LINES = 700


def _modules() -> dict[str, tuple[str, bool]]:
    """name -> (path, is a package's __init__) of every module of bincache."""
    out = {}
    for dirpath, dirnames, files in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            is_pkg = name.endswith(".__init__")
            out[name[: -len(".__init__")] if is_pkg else name] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The bincache modules ``name`` imports anywhere in its source (functions included).
    ``from pkg import sub`` counts as an import of the submodule when ``pkg/sub.py`` exists."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.append(sub if sub in MODULES else source)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        # A name that is no module here is another project's, or a compiled extension
        # (``_native._lib``): no edge.
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle():
    # The checker itself: a lazy import back up is a cycle like any other.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (every import counted, lazy ones too): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_over_700_lines():
    long = {}
    for name, (path, _) in MODULES.items():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[name] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold): {long}"


def _importers(target: str) -> set[str]:
    return {m for m, deps in GRAPH.items()
            if any(d == target or d.startswith(target + ".") for d in deps)}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_nothing_below_the_cli_imports_it():
    # __main__ is the `python -m bincache` entry point: it only calls the CLI.
    upward = {m for m in _importers("bincache.cli")
              if not _inside(m, "bincache.cli") and m != "bincache.__main__"}
    assert not upward, f"modules below the CLI that import bincache.cli: {sorted(upward)}"


def test_only_the_cli_imports_the_api():
    upward = {m for m in _importers("bincache.api")
              if not _inside(m, "bincache.cli") and m not in ("bincache", "bincache.__main__")}
    assert not upward, ("bincache.api is the public surface, imported by the CLI and by users "
                        f"only; these import it: {sorted(upward)}")


# The bottom of the stack: what _native may import of bincache.
BELOW_NATIVE = {"bincache.errors", "bincache.limits"}


def test_native_imports_nothing_above_it():
    above = {f"{m} -> {d}" for m in GRAPH if _inside(m, "bincache._native")
             for d in GRAPH[m] if not _inside(d, "bincache._native") and d not in BELOW_NATIVE}
    assert not above, f"the native core imports modules above it: {sorted(above)}"


def test_the_graph_holds_real_edges():
    # Guards the checker: if it stopped seeing imports, every rule above would pass vacuously.
    # api imports the install stage inside a function: lazy imports are edges too.
    assert "bincache.install.stage" in GRAPH["bincache.api"]
    assert "bincache.install.plan" in GRAPH["bincache.install.stage"]
    assert any(_inside(m, "bincache.cli") for m in _importers("bincache.api"))


def _probe(node: ast.AST) -> str | None:
    """``hasattr(cache, ...)`` / ``getattr(x.cache, ...)`` / on a backend or a mirror ref
    (MirrorRef declares every setting): the name probed."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr") and node.args):
        return None
    target = node.args[0]
    name = target.id if isinstance(target, ast.Name) else (
        target.attr if isinstance(target, ast.Attribute) else None)
    if name is not None and name.lstrip("_") in ("cache", "backend", "ref"):
        return f"{node.func.id}({ast.unparse(target)}, ...)"
    return None


def test_caches_are_used_through_the_protocol_not_probed():
    # mirror/base.py declares what every cache and backend has (docs/internals.md, "Mirrors").
    found = []
    for name, (path, _) in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found += [f"{name}:{n.lineno}: {p}" for n in ast.walk(tree) if (p := _probe(n))]
    assert not found, "caches probed instead of declared: " + "; ".join(found)


def test_the_probe_finder_finds_probes():
    calls = [ast.parse(src).body[0].value for src in (
        "hasattr(cache, 'update_index')", "getattr(plan.cache, 'url', None)",
        "getattr(self._backend, 'root', None)", "getattr(ref, 'signed', None)",
        "getattr(options, 'jobs', 1)")]
    assert [_probe(c) is not None for c in calls] == [True, True, True, True, False]
