"""A real DVC repository in a temp dir, holding this project's pipeline, for end-to-end tests."""

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.servers import free_port  # noqa: F401 (re-exported: the tests import it from here)
from tests.conftest import BIN, ROOT

PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
                 ".dvc/plots/kiwi-lr.json"]
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


_TEMPLATE: list[Path] = []


def template() -> Path:
    """The pipeline as committed, in a git repository with the small params and an empty MLflow
    store (its migrations cost seconds): built once per test process, copied by every test."""
    if not _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="kiwi-template-")) / "repo"
        atexit.register(shutil.rmtree, path.parent, True)
        path.mkdir()
        committed_project(path)
        base = yaml.safe_load((path / "params.yaml").read_text())
        (path / "params.yaml").write_text(yaml.safe_dump(merge(base, FAST), sort_keys=False))
        sh(["git", "init", "-q", "-b", "main"], path)
        sh(["git", "add", "-A"], path)
        sh(["git", "commit", "-q", "-m", "pipeline"], path)
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{path / 'mlflow.db'}").search_experiments()  # git ignores it
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


def make_repo(path: Path, params: dict[str, Any] | None = None) -> Path:
    """A copy of :func:`template`, its params merged with ``params`` and committed."""
    shutil.copytree(template(), path, symlinks=True)
    if params:
        base = yaml.safe_load((path / "params.yaml").read_text())
        (path / "params.yaml").write_text(yaml.safe_dump(merge(base, params), sort_keys=False))
        sh(["git", "commit", "-q", "-am", "params"], path)
    return path


def runs_in(repo: Path, experiment: str = "kiwi-pipe-optim") -> list[Any]:
    """The runs the repository's MLflow store holds, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def repo_factory(tmp_path):
    def factory(params: dict[str, Any] | None = None, name: str = "repo") -> Path:
        return make_repo(tmp_path / name, params)

    return factory


def start_mlflow_server(store: Path | str, port: int, cwd: Path, *options: str, workers: int = 1) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1 over a sqlite store (a path) or a database URI, up
    and answering /health."""
    backend = store if isinstance(store, str) else f"sqlite:///{store}"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), *options],
        # without MLflow's job runner (7 more processes, none of them used by a tracking server)
        cwd=cwd, env=tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
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


def _in_process(repo: Path, main: Any, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
    """``main(args)`` in ``repo`` with ``env`` (and no MLFLOW_ or DVC_ variables of this process);
    its exit status, stdout and stderr. Everything is put back afterwards, and the user's modules
    imported from ``repo`` are forgotten, so a later test may write its own under the same name."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_path = dict(os.environ), os.getcwd(), list(sys.path)
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        del os.environ[key]
    os.environ.update(env)
    os.chdir(repo)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        root = str(Path(repo).resolve())
        for name in [n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").startswith(root)]:
            del sys.modules[name]
    return code, out.getvalue(), err.getvalue()


def stage_in_process(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``kiwi-optim train ARGS`` in ``repo``, run in this process (no interpreter start-up and no
    imports to pay), as ``sh`` returns it."""
    from kiwi_pipe_optim.integrations.stage import main

    return subprocess.CompletedProcess(["kiwi-optim", "train", *args], *_in_process(repo, main, args, env))


def kiwi_optim_in_process(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``kiwi-optim ARGS`` in ``repo``, in this process, as ``sh`` would return it."""
    from kiwi_pipe_optim.cli import main

    return subprocess.CompletedProcess(["kiwi-optim", *args], *_in_process(repo, main, args, env))
