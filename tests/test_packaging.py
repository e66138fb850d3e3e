"""Packaging: the wheel carries every file hubedit reads at run time, every third-party import is a declared
dependency, and every dependency has bounds that the installed environment satisfies."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: huggingface_hub depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hubedit"
#: a reference editor folder planted in the wheel's source copy, so that the package-data rule for
#: ``hubedit/reference/<name>/`` is checked whether or not this checkout ships one yet
PROBE_EDITOR = "hubedit/reference/packaging-probe-editor"
#: exception types whose handler makes an import inside ``try:`` optional
_IMPORT_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """The declared run-time dependencies and the optional extras, parsed."""
    project = _pyproject()["project"]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project.get("optional-dependencies", {}).items()}
    return [Requirement(r) for r in project["dependencies"]], extras


def _source_files(directory: Path) -> list[str]:
    """Files under ``directory`` as wheel member names (``hubedit/...``), without byte code."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


@pytest.fixture(scope="module")
def wheel_members(tmp_path_factory) -> set[str]:
    """Build the wheel from a clean copy of the source tree (no stale build/ or egg-info) and list it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "hubedit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    (src / PROBE_EDITOR).mkdir()
    for name in ("config.json", "model.safetensors"):
        (src / PROBE_EDITOR / name).write_text("probe\n")
    (src / "hubedit" / "reference" / "__pycache__").mkdir()  # byte code a source tree may hold: not package data
    (src / "hubedit" / "reference" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"probe")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"building the wheel failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    wheels = list((tmp / "dist").glob("hubedit-*.whl"))
    assert len(wheels) == 1, f"expected one hubedit wheel, got {wheels}"
    with zipfile.ZipFile(wheels[0]) as zf:
        return set(zf.namelist())


def test_wheel_holds_every_kernel_source(wheel_members):
    from hubedit.graph import native_kernels
    from hubedit.metanet import edge_kernel
    from hubedit.zoo import fused

    kernel_files = [f for d in ("zoo", "metanet", "graph") for f in _source_files(PACKAGE / d / "kernels")]
    assert "hubedit/zoo/kernels/layer_kernels.h" in kernel_files
    assert "hubedit/metanet/kernels/edge_layer.cpp" in kernel_files
    assert {"hubedit/graph/kernels/saliency.cpp", "hubedit/graph/kernels/refit.cpp"} <= set(kernel_files)
    missing = [f for f in kernel_files if f not in wheel_members]
    assert not missing, f"kernel files missing from the wheel (an installed hubedit trains on the torch fallback): {missing}"
    # and exactly the files the kernel build reads (fused.SOURCES / HEADERS), wherever they live
    read = [p.resolve().relative_to(ROOT).as_posix()
            for p in (*fused.SOURCES, *fused.HEADERS, *edge_kernel.SOURCES, *native_kernels.SOURCES, *native_kernels.HEADERS)]
    assert [f for f in read if f not in wheel_members] == []


def test_wheel_holds_every_task_data_file_and_module(wheel_members):
    data_files = _source_files(PACKAGE / "tasks" / "data")
    assert any(f.endswith(".xz") for f in data_files) and any(f.endswith(".md") for f in data_files)
    missing = [f for f in data_files if f not in wheel_members]
    assert not missing, f"task data files missing from the wheel: {missing}"
    modules = [f for f in _source_files(PACKAGE) if f.endswith(".py")]
    assert [f for f in modules if f not in wheel_members] == [], "modules missing from the wheel"
    assert any(m.endswith(".dist-info/entry_points.txt") for m in wheel_members), "no entry points (the hubedit command)"


def test_wheel_holds_the_reference_editors(wheel_members):
    """hubedit/reference/<name>/ (config.json, model.safetensors): the quickstart's reference editor ships in the
    wheel -- the probe planted in the source copy, and every editor file this checkout holds -- but no byte code."""
    assert {f"{PROBE_EDITOR}/config.json", f"{PROBE_EDITOR}/model.safetensors"} <= wheel_members
    shipped = [f for f in _source_files(PACKAGE / "reference") if not f.endswith(".py")]
    assert [f for f in shipped if f not in wheel_members] == [], "reference editor files missing from the wheel"
    assert "hubedit/reference/__init__.py" in wheel_members
    assert not [m for m in wheel_members if "__pycache__" in m or m.endswith(".pyc")]


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """``(top-level module, line, guarded)`` of every absolute import in ``tree``, at any depth. ``guarded``:
    inside the body of a ``try`` whose handlers catch ImportError (the code runs without the module)."""
    found: list[tuple[str, int, bool]] = []

    def catches_import_error(node: ast.Try) -> bool:
        for handler in node.handlers:
            if handler.type is None:
                return True
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if any(isinstance(t, ast.Name) and t.id in _IMPORT_GUARDS for t in types):
                return True
        return False

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, guarded))
        if isinstance(node, ast.Try) and catches_import_error(node):
            for child in node.body:
                visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def test_import_scan_sees_nested_and_guarded_imports():
    tree = ast.parse(
        "import a.b\n"
        "from c import d\n"
        "from . import e\n"
        "def f():\n    import g\n"
        "try:\n    import h\nexcept ImportError:\n    import i\n"
        "try:\n    import j\nexcept (KeyError, ModuleNotFoundError):\n    pass\n"
        "try:\n    import k\nexcept KeyError:\n    pass\n"
    )
    assert _imports(tree) == [
        ("a", 1, False), ("c", 2, False), ("g", 5, False), ("h", 7, True), ("i", 9, False),
        ("j", 11, True), ("k", 15, False),
    ]


def test_every_third_party_import_is_a_declared_dependency():
    required, extras = _requirements()
    required_names = {canonicalize_name(r.name) for r in required}
    optional_names = {canonicalize_name(r.name) for reqs in extras.values() for r in reqs}
    dists_of = importlib.metadata.packages_distributions()
    problems: list[str] = []
    n_imports = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        for module, line, guarded in _imports(ast.parse(path.read_text(), filename=str(path))):
            if module in sys.stdlib_module_names or module == "hubedit" or module == "__future__":
                continue
            n_imports += 1
            dists = {canonicalize_name(d) for d in dists_of.get(module, [])}
            if not dists:
                problems.append(f"{where}:{line}: `{module}` belongs to no installed distribution")
            elif not dists & required_names and not (guarded and dists & optional_names):
                problems.append(
                    f"{where}:{line}: `{module}` (distribution {', '.join(sorted(dists))}) is not declared in "
                    f"pyproject.toml's dependencies{'' if guarded else ' (unguarded: an optional extra is not enough)'}"
                )
    assert n_imports > 50, "the import scan found too few third-party imports to be looking at hubedit"
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def _all_requirements() -> list[tuple[str, Requirement]]:
    required, extras = _requirements()
    return [("dependencies", r) for r in required] + [(f"[{name}]", r) for name, reqs in extras.items() for r in reqs]


def test_every_dependency_has_a_lower_and_an_upper_bound():
    lower, upper = {">=", ">", "==", "~=", "==="}, {"<", "<=", "==", "~=", "==="}
    unbounded = [
        f"{where}: {req}"
        for where, req in _all_requirements()
        if not {s.operator for s in req.specifier} & lower or not {s.operator for s in req.specifier} & upper
    ]
    assert not unbounded, "dependencies without a lower and an upper bound:\n" + "\n".join(unbounded)


def test_torch_range_admits_the_tested_build():
    torch_req = next(r for r in _requirements()[0] if canonicalize_name(r.name) == "torch")
    assert torch_req.specifier.contains("2.13.0") and torch_req.specifier.contains("2.13.0+cpu")
    # the dynamo-based exporter with optimize= (hubedit/export/onnx.py) is not in older releases
    assert not torch_req.specifier.contains("2.5.1")


def test_installed_versions_satisfy_the_declared_ranges():
    """The test environment (CI installs torch 2.13.0, then ``.[dev]``) lies inside every declared range, so
    the bounds are the ones the test suite runs against."""
    env = default_environment()
    outside = []
    for where, req in _all_requirements():
        if req.marker is not None and not req.marker.evaluate({**env, "extra": where.strip("[]")}):
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            outside.append(f"{where}: {req} is not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            outside.append(f"{where}: {req.name} {installed} is outside {req.specifier}")
    assert not outside, "installed versions outside the declared ranges:\n" + "\n".join(outside)
