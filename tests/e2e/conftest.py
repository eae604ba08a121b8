"""A real DVC repository in a temp dir, holding this project's pipeline, for end-to-end tests."""

import io
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"]
PROJECT_DIRS = ["stages", "kiwi_pipe_optim"]

# Small enough to train in seconds: 320 training images, batches of 64, 2 epochs = 10 steps.
FAST = {
    "data": {"init_args": {"limit": 400}},
    "model": {"init_args": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32}},
    "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
}


def merge(base: dict, extra: dict) -> dict:
    """Deep merge; a section naming another class_path replaces the old section whole."""
    if "class_path" in extra:
        return dict(extra)
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def tool_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def sh(args: list[str], cwd: Path, timeout: float = 300, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def committed_project(path: Path) -> None:
    """The pipeline as committed (``git archive HEAD``), never the working tree: a ``dvc exp run
    -S ...`` in the checkout changes its params.yaml, and must not change what the tests run."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", *PROJECT_FILES, *PROJECT_DIRS],
                             cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(path, filter="data")


def make_repo(path: Path, params: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    committed_project(path)
    base = yaml.safe_load((path / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, FAST), params or {}), sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], path)
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-q", "-m", "pipeline"], path)
    return path


@pytest.fixture
def repo_factory(tmp_path):
    def factory(params: dict[str, Any] | None = None, name: str = "repo") -> Path:
        return make_repo(tmp_path / name, params)

    return factory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(store: Path, port: int, cwd: Path) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1 over a sqlite store, up and answering /health."""
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=cwd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            return server
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                stop_server(server)
                raise AssertionError("mlflow server did not come up on " + url)
            time.sleep(0.5)


def stop_server(server: subprocess.Popen, signal: int = 15) -> None:
    """Stop the server and its workers (its whole process group)."""
    try:
        os.killpg(server.pid, signal)
    except ProcessLookupError:
        pass
    server.wait(timeout=30)
