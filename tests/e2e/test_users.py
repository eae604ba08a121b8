"""What users bring, through the pipeline's ``schedule`` and ``train``: Lightning's own demo
classes, and a reduce-on-plateau experiment. Both run the stages' own commands in this process,
what they prove being the planned curve against the one trained (DVC's part is proven in
``test_pipeline.py``). A project of the
user's own, written against ``pytorch_lightning`` with no ``batch_size`` argument, goes through
``kiwi-optim init`` and DVC in ``test_installed.py``.
"""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import kiwi_optim_in_process, stage_in_process

pytestmark = pytest.mark.e2e


def only_run(repo):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    return client, run


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]




def test_lightnings_boring_model_and_data_module_planned_and_trained(repo_factory):
    repo = repo_factory({
        "data": {"class_path": "lightning.pytorch.demos.boring_classes:BoringDataModule"},
        "model": {"class_path": "lightning.pytorch.demos.boring_classes:BoringModel"},
        "optimizer": {"class_name": "adamw", "learning_rate": 0.01, "warmup_steps": 0.1, "weight_decay": 0.01,
                      "scheduler": "cosine", "encoder_learning_rate": None},
    })
    # the schedule stage's command (its PNG aside), then the train stage's
    planned = kiwi_optim_in_process(repo, "preview", "params.yaml", "--csv", "plots/schedule.csv")
    assert planned.returncode == 0, planned.stderr[-3000:]
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BoringModel.configure_optimizers is replaced by the params' optimizer section" in result.stderr
    steps = json.loads((repo / "metrics.json").read_text())["steps"]
    assert steps == 128  # BoringDataModule: 64 examples, batches of 1, 2 epochs
    client, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.params["resolved.schedule"] == "cosine"
    logged = history(client, run, "lr/default")
    assert [s for s, _ in logged] == list(range(steps))
    planned = (repo / "plots" / "schedule.csv").read_text().splitlines()
    assert planned[0] == "step,default" and len(planned) == steps + 1
    assert [float(line.split(",")[1]) for line in planned[1:]] == pytest.approx([v for _, v in logged], rel=1e-12)


def test_a_plateau_experiment_planned_and_trained(repo_factory):
    repo = repo_factory({"trainer": {"max_epochs": 6}, "optimizer": {
        "class_name": "sgd", "learning_rate": 2.0, "learning_rate_decay": 0.5, "learning_rate_decay_start": 0}})
    planned = kiwi_optim_in_process(repo, "preview", "params.yaml", "--plots-dir", "plots/schedule")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "the LR follows val_loss" not in (repo / "plots" / "schedule" / "default.csv").read_text()  # a CSV, not a note
    trained = stage_in_process(repo)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.params["resolved.schedule"] == "plateau"
    val_loss = history(client, run, "val_loss")
    lr = dict(history(client, run, "lr/default"))
    steps_per_epoch = len(lr) // len(val_loss)
    # torch's ReduceLROnPlateau fed the logged metric gives the LR of every epoch after the first
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    expected = [2.0]
    for _, value in val_loss[:-1]:
        reference.step(value)
        expected.append(optimizer.param_groups[0]["lr"])
    assert [lr[epoch * steps_per_epoch] for epoch in range(len(val_loss))] == pytest.approx(expected, rel=1e-12)
    assert len(set(expected)) > 1, "the run never reduced its LR: the comparison above proves little"
