"""netslim's modules import each other in one direction: no cycles, not even through an import inside a function.

Every module under ``src/netslim`` is parsed with ``ast``, and every ``import`` / ``from ... import`` in it counts
wherever it stands: at the top, inside a function (the usual way to dodge a cycle at import time, which leaves the
cycle in the design), under ``try`` or ``if TYPE_CHECKING:``. Type-only imports never run, but a module that needs
a type from a module built on top of it still reaches back; there are none, and this test keeps it so.

What one statement imports, as Python runs it:

- ``import netslim.a.b`` / ``from netslim.a.b import name`` (or the relative ``from .a.b import name``) imports the
  module ``netslim.a.b``; ``from netslim.a import b`` where ``b`` is a submodule imports ``netslim.a.b``, and where
  ``b`` is a name defined in ``netslim/a/__init__.py`` it imports the package ``netslim.a``.
- Importing a module also runs its parent packages' ``__init__``, except the packages the importer itself lives in:
  those are already being imported before the importer runs. So ``netslim.surgery`` importing
  ``netslim.models.sources`` also imports ``netslim.models``, while ``from . import distributed`` in
  ``netslim.train`` imports ``netslim.distributed`` alone, not ``netslim``.

Hence a package ``__init__`` re-exporting its submodules is no cycle by itself; it becomes one when a submodule
takes a name from its own package's ``__init__`` (``from . import helper`` where ``helper`` is defined there, or
``from netslim import plan_pruning``): the registry or the helper sits on the wrong floor, above the code that needs
it. Imports by computed strings (``importlib.import_module(source)``) load user or third-party code, not netslim's,
and are not followed.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import netslim

PACKAGE_DIR = Path(netslim.__file__).parent


def module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, for its ``__init__.py``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` -> ``a.b.c``, ``a.b``, ``a``."""
    return [name.rsplit(".", i)[0] for i in range(name.count(".") + 1)]


def _with_parents(target: str, importer: str, modules: dict[str, Path]) -> list[str]:
    """``target`` and the packages above it that importing it runs (not those the importer lives in)."""
    running = set(_prefixes(importer))  # the importer's packages: already being imported
    return [name for name in _prefixes(target) if name in modules and (name == target or name not in running)]


def imports_of(name: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """The package modules ``name`` imports, each with the line of the statement that imports it."""
    path = modules[name]
    package_of_file = name if _is_package(path) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of_file.rsplit(".", node.level - 1)[0] if node.level > 1 else package_of_file
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:  # `import netslim.a.b` of a name, not a module
                target = target.rpartition(".")[0]
            if target in modules:
                found += [(module, node.lineno) for module in _with_parents(target, name, modules)]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """importer -> {imported module: line of the first statement importing it}; self-imports left out."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name in modules:
        for target, line in imports_of(name, modules):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each module that is on one, without repeats (a cycle is listed once)."""
    found, seen = [], set()
    for start in sorted(graph):
        came_from = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in graph[node]:  # back to the start: a shortest cycle through it
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                cycle = path[::-1]
                key = frozenset(zip(cycle, cycle[1:] + cycle[:1], strict=True))
                if key not in seen:
                    seen.add(key)
                    found.append([*cycle, start])
                break
            for neighbour in sorted(graph[node]):
                if neighbour not in came_from:
                    came_from[neighbour] = node
                    queue.append(neighbour)
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """``a -> b (netslim/a.py:12)`` for each step of the cycle, one per line."""
    top = modules[cycle[0].split(".")[0]].parent.parent
    return "\n  ".join(f"{a} -> {b} ({modules[a].relative_to(top)}:{graph[a][b]})"
                        for a, b in zip(cycle, cycle[1:], strict=False))


def test_netslim_has_no_import_cycle():
    modules = module_names(PACKAGE_DIR, "netslim")
    graph = import_graph(modules)
    assert "netslim.deployment" in graph["netslim.timing"]  # imported inside timing's functions only: they are read
    found = cycles(graph)
    assert not found, "import cycles in netslim (module -> module it imports (file:line)):\n" + "\n".join(
        f"- {describe(cycle, graph, modules)}" for cycle in found)


def _write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_names(root / "pkg", "pkg")


def test_an_import_inside_a_function_closes_a_cycle(tmp_path):
    modules = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from .high import g\n    return g\n",
        "high.py": "from .low import f\n",
    })
    assert cycles(import_graph(modules)) == [["pkg.high", "pkg.low", "pkg.high"]]


def test_re_exports_are_no_cycle_but_a_name_taken_from_the_package_is(tmp_path):
    files = {
        "__init__.py": "from . import sub\nfrom .sub import thing\nfrom .inner.deep import other\n",
        "sub.py": "from . import sibling\nfrom .inner import deep\n",
        "sibling.py": "",
        "inner/__init__.py": "from .deep import other\n",
        "inner/deep.py": "from .. import sibling\nother = 1\n",
    }
    graph = import_graph(_write_package(tmp_path, files))
    assert cycles(graph) == []
    assert graph["pkg.sub"] == {"pkg.sibling": 1, "pkg.inner.deep": 2, "pkg.inner": 2}
    files["inner/deep.py"] = "from .. import helper\nother = 1\n"
    files["__init__.py"] += "helper = 2\n"
    assert ["pkg", "pkg.inner.deep", "pkg"] in cycles(import_graph(_write_package(tmp_path, files)))


def test_type_checking_imports_count(tmp_path):
    modules = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.high\n",
        "high.py": "import pkg.low as low\n",
    })
    assert cycles(import_graph(modules)) == [["pkg.high", "pkg.low", "pkg.high"]]


# The package is flat on purpose (docs/contributing.md, "Layout"): its floors, in the order of the method, are
# this list, and a module may import only from its own floor or those below. A module belongs to the floor of
# the longest name listed that is it or a package above it (``data`` holds ``data.mnist``); a new module must be
# given its floor here, and the map in docs/contributing.md follows this list.
FLOORS = [
    ("ground", ["layers", "limits", "errors", "runfolder", "distributed", "metrics", "stats", "architecture",
                "testing"]),
    ("models, data and files", ["models", "data", "foreign", "checkpoint", "integrations"]),
    ("sparse training (Eq. 1)", ["sparsity_target", "sparsity", "steps", "recalibration", "runstate", "train"]),
    ("channel analysis", ["shape_only", "channel_ops", "channel_graph", "compaction", "width_probe", "graph"]),
    ("plan and surgery", ["plan", "surgery"]),
    ("deployment and timing", ["export", "deployment", "timing", "latency_cache", "layer_law"]),
    ("budgets (FLOPs, parameters, latency)", ["budget", "latency", "pruning"]),
    ("workflows", ["pipeline", "training_run", "prune_checkpoint", "export_checkpoint", "model_info", "report",
                   "integrations.lightning", "integrations.ultralytics", "cli", ""]),
]


def floor_of(module: str) -> int | None:
    """The index in FLOORS of ``module`` (``netslim.x.y``), or None where no listed name covers it."""
    name = module.removeprefix("netslim").removeprefix(".")
    covering = [(len(listed), i) for i, (_, names) in enumerate(FLOORS) for listed in names
                if name == listed or listed and name.startswith(listed + ".")]
    return max(covering)[1] if covering else None


def test_every_module_imports_only_from_its_floor_or_below():
    modules = module_names(PACKAGE_DIR, "netslim")
    unplaced = sorted(m for m in modules if floor_of(m) is None)
    assert not unplaced, f"give these modules their floor in FLOORS (tests/test_imports.py): {unplaced}"
    upward = [f"{a} ({FLOORS[floor_of(a)][0]}) imports {b} ({FLOORS[floor_of(b)][0]}) at "
              f"{modules[a].relative_to(PACKAGE_DIR.parent)}:{line}"
              for a, targets in import_graph(modules).items() for b, line in targets.items()
              if floor_of(b) > floor_of(a)]
    assert not upward, "imports reaching a higher floor:\n" + "\n".join(upward)


def test_floors_are_read_by_the_longest_name():
    assert FLOORS[floor_of("netslim.integrations")][0] == "models, data and files"
    assert FLOORS[floor_of("netslim.integrations.ultralytics")][0] == "workflows"
    assert FLOORS[floor_of("netslim.data.mnist")][0] == "models, data and files"
    assert FLOORS[floor_of("netslim")][0] == "workflows"
    assert floor_of("netslim.somewhere_new") is None
