"""The shape of the package, read from the source: no import cycle between hubedit's packages (lazy imports
inside functions included), nothing imports the ``hubedit`` facade back, and the ground floor imports
nothing above it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hubedit"
# the ground floor: data, MLPs, metrics; each may import only the units listed for it
GROUND_FLOOR = {
    "hubedit.errors": set(),
    "hubedit.version": set(),
    "hubedit.mlp": {"hubedit.errors"},
    "hubedit.tasks": {"hubedit.errors"},
    "hubedit.metrics": set(),
}
FACADES = {"hubedit", "hubedit.__main__"}  # the package's own entry points import everything, nothing imports them


def _module_name(path: Path) -> tuple[str, str]:
    """``(module, package)`` of a source file: the package is what relative imports resolve against."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    name = ".".join(parts)
    return name, name.rsplit(".", 1)[0]


def _exists(module: str) -> bool:
    base = ROOT.parent / module.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported_modules(path: Path) -> set[str]:
    """Every hubedit module ``path`` imports, at any depth of the file (function-level imports too)."""
    module, package = _module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the module pkg.sub where it exists, else a name of pkg
            names = [f"{target}.{alias.name}" if _exists(f"{target}.{alias.name}") else target for alias in node.names]
        for name in names:
            if name.split(".")[0] != "hubedit":
                continue
            while name and not _exists(name):
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name:
                found.add(name)
    return found


def _unit(module: str) -> str:
    """The package a module belongs to: ``hubedit.zoo.build`` -> ``hubedit.zoo``; top-level modules are units."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, dict[str, set[str]]]:
    """``graph[unit_a][unit_b]``: the modules of ``unit_a`` that import something of ``unit_b``."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        module, _ = _module_name(path)
        for target in _imported_modules(path):
            if module in FACADES:
                continue
            if target == "hubedit":  # the facade itself
                graph[_unit(module)]["hubedit"].add(module)
            elif _unit(target) != _unit(module):
                graph[_unit(module)][_unit(target)].add(module)
    return graph


def _cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_reader_sees_lazy_and_relative_imports():
    graph = import_graph()
    # editor.editor imports graph at module level; cli imports zoo.build inside a function
    assert "hubedit.graph" in graph["hubedit.editor"]
    assert "hubedit.zoo" in graph["hubedit.cli"]
    assert "hubedit.metrics" in graph["hubedit.baselines"]  # `from ..metrics.scores import jsd`


def test_no_import_cycle_between_packages():
    graph = import_graph()
    cycles = _cycles(graph)
    detail = [
        " -> ".join(cycle) + "  (" + "; ".join(
            f"{a}->{b}: {sorted(graph[a][b])[:3]}" for a, b in zip(cycle, cycle[1:])) + ")"
        for cycle in cycles
    ]
    assert not cycles, "import cycles between packages:\n" + "\n".join(detail)


def test_nothing_imports_the_facade_back():
    graph = import_graph()
    offenders = {unit: sorted(deps["hubedit"]) for unit, deps in graph.items() if "hubedit" in deps}
    assert not offenders, f"import from the `hubedit` facade (use the defining module): {offenders}"


def test_ground_floor_imports_nothing_above_it():
    graph = import_graph()
    for unit, allowed in GROUND_FLOOR.items():
        above = {dep: sorted(mods) for dep, mods in graph.get(unit, {}).items() if dep not in allowed}
        assert not above, f"{unit} is ground floor but imports {above}"


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": {"a.x"}}, "b": {"c": {"b.y"}}, "c": {"a": {"c.z"}}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": set()}, "b": {}}) == []


def test_design_citations_point_at_the_shipped_page():
    """The code and README cite the design; it must be in the repository, where they say."""
    repo = ROOT.parent
    assert (ROOT / "DESIGN.md").is_file()
    texts = [repo / "README.md", *sorted(ROOT.rglob("*.py")), *sorted((repo / "scripts").glob("*.py"))]
    bare = [str(p.relative_to(repo)) for p in texts
            if "DESIGN.md" in (t := p.read_text()) and t.count("DESIGN.md") != t.count("hubedit/DESIGN.md")]
    assert not bare, f"cite hubedit/DESIGN.md, not a DESIGN.md outside the repository: {bare}"
