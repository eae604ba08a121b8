"""A team tracking server under load: MLflow's reference set-up, `mlflow server` on a real
PostgreSQL with `--serve-artifacts`, with many stages logging at once, a DDP run among them, and
PostgreSQL itself restarted (as after a crash) in the middle of four runs. Every value is stored
once, every run ends FINISHED, the artifacts go through the server's proxy.

PostgreSQL is Debian's, started here in a temporary directory as its non-root user, on
127.0.0.1 and a free port, and stopped at the end."""

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import BIN, free_port, make_repo, sh, start_mlflow_server, stop_server, tool_env
from tests.e2e.servers import Postgres, pg_tool

# many training processes at once: alone on one xdist worker, not beside another test's processes
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serial")]

pytest.importorskip("psycopg")

SLOW = '''
import os
import time

from kiwi_pipe_optim.examples.digits import DigitsTransformer


class SlowDigits(DigitsTransformer):
    """Waits $STEP_SLEEP_S at each step: a run long enough to outlast a database restart,
    without taking the cores the other runs train on."""

    def training_step(self, batch, batch_idx):
        time.sleep(float(os.environ.get("STEP_SLEEP_S", "0")))
        return super().training_step(batch, batch_idx)
'''


@pytest.fixture(scope="module")
def postgres():
    if pg_tool("initdb") is None:
        pytest.skip("PostgreSQL is not installed (`make test` installs Debian's postgresql)")
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    where = tmp_path_factory.mktemp("team")
    port = free_port()
    server = start_mlflow_server(postgres.uri, port, where, "--serve-artifacts", "--artifacts-destination",
                                 str(where / "artifacts"), workers=2)
    yield f"http://127.0.0.1:{port}", where / "artifacts"
    stop_server(server)


def stages(repos, uri, **env):
    return [subprocess.Popen([sys.executable, "stages/train.py"], cwd=repo,
                             env=tool_env(MLFLOW_TRACKING_URI=uri, **env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for repo in repos]


def finished(processes, timeout=420):
    for process in processes:
        _, err = process.communicate(timeout=timeout)
        assert process.returncode == 0 and "Traceback" not in err, err[-3000:]


def test_eight_stages_and_a_ddp_run_at_once_store_every_value_once(team_server, tmp_path):
    uri, artifacts = team_server
    mlflow = {"experiment_name": "load", "flush_interval_s": 0.0}
    repos = [make_repo(tmp_path / f"r{i}", {"trainer": {"max_epochs": 1}, "mlflow": mlflow,
                                            "optimizer": {"learning_rate": 0.001 * (i + 1)}}) for i in range(8)]
    # 320 training images over 2 processes: 3 batches of 64 each, one epoch: 3 steps
    repos.append(make_repo(tmp_path / "ddp", {"trainer": {"devices": 2, "strategy": "ddp", "accelerator": "cpu",
                                                          "max_epochs": 1}, "mlflow": mlflow}))
    finished(stages(repos, uri))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    assert len(runs) == 9 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = 3 if run.data.params["trainer.devices"] == "2" else 5
        for key, count in {"lr/default": steps, "lr/encoder": steps, "val_loss": 1, "val_acc": 1}.items():
            logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(logged) == len(set(logged)) == count, (run.info.run_name, key, sorted(logged))
        assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} >= {"config/optimizer.yaml"}
    assert list(artifacts.rglob("optimizer.yaml"))  # stored by the server, through its proxy


def test_postgresql_restarted_in_the_middle_of_four_runs_loses_and_doubles_nothing(postgres, team_server, tmp_path):
    uri, _ = team_server
    repos = []
    for i in range(4):
        repo = make_repo(tmp_path / f"r{i}", {"model": {"class_path": "user_slow:SlowDigits"},
                                              "trainer": {"max_epochs": 4},
                                              "mlflow": {"experiment_name": "restart", "flush_interval_s": 0.0},
                                              "optimizer": {"learning_rate": 0.001 * (i + 1)}})
        (repo / "user_slow.py").write_text(SLOW)
        repos.append(repo)
    processes = stages(repos, uri, STEP_SLEEP_S="0.3")
    client = MlflowClient(uri)
    deadline = time.monotonic() + 240
    while True:  # every run has sent values, and none has finished
        experiment = client.get_experiment_by_name("restart")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if len(runs) == 4 and all(r.data.metrics for r in runs):
            break
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.2)
    postgres.restart()
    assert all(p.poll() is None for p in processes)  # restarted while all four were training
    finished(processes)
    runs = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for key, count in {"lr/default": 20, "lr/encoder": 20, "train_loss": 20, "val_loss": 4, "val_acc": 4}.items():
            logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(logged) == len(set(logged)) == count, (run.info.run_name, key, sorted(logged))


def test_two_clones_share_one_postgresql_study_and_one_tracking_server(postgres, team_server, tmp_path):
    """Workers on two machines (two clones of one repository) run one study: PostgreSQL holds it,
    the team server holds the runs. Each trial runs exactly once, in one of the clones."""
    import optuna
    import yaml

    from kiwi_pipe_optim.integrations.study.storage import normalized

    uri, _ = team_server
    storage = postgres.database("optuna")
    origin = make_repo(tmp_path / "origin", {"mlflow": {"experiment_name": "swept"}})
    (origin / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "team", "metric": "val_loss", "trials": 3, "seed": 3, "pruner": "none",
        "space": {"optimizer.learning_rate": {"log_uniform": [1.0e-3, 1.0e-1]}}}))
    sh(["git", "add", "sweep.yaml"], origin)
    sh(["git", "commit", "-q", "-m", "sweep"], origin)
    clones = []
    for name in ("a", "b"):
        sh(["git", "clone", "-q", str(origin), str(tmp_path / name)], tmp_path)
        clones.append(tmp_path / name)
    workers = [subprocess.Popen([str(BIN / "kiwi-optim"), "sweep", "--storage", storage], cwd=clone,
                                env=tool_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for clone in clones]
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0 and "Traceback" not in out, out[-3000:]

    trials = optuna.load_study(study_name="team", storage=normalized(storage)).get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    ran = [set(sh(["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps/"], clone).stdout.split())
           for clone in clones]
    assert ran[0] | ran[1] == {f"team-{n}" for n in range(3)} and not ran[0] & ran[1]  # each trial once
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("swept").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kiwi.sweep") == "team"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" and r.info.artifact_uri.startswith("mlflow-artifacts:") for r in children)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
