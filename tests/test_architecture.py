"""The house rules of the package, enforced: imports flow one way (import-linter's contracts in
pyproject.toml, function-level imports included), no import cycles between prefdata's modules,
no function longer than 80 lines, and docs/ARCHITECTURE.md lists every module that exists."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "prefdata"
MAX_FUNCTION_LINES = 80


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe is not None, "import-linter is a dev dependency (pip install -e '.[dev]')"
    return subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_import_linter_contract_is_kept():
    run = _lint_imports()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and " kept" in run.stdout


def test_the_layers_contract_catches_an_upward_import(tmp_path):
    """The contract test can fail: a copy of the package with one upward, function-level import
    (schemas -> recipe) breaks the layers contract."""
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "prefdata", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    pair = copy / "prefdata" / "schemas" / "pair.py"
    pair.write_text(pair.read_text() + "\n\ndef _upward():\n    from prefdata.recipe import Recipe\n\n    return Recipe\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    run = subprocess.run([exe, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(copy)})
    assert run.returncode != 0
    assert "prefdata.schemas.pair -> prefdata.recipe" in run.stdout


def _module_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("prefdata", include_external_packages=False)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_prefdata_modules():
    cycles = _cycles(_module_graph())
    assert not cycles, f"import cycles: {cycles}"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(REPO), node


def test_no_function_is_longer_than_80_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these functions: " + "; ".join(long)


def _package_modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE:
            continue  # a subpackage is listed as its folder's modules
        names.add(rel)
    return names


ARCH_ENTRY = re.compile(r"^(prefdata/[\w/]+\.py)\s", re.MULTILINE)


@pytest.fixture(scope="module")
def architecture() -> str:
    return (REPO / "docs" / "ARCHITECTURE.md").read_text()


def test_architecture_page_lists_every_module_and_only_real_ones(architecture):
    listed = set(ARCH_ENTRY.findall(architecture))
    assert listed, "docs/ARCHITECTURE.md: no module lines ('prefdata/<path>.py  what it does')"
    missing, stale = _package_modules() - listed, listed - _package_modules()
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {sorted(missing)}"
    assert not stale, f"docs/ARCHITECTURE.md lists modules that do not exist: {sorted(stale)}"


def test_architecture_page_draws_the_contracts_layers(architecture):
    """Every layer of the import-linter contract appears, in order, in the page's layer list."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    section = architecture.split("## Layers", 1)[1].split("\n## ", 1)[0]
    positions = []
    for layer in layers:
        names = [name.strip() for name in re.split(r"[|:]", layer)]
        for name in names:
            assert f"`{name}`" in section, f"layer member {name} not drawn under '## Layers'"
        positions.append(min(section.index(f"`{name}`") for name in names))
    assert positions == sorted(positions), "the page draws the layers in another order than the contract"
    assert len(architecture.splitlines()) < 150
