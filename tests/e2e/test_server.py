"""The stage against a real `mlflow server` on 127.0.0.1: unreachable at start, killed mid-run
and back, killed and never back (the spool is sent later with `kiwi-optim send-spool`).

The stage runs in this process: what is tested is what it does with the server, not the
interpreter (test_stage runs the script for its exit status). Starting a server costs seconds,
so the killed-and-back and killed-for-good tests share one, each logging to its own experiment.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BIN
from tests.e2e.conftest import free_port, sh, stage_in_process, start_mlflow_server, stop_server, template, tool_env

pytestmark = pytest.mark.e2e

# 5 batches an epoch, 4 epochs: 20 steps; metrics sent at every epoch end.
PARAMS = {"trainer": {"max_epochs": 4}, "mlflow": {"flush_interval_s": 0}}
KILLER = '''
import json
import os
import signal
import subprocess
import time
import urllib.request

from kiwi_pipe_optim.examples.digits import DigitsTransformer


class ServerKiller(DigitsTransformer):
    """SIGKILLs the tracking server at step $KILL_SERVER_AT; restarts it at $RESTART_SERVER_AT."""

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == int(os.environ.get("KILL_SERVER_AT", -1)):
            os.killpg(int(os.environ["SERVER_PGID"]), signal.SIGKILL)
        if self.global_step == int(os.environ.get("RESTART_SERVER_AT", -1)):
            server = subprocess.Popen(json.loads(os.environ["SERVER_CMD"]), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            open("server.pid", "w").write(str(server.pid))
            for _ in range(120):
                try:
                    urllib.request.urlopen(os.environ["MLFLOW_TRACKING_URI"] + "/health", timeout=2).close()
                    return
                except OSError:
                    time.sleep(0.5)
'''
KEYS = {"lr/default": 20, "lr/encoder": 20, "train_loss": 20, "val_loss": 4, "val_acc": 4}


def empty_store(path: Path) -> Path:
    """A copy of the template's migrated store: a new one costs the server seconds of migrations."""
    shutil.copy(template() / "mlflow.db", path)
    return path


class Server:
    """One `mlflow server` over one store and port, whoever (re)starts it: the tests or the model."""

    def __init__(self, where: Path):
        self.where, self.store, self.port = where, empty_store(where / "server.db"), free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.store}",
                        "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.started: list[subprocess.Popen] = []
        self.pid = 0  # of the one now serving (its process group's id)

    def up(self) -> None:
        try:
            urllib.request.urlopen(self.uri + "/health", timeout=2).close()
        except OSError:
            self.started.append(start_mlflow_server(self.store, self.port, self.where))
            self.pid = self.started[-1].pid

    def adopt(self, pid_file: Path) -> None:
        """The server the model restarted, if it did."""
        if pid_file.exists():
            self.pid = int(pid_file.read_text())

    def stop(self) -> None:
        """SIGKILL: what the store holds is read already, and a graceful stop takes seconds."""
        for pid in {self.pid, *(s.pid for s in self.started)} - {0}:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for server in self.started:
            stop_server(server, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    shared = Server(tmp_path_factory.mktemp("server"))
    yield shared
    shared.stop()


def killer_repo(repo_factory, name: str) -> Path:
    """A repository whose model kills the server, logging to the experiment ``name``."""
    repo = repo_factory({**PARAMS, "model": {"class_path": f"{name}:ServerKiller"},
                         "mlflow": {**PARAMS["mlflow"], "experiment_name": name}})
    (repo / f"{name}.py").write_text(KILLER)
    return repo


def counts(store, experiment):
    client = MlflowClient(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    values = {key: client.get_metric_history(run.info.run_id, key) for key in KEYS}
    for key, history in values.items():
        assert sorted(m.step for m in history) == sorted({m.step for m in history}), f"{key} has a step twice"
    return run, {key: len(history) for key, history in values.items()}


def with_senders(result, capfd):
    """The stage's stderr and its sender process's: a child of this process, that one writes to
    file descriptor 2, not to the ``sys.stderr`` the stage had."""
    return result.stderr + capfd.readouterr().err


def one_line(result, uri, opening="cannot open an MLflow run at"):
    """The stage's refusal: exit 2, one line of its own (the kiwi-pipe-optim: log lines aside)."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [x for x in result.stderr.strip().splitlines() if not x.startswith("kiwi-pipe-optim: ")]
    assert line.startswith(f"MLFLOW_TRACKING_URI: {opening} {uri} ("), line
    return line


def test_unreachable_server_at_start_is_one_line_before_training(repo_factory):
    repo = repo_factory()
    uri = f"http://127.0.0.1:{free_port()}"
    result = stage_in_process(repo, MLFLOW_TRACKING_URI=uri)
    assert result.stderr.strip().count("\n") == 0, result.stderr[-2000:]  # not even a log line
    line = one_line(result, uri, "cannot reach the MLflow server at")
    assert line.endswith("); start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or unset it to log to "
                         "sqlite:///mlflow.db")
    assert not (repo / "metrics.json").exists() and not (repo / "plots" / "lr").exists()


@pytest.mark.xdist_group("serial")  # a kill and a restart in seconds of retries: no CPU to share
def test_server_killed_mid_run_and_back_loses_no_metric(server, repo_factory, capfd):
    server.up()
    repo = killer_repo(repo_factory, "killed_and_back")
    try:
        result = stage_in_process(repo, MLFLOW_TRACKING_URI=server.uri, SERVER_PGID=str(server.pid),
                                  KILL_SERVER_AT="3", RESTART_SERVER_AT="12", SERVER_CMD=json.dumps(server.command))
    finally:
        server.adopt(repo / "server.pid")
    stderr = with_senders(result, capfd)
    assert result.returncode == 0, stderr[-3000:]
    assert f"cannot send to MLflow at {server.uri}" in stderr and "training goes on" in stderr
    assert "is back; every spooled value has been sent" in stderr
    run, stored = counts(server.store, "killed_and_back")
    assert run.info.status == "FINISHED" and stored == KEYS
    assert not list((repo / ".kiwi-pipe-optim" / "spool").glob("*.jsonl"))


@pytest.mark.xdist_group("serial")
def test_server_killed_for_good_keeps_a_spool_that_send_spool_delivers(server, repo_factory, capfd):
    server.up()  # the one the test above restarted, if it ran
    repo = killer_repo(repo_factory, "killed_for_good")
    result = stage_in_process(repo, MLFLOW_TRACKING_URI=server.uri, SERVER_PGID=str(server.pid), KILL_SERVER_AT="3")
    stderr = with_senders(result, capfd)
    assert result.returncode == 0, stderr[-3000:]
    assert (repo / "metrics.json").exists()  # training and the DVC outputs do not depend on the server
    [spool] = (repo / ".kiwi-pipe-optim" / "spool").glob("*.jsonl")
    assert f"send them with `kiwi-optim send-spool {spool.resolve()}` once it is back" in stderr

    server.up()
    run, stored = counts(server.store, "killed_for_good")
    assert run.info.status == "RUNNING" and stored["lr/default"] < 20
    sent = sh([str(BIN / "kiwi-optim"), "send-spool", str(spool)], repo)  # the command, as the user runs it
    assert f"of run {run.info.run_id}" in sent.stdout
    run, stored = counts(server.store, "killed_for_good")
    assert run.info.status == "FINISHED" and stored == KEYS
    assert not Path(spool).exists()


def test_a_store_it_cannot_open_or_a_server_that_is_no_mlflow_is_one_line(repo_factory, tmp_path):
    repo = repo_factory()
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        line = one_line(stage_in_process(repo, MLFLOW_TRACKING_URI="sqlite:////proc/nope/mlflow.db"),
                        "'/proc/nope/mlflow.db'", opening="cannot write the MLflow store")
        assert "No such file or directory" in line and not (repo / "metrics.json").exists()
        uri = f"http://127.0.0.1:{port}"
        line = one_line(stage_in_process(repo, MLFLOW_TRACKING_URI=uri), uri)
        assert "501" in line and not (repo / "metrics.json").exists()
    finally:
        web.terminate()
        web.wait(timeout=10)


def test_a_server_with_basic_auth_takes_the_right_credentials_and_refuses_others(repo_factory, tmp_path):
    """`mlflow server --app-name basic-auth`: the right credentials log a FINISHED run; missing
    or wrong ones are refused in one line before training; the password is in no file written."""
    password = "kiwi-s3cret-pass-1"
    port = free_port()
    store = empty_store(tmp_path / "auth-store.db")
    env = tool_env(MLFLOW_AUTH_ADMIN_PASSWORD=password, MLFLOW_FLASK_SERVER_SECRET_KEY="kiwi-test-secret")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{store}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, "the basic-auth server did not start"
                time.sleep(0.5)
        repo = repo_factory()
        for user, secret in ((None, None), ("admin", "wrong-password-1")):
            creds = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": secret} if user else {}
            line = one_line(stage_in_process(repo, MLFLOW_TRACKING_URI=uri, **creds), uri)
            assert "401" in line and "MLFLOW_TRACKING_USERNAME" in line and not (repo / "metrics.json").exists()
        result = stage_in_process(repo, MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME="admin",
                                  MLFLOW_TRACKING_PASSWORD=password)
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{store}")
        [run] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
        assert run.info.status == "FINISHED"
        assert password not in json.dumps({**run.data.params, **run.data.tags})
        written = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
        assert not [p for p in written if password.encode() in p.read_bytes()]
    finally:
        stop_server(server, signal.SIGKILL)  # the store is read already; a graceful stop takes seconds
