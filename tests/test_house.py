"""The package's layout promises: a small core that needs only torch and pydantic, small modules,
and schedule or optimizer behaviour decided by the registries, never by comparing names."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "kiwi_pipe_optim"
EDGES = ("integrations", "examples", "cli")
CORE = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in EDGES and p.stem != "__init__")
HEAVY = ("lightning", "pytorch_lightning", "mlflow", "dvc", "matplotlib")


def test_the_core_is_what_the_layout_says():
    assert {"config", "errors", "fields", "lint", "optimizers", "param_groups", "params_file", "preview", "resolve",
            "schedules", "specs", "state"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_no_edge_library(module):
    code = (f"import sys; import kiwi_pipe_optim.{module}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_stays_small(path):
    assert len(path.read_text().splitlines()) < 400


def test_optimizer_config_stays_small():
    lines = (PACKAGE / "config.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class OptimizerConfig"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace())
    assert end - start < 200


def test_no_code_compares_a_schedule_or_optimizer_name():
    pattern = re.compile(r'[=!]= *"(plateau|noam|adamw|linear|none|sgd|adam)"')
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
