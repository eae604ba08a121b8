import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def committed(name: str) -> str:
    """A file of this repository as committed: the README's own ``dvc exp run -S ...`` changes the
    working params.yaml, and must not change what the tests see."""
    import subprocess

    return subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


class Exploit:
    """Unpickling it creates the file ``marker``: a stand-in for a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def write_params(tmp_path):
    """Write a params.yaml text into a temp dir and return its path."""

    def write(text: str, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch):
    for key, value in {
        "GIT_AUTHOR_NAME": "kiwi test", "GIT_AUTHOR_EMAIL": "test@kiwi.invalid",
        "GIT_COMMITTER_NAME": "kiwi test", "GIT_COMMITTER_EMAIL": "test@kiwi.invalid",
    }.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


_MIGRATED: list[Path] = []


def empty_store(path: Path) -> str:
    """A new, empty MLflow sqlite store at ``path``, its URI: a copy of one migrated once per test
    process (MLflow's migrations cost seconds a store)."""
    import shutil
    import tempfile

    if not _MIGRATED:
        from mlflow.tracking import MlflowClient

        first = Path(tempfile.mkdtemp(prefix="kiwi-store-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{first}").search_experiments()
        _MIGRATED.append(first)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MIGRATED[0], path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_uri(tmp_path):
    """The URI of an empty MLflow store in ``tmp_path`` (``mlflow.db``)."""
    return empty_store(tmp_path / "mlflow.db")
