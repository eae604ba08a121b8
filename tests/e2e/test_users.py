"""What users bring, through the pipeline's ``schedule`` and ``train``: Lightning's own demo
classes, a module and data module written against ``pytorch_lightning`` that take no
``batch_size`` argument, and a reduce-on-plateau experiment.

The last two go through DVC (``dvc repro``, ``dvc exp run``), each stage in its own interpreter,
where only ``pytorch_lightning`` is imported; the demo classes run the stages' own commands in
this process, what they prove being the planned curve against the one trained.
"""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import kiwi_optim_in_process, sh, stage_in_process

pytestmark = pytest.mark.e2e

USER_PROJECT = '''
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SETTINGS = {"batch": 50, "examples": 300}  # the batch size lives in the project's own settings


class Digits(pl.LightningDataModule):
    def setup(self, stage):
        x, y = load_digits(return_X_y=True)
        n = SETTINGS["examples"]
        self.train = TensorDataset(torch.tensor(x[:n], dtype=torch.float32) / 16, torch.tensor(y[:n]))
        self.val = TensorDataset(torch.tensor(x[n:n + 100], dtype=torch.float32) / 16, torch.tensor(y[n:n + 100]))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=SETTINGS["batch"], shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=100)


class Classifier(pl.LightningModule):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
'''


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


def test_a_pytorch_lightning_project_without_batch_size_through_dvc_repro(repo_factory):
    repo = repo_factory({
        "data": {"class_path": "user_project:Digits"},
        "model": {"class_path": "user_project:Classifier", "init_args": {"hidden": 16}},
    })
    (repo / "user_project.py").write_text(USER_PROJECT)
    sh(["git", "add", "user_project.py"], repo)
    sh(["git", "commit", "-qm", "user project"], repo)
    result = sh(["dvc", "repro"], repo)
    assert "schedule: linear, 12 optimizer steps (300 examples, batch 50" in result.stdout
    client, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.tags["kiwi.lightning_flavor"] == "pytorch_lightning"
    for group in ("encoder", "default"):
        assert [s for s, _ in history(client, run, f"lr/{group}")] == list(range(12)), group


def test_a_plateau_experiment_through_dvc_exp_run(repo_factory):
    repo = repo_factory({"trainer": {"max_epochs": 6}})
    sh(["dvc", "exp", "run", "-S", "optimizer.class_name=sgd", "-S", "optimizer.learning_rate=2.0",
        "-S", "+optimizer.learning_rate_decay=0.5", "-S", "+optimizer.learning_rate_decay_start=0"], repo)
    client, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.params["resolved.schedule"] == "plateau"
    assert "the LR follows val_loss" not in (repo / "plots" / "schedule.csv").read_text()  # a CSV, not a note
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
