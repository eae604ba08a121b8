"""`kiwi-optim sweep` end to end: real Optuna, real `dvc exp run --temp`, real Lightning fits and
a real MLflow store, on the bundled digits task (10 steps a trial).

A sweep of 6 trials 2 at a time; a pruner that prunes; a driver killed with SIGKILL and run again.
The many-machines case (PostgreSQL study, team server) is in test_team_server.py."""

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import BIN, make_repo, sh, tool_env

# each sweep runs up to two trials at once: on the worker of the tests that must not share their CPU
# (a server killed and restarted in seconds), never beside them
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serial")]

SPACE = {"optimizer.learning_rate": {"log_uniform": [1.0e-4, 1.0e-1]},
         "optimizer.class_name": {"choice": ["adamw", "muon"]},
         "optimizer.warmup_steps": {"uniform": [0.0, 0.2]}}


def sweep_repo(path, name, trials, **extra):
    repo = make_repo(path)
    (repo / "sweep.yaml").write_text(yaml.safe_dump({"name": name, "metric": "val_loss", "direction": "minimize",
                                                     "trials": trials, "seed": 7, "space": SPACE, **extra}))
    return repo


def study_of(repo, name):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(repo / ".kiwi-pipe-optim" / "sweeps" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_runs(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kiwi-pipe-optim")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def experiments(repo):
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    return {exp["name"]: exp for entry in shown for exp in (entry.get("experiments") or [])
            for exp in [exp["revs"][0]] if exp.get("name")}


def _cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _is_python(pid):
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("python")
    except OSError:
        return False


def test_six_trials_two_at_a_time(tmp_path):
    repo = sweep_repo(tmp_path / "repo", "lr-search", 6)
    done = sh(["kiwi-optim", "sweep", "-j", "2"], repo, timeout=600)
    assert "Traceback" not in done.stderr
    study = study_of(repo, "lr-search")
    trials = study.get_trials()
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}

    exps = experiments(repo)
    assert {f"lr-search-{n}" for n in range(6)} <= set(exps), sorted(exps)

    client, runs = mlflow_runs(repo)
    parents = [r for r in runs if r.data.tags.get("kiwi.sweep") == "lr-search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    for t in trials:  # what Optuna recorded is what MLflow shows, run by run
        run = by_trial[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.data.tags["optuna.study"] == "lr-search"
        assert run.data.tags["dvc.exp_name"] == f"lr-search-{t.number}"
        assert run.info.run_id == t.user_attrs["kiwi.mlflow_run_id"]
        assert float(run.data.params["optimizer.learning_rate"]) == pytest.approx(t.params["optimizer.learning_rate"])
        assert run.data.params["optimizer.class_name"] == t.params["optimizer.class_name"]

    best = study.best_trial
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.value)
    assert f"dvc exp apply lr-search-{best.number}" in done.stderr

    shown = sh(["kiwi-optim", "sweep", "--show"], repo)
    assert all(f"lr-search-{n}" in shown.stdout for n in range(6))
    for png in ("history.png", "parallel.png", "importances.png"):
        assert (repo / "sweeps" / "lr-search" / png).read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/history.png", "sweep/trials.csv"} <= logged
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    # the best trial, brought back and trained again, gives its metric again
    sh(["dvc", "exp", "apply", f"lr-search-{best.number}"], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["optimizer"]["class_name"] == \
        best.params["optimizer.class_name"]
    sh(["dvc", "repro", "--force", "train"], repo, timeout=300)
    again = json.loads((repo / "metrics.json").read_text())["val_loss"]
    assert again == pytest.approx(best.value, rel=1e-4)


def test_a_pruned_trial_keeps_its_experiment_and_whole_outputs(tmp_path):
    repo = sweep_repo(tmp_path / "repo", "pruned", 1, pruner={"threshold": {"upper": 0.5}})
    done = sh(["kiwi-optim", "sweep"], repo, timeout=300)
    (trial,) = study_of(repo, "pruned").get_trials()
    assert trial.state.name == "PRUNED", done.stderr
    assert trial.user_attrs["kiwi.pruned_at_step"] == 5  # the first validation, after epoch 1 of 2

    _, runs = mlflow_runs(repo)
    (child,) = [r for r in runs if r.data.tags.get("optuna.trial") == "0"]
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "FINISHED"

    assert "pruned-0" in experiments(repo)
    ref = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()[0]
    metrics = json.loads(sh(["git", "show", f"{ref}:metrics.json"], repo).stdout)  # whole JSON, as written
    assert metrics["steps"] == 5 and metrics["val_loss"] > 0.5
    curve = sh(["git", "show", f"{ref}:plots/loss.csv"], repo).stdout.splitlines()
    assert curve[0].startswith("step") and len(curve) == 1 + 5
    assert all(len(line.split(",")) == len(curve[0].split(",")) for line in curve)


def _running(repo, name, number, started):
    """Trial ``number`` once its stage has opened its MLflow run, and that stage's pid."""
    journal = repo / ".kiwi-pipe-optim" / "sweeps" / f"{name}.journal"
    deadline = time.time() + 240
    while True:
        assert started.poll() is None and time.time() < deadline, "the sweep ended before trial %d ran" % number
        trials = study_of(repo, name).get_trials() if journal.exists() else []
        if len(trials) > number and "kiwi.mlflow_run_id" in trials[number].user_attrs:
            copy = trials[number].user_attrs["kiwi.workspace_copy"]  # the trial's own clone of the workspace
            stages = subprocess.run(["pgrep", "-f", "kiwi-optim train"], capture_output=True, text=True).stdout.split()
            mine = [int(p) for p in stages if _cwd(p).startswith(copy) and _is_python(p)]  # not `sh -c`
            if mine:
                return trials[number], mine[0]
        time.sleep(0.1)


def test_a_killed_trial_and_a_killed_driver_lose_nothing_and_run_nothing_twice(tmp_path):
    """SIGKILL to trial 0's stage: it is failed, its MLflow run KILLED, its values asked again as
    trial 1. Then SIGKILL to the driver during trial 1, and the same command again: it waits for
    trial 1's `dvc exp run`, takes its result, runs trial 2, and the study ends with its 2 trials."""
    repo = sweep_repo(tmp_path / "repo", "killed", 2)
    # SHELL=/bin/sh: DVC runs the stage under a shell that stays its parent (dash does not exec)
    driver = subprocess.Popen([str(BIN / "kiwi-optim"), "sweep"], cwd=repo, env=tool_env(SHELL="/bin/sh"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, stage = _running(repo, "killed", 0, driver)
    os.kill(stage, signal.SIGKILL)
    retry, _ = _running(repo, "killed", 1, driver)
    os.kill(driver.pid, signal.SIGKILL)  # trial 1's `dvc exp run` goes on, orphaned
    driver.wait()

    again = sh(["kiwi-optim", "sweep"], repo, timeout=600)
    assert "left by a driver that stopped" in again.stderr, again.stderr
    trials = study_of(repo, "killed").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], again.stderr
    assert trials[1].user_attrs["kiwi.retry_of"] == 0 and trials[1].params == first.params
    names = [t.user_attrs["kiwi.dvc_exp"] for t in trials]
    assert names == ["killed-0", "killed-1", "killed-2"]  # no trial number ran twice
    exps = experiments(repo)
    assert {"killed-1", "killed-2"} <= set(exps) and "killed-0" not in exps
    client, runs = mlflow_runs(repo)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = client.get_run(first.user_attrs["kiwi.mlflow_run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.state"] == "FAIL"
    trial_runs = [r.data.tags["optuna.trial"] for r in runs if "optuna.trial" in r.data.tags]
    assert sorted(trial_runs) == ["0", "1", "2"]
