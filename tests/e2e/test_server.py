"""The stage against a real `mlflow server` on 127.0.0.1: unreachable at start, killed mid-run
and back, killed and never back (the spool is sent later with `kiwi-optim send-spool`)."""

import json
import subprocess
import time
import urllib.request
import os
import signal
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BIN
from tests.e2e.conftest import free_port, sh, start_mlflow_server, stop_server, tool_env

pytestmark = pytest.mark.e2e

# 5 batches an epoch, 4 epochs: 20 steps; metrics sent at every epoch end.
PARAMS = {"model": {"class_path": "user_model:ServerKiller"}, "trainer": {"max_epochs": 4},
          "mlflow": {"flush_interval_s": 0}}
KILLER = '''
import json
import subprocess
import time
import urllib.request
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


@pytest.fixture
def served(repo_factory, tmp_path):
    """A repository with the server-killing model and a running server over a store in tmp_path."""
    repo = repo_factory(PARAMS)
    (repo / "user_model.py").write_text(KILLER)
    port = free_port()
    store = tmp_path / "server.db"
    servers = [start_mlflow_server(store, port, tmp_path)]
    yield repo, f"http://127.0.0.1:{port}", store, servers
    pid_file = repo / "server.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
    for server in servers:
        stop_server(server)


def stage(repo, **env):
    return sh([sys.executable, "stages/train.py"], repo, check=False, timeout=600, **env)


def counts(store):
    client = MlflowClient(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    values = {key: client.get_metric_history(run.info.run_id, key) for key in KEYS}
    for key, history in values.items():
        assert sorted(m.step for m in history) == sorted({m.step for m in history}), f"{key} has a step twice"
    return run, {key: len(history) for key, history in values.items()}


def test_unreachable_server_at_start_is_one_line_before_training(repo_factory):
    repo = repo_factory()
    uri = f"http://127.0.0.1:{free_port()}"
    result = stage(repo, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"MLFLOW_TRACKING_URI: cannot reach the MLflow server at {uri} (")
    assert line.endswith("); start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or unset it to log to "
                         "sqlite:///mlflow.db")
    assert not (repo / "metrics.json").exists() and not (repo / "plots" / "lr").exists()


def test_server_killed_mid_run_and_back_loses_no_metric(served):
    repo, uri, store, servers = served
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
               "--port", uri.rsplit(":", 1)[1], "--workers", "1"]
    result = stage(repo, MLFLOW_TRACKING_URI=uri, SERVER_PGID=str(servers[0].pid), KILL_SERVER_AT="3",
                   RESTART_SERVER_AT="12", SERVER_CMD=json.dumps(command))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"cannot send to MLflow at {uri}" in result.stderr and "training goes on" in result.stderr
    assert "is back; every spooled value has been sent" in result.stderr
    run, stored = counts(store)
    assert run.info.status == "FINISHED" and stored == KEYS
    assert not list((repo / ".kiwi-pipe-optim" / "spool").glob("*.jsonl"))


def test_server_killed_for_good_keeps_a_spool_that_send_spool_delivers(served, tmp_path):
    repo, uri, store, servers = served
    result = stage(repo, MLFLOW_TRACKING_URI=uri, SERVER_PGID=str(servers[0].pid), KILL_SERVER_AT="3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (repo / "metrics.json").exists()  # training and the DVC outputs do not depend on the server
    [spool] = (repo / ".kiwi-pipe-optim" / "spool").glob("*.jsonl")
    assert f"send them with `kiwi-optim send-spool {spool.resolve()}` once it is back" in result.stderr

    servers.append(start_mlflow_server(store, int(uri.rsplit(":", 1)[1]), tmp_path))
    run, stored = counts(store)
    assert run.info.status == "RUNNING" and stored["lr/default"] < 20
    sent = sh([str(BIN / "kiwi-optim"), "send-spool", str(spool)], repo)
    assert f"of run {run.info.run_id}" in sent.stdout
    run, stored = counts(store)
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
        for uri, reason in (("sqlite:////proc/nope/mlflow.db", "FileNotFoundError"),
                            (f"http://127.0.0.1:{port}", "501")):
            result = stage(repo, MLFLOW_TRACKING_URI=uri)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
            [line] = [x for x in result.stderr.strip().splitlines() if not x.startswith("kiwi-pipe-optim: ")]
            assert line.startswith(f"MLFLOW_TRACKING_URI: cannot open an MLflow run at {uri} (") and reason in line
            assert not (repo / "metrics.json").exists()
    finally:
        web.terminate()
        web.wait(timeout=10)


def test_a_server_with_basic_auth_takes_the_right_credentials_and_refuses_others(repo_factory, tmp_path):
    """`mlflow server --app-name basic-auth`: the right credentials log a FINISHED run; missing
    or wrong ones are refused in one line before training; the password is in no file written."""
    password = "kiwi-s3cret-pass-1"
    port = free_port()
    env = tool_env(MLFLOW_AUTH_ADMIN_PASSWORD=password, MLFLOW_FLASK_SERVER_SECRET_KEY="kiwi-test-secret")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'auth-store.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
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
            result = stage(repo, MLFLOW_TRACKING_URI=uri, **creds)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
            [line] = [x for x in result.stderr.strip().splitlines() if not x.startswith("kiwi-pipe-optim: ")]
            assert line.startswith(f"MLFLOW_TRACKING_URI: cannot open an MLflow run at {uri} (") and "401" in line
            assert "MLFLOW_TRACKING_USERNAME" in line and not (repo / "metrics.json").exists()
        result = stage(repo, MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME="admin",
                       MLFLOW_TRACKING_PASSWORD=password)
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{tmp_path / 'auth-store.db'}")
        [run] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
        assert run.info.status == "FINISHED"
        assert password not in json.dumps({**run.data.params, **run.data.tags})
        written = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
        assert not [p for p in written if password.encode() in p.read_bytes()]
    finally:
        stop_server(server)
