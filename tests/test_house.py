"""The package's layout promises, read from its source with ``ast``: no import cycle anywhere
(module-level, in functions and under ``TYPE_CHECKING`` alike), layers that import only
downwards (core <- tracking, study <- lightning <- stage <- sweep <- cli), a core that needs only torch and
pydantic, short functions in the stage, the import paths the README shows, and schedule or
optimizer behaviour decided by the registries, never by comparing names."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "kiwi_pipe_optim"
NAME = "kiwi_pipe_optim"
HEAVY = ("lightning", "pytorch_lightning", "mlflow", "dvc", "matplotlib")
# Each layer may import its own and the layers below; examples are user code, on Lightning only.
RANKS = {"core": 0, "tracking": 1, "study": 1, "lightning": 2, "examples": 3, "stage": 3, "sweep": 4, "cli": 5}
README_SHIMS = {f"{NAME}.integrations.logger", f"{NAME}.integrations.resumable",
                f"{NAME}.integrations.pytorch_lightning"}  # the last: LightningCLI's class paths


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")[1:]
    if not parts or parts == ["integrations"]:
        return None  # the package itself and the integrations' docstring
    if module in README_SHIMS:
        return "lightning"
    if parts[0] == "integrations":
        return parts[1]
    return parts[0] if parts[0] in RANKS else "core"


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """The package's modules ``module`` imports, anywhere in it; and the outside packages."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (inside if alias.name.startswith(NAME + ".") else outside).add(
                    alias.name if alias.name.startswith(NAME + ".") else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").split(".")[0] != NAME:
                    outside.add((node.module or "").split(".")[0])
                    continue
                base = node.module
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                inside.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in inside if m in MODULES and m != module}, outside - {"__future__"}


GRAPH = {module: imports_of(module)[0] for module in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles() == []


def test_the_cycle_check_finds_one():
    GRAPH[f"{NAME}.config"].add(f"{NAME}.lint")  # lint imports config: a cycle, now
    try:
        assert any(f"{NAME}.config" in c and f"{NAME}.lint" in c for c in cycles())
    finally:
        GRAPH[f"{NAME}.config"].discard(f"{NAME}.lint")


def breaches() -> list[str]:
    found = []
    for module, targets in GRAPH.items():
        mine = layer(module)
        if mine is None:
            continue
        for target in targets:
            theirs = layer(target)
            if theirs is None:
                found.append(f"{module} imports {target}")  # only cli may import the package itself
            elif RANKS[theirs] > RANKS[mine] or (theirs != mine and RANKS[theirs] == RANKS[mine]):
                found.append(f"{module} ({mine}) imports {target} ({theirs})")
    return found


def test_layers_import_only_downwards():
    assert breaches() == []


def test_the_layering_check_finds_a_breach():
    GRAPH[f"{NAME}.integrations.tracking.run"].add(f"{NAME}.integrations.lightning.recorder")
    try:
        assert breaches() == [f"{NAME}.integrations.tracking.run (tracking) imports "
                              f"{NAME}.integrations.lightning.recorder (lightning)"]
    finally:
        GRAPH[f"{NAME}.integrations.tracking.run"].discard(f"{NAME}.integrations.lightning.recorder")


@pytest.mark.parametrize("module", [m for m in MODULES if layer(m) in ("core", "tracking")])
def test_the_core_and_tracking_import_no_edge_library(module):
    allowed = {"core": set(), "tracking": {"mlflow"}}[layer(module)]
    assert imports_of(module)[1] & set(HEAVY) <= allowed


def test_importing_the_core_loads_no_edge_library():
    core = [m for m in MODULES if layer(m) == "core"]
    code = (f"import sys; import {', '.join(core)}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_integrations_holds_only_its_layers_and_the_readme_paths():
    own = {p.name for p in (PACKAGE / "integrations").glob("*.py")}
    assert own == {"__init__.py", "logger.py", "resumable.py", "pytorch_lightning.py"}
    for shim in README_SHIMS:  # re-exports, nothing of their own
        tree = ast.parse(MODULES[shim].read_text())
        assert all(isinstance(n, (ast.ImportFrom, ast.Assign, ast.Expr)) for n in tree.body)


STAGE = sorted((PACKAGE / "integrations" / "stage").glob("*.py"))


@pytest.mark.parametrize("path", STAGE, ids=lambda p: p.name)
def test_no_function_of_the_stage_is_over_60_lines(path):
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


def readme_imports() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    found = [(m.group(1), name.strip()) for m in re.finditer(r"from (kiwi_pipe_optim[\w.]*) import ([\w, ]+)", text)
             for name in m.group(2).split(",") if name.strip()]
    found += [(m.group(1), m.group(2)) for m in re.finditer(r"`(kiwi_pipe_optim\.integrations[\w.]*)\.([A-Z]\w+)`",
                                                            text)]
    found += [(m.group(1), "") for m in re.finditer(r"`(kiwi_pipe_optim\.integrations\.[a-z_.]+)`", text)]
    return sorted(set(found))


def test_the_readme_shows_the_integrations_paths():
    modules = {module for module, _ in readme_imports()}
    assert {f"{NAME}.integrations.lightning", f"{NAME}.integrations.logger"} <= modules


@pytest.mark.parametrize("module, name", readme_imports(), ids=lambda v: v or "module")
def test_every_import_path_the_readme_shows_works(module, name):
    imported = importlib.import_module(module)
    if name:
        assert getattr(imported, name) is not None


def test_no_code_compares_a_schedule_or_optimizer_name():
    pattern = re.compile(r'[=!]= *"(plateau|noam|adamw|linear|none|sgd|adam)"')
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
