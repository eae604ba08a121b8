"""Two CPU processes under Lightning DDP (gloo): one MLflow run, the single-process LR curve."""

import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import sh

pytestmark = pytest.mark.e2e


def lr_histories(repo):
    c = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    [run] = runs
    assert run.info.status == "FINISHED"
    out = {}
    for group in ("default", "encoder"):
        history = c.get_metric_history(run.info.run_id, f"lr/{group}")
        out[group] = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    return run, out


def test_ddp_on_two_cpu_processes_logs_once_with_the_single_process_curve(repo_factory):
    # 320 training images split over 2 processes: 160 each, 3 batches of 64, 2 epochs -> 6 steps
    ddp = repo_factory({"trainer": {"devices": 2, "strategy": "ddp", "accelerator": "cpu"}}, name="ddp")
    result = sh([sys.executable, "stages/train.py"], ddp)
    assert result.stdout.count('"steps": 6') == 1  # only rank 0 reports
    run, histories = lr_histories(ddp)
    assert run.data.params["resolved.training_steps"] == "6"
    assert run.data.params["trainer.devices"] == "2"
    assert [s for s, _ in histories["default"]] == list(range(6))

    # one process, 160 training images: the same 6 optimizer steps
    single = repo_factory({"data": {"init_args": {"limit": 200}}}, name="single")
    sh([sys.executable, "stages/train.py"], single)
    single_run, single_histories = lr_histories(single)
    assert single_run.data.params["resolved.training_steps"] == "6"
    assert histories == single_histories
