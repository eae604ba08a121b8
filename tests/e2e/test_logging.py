"""Every value a user's module logs reaches MLflow, live within an epoch, through our Lightning
logger; DVC draws the LR of every param group; the logger works with a plain Trainer too."""

import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.store import client_for
from tests.e2e.conftest import sh, tool_env

pytestmark = pytest.mark.e2e

METRICS_MODULE = '''
import pytorch_lightning as pl
import torch
from torch import nn


class Metrics(pl.LightningModule):
    """Written against pytorch_lightning; logs what real modules log."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=True, on_epoch=True)
        self.log("zz_custom/ratio", loss / (loss + 1))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("f1_macro", (self(x).argmax(1) == y).float().mean())
'''


def client(repo):
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def only_run(repo):
    c = client(repo)
    [run] = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    return c, run


def steps(c, run, key):
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, key))


def test_every_self_log_metric_reaches_mlflow_through_dvc_repro(repo_factory):
    repo = repo_factory({"model": {"class_path": "user_metrics:Metrics", "init_args": {}},
                         "trainer": {"log_every_n_steps": 1}})
    (repo / "user_metrics.py").write_text(METRICS_MODULE)
    sh(["git", "add", "user_metrics.py"], repo)
    sh(["git", "commit", "-qm", "metrics module"], repo)
    sh(["dvc", "repro"], repo)
    c, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.tags["kiwi.lightning_flavor"] == "pytorch_lightning"
    every_step, every_epoch = list(range(10)), [4, 9]  # 5 steps an epoch, 2 epochs
    for key in ("lr/default", "train_loss", "train_acc_step", "zz_custom/ratio"):
        assert steps(c, run, key) == every_step, key
    for key in ("train_acc_epoch", "f1_macro"):
        assert steps(c, run, key) == every_epoch, key
    metrics = json.loads((repo / "metrics.json").read_text())
    assert {"train_acc_epoch", "f1_macro", "zz_custom/ratio", "train_loss"} <= set(metrics)


def test_values_are_live_within_a_long_epoch(repo_factory):
    """One epoch of 1,438 steps (digits, batches of 1): the store shows part of it before it ends."""
    repo = repo_factory({"data": {"init_args": {"limit": None, "batch_size": 1}},
                         "trainer": {"max_epochs": 1}, "mlflow": {"flush_interval_s": 1},
                         "checkpoint": {"every_n_steps": 0}})
    process = subprocess.Popen([sys.executable, "stages/train.py"], cwd=repo, env=tool_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.time() + 240
    try:
        while process.poll() is None and time.time() < deadline:
            time.sleep(0.3)
            if not (repo / "mlflow.db").exists():
                continue
            c = client_for(f"sqlite:///{repo / 'mlflow.db'}")  # waits while the stage creates the store
            experiment = c.get_experiment_by_name("kiwi-pipe-optim")
            found = c.search_runs([experiment.experiment_id]) if experiment else []
            if found and "val_loss" not in found[0].data.metrics:
                seen.append(len(c.get_metric_history(found[0].info.run_id, "lr/default")))
    finally:
        _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]
    partial = [n for n in seen if 0 < n < 1438]
    assert partial, f"no partial history seen while the epoch ran: {seen}"
    c, run = only_run(repo)
    assert steps(c, run, "lr/default") == list(range(1438))


def test_dvc_plots_draw_every_param_group(repo_factory):
    rules = [{"name": "embed", "match": "encoder.embed", "lr": 0.001}, {"name": "head", "match": "head", "lr_scale": 2}]
    repo = repo_factory({"optimizer": {"encoder_learning_rate": None, "param_groups": rules}})
    sh(["dvc", "repro", "train"], repo)
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)
    drawn = {name for name, plots in shown["data"].items() if name.startswith("plots/lr/") and plots}
    assert drawn == {"plots/lr/embed.csv", "plots/lr/head.csv", "plots/lr/default.csv"}
    for name in drawn:
        [plot] = shown["data"][name]
        values = plot["content"]["data"]["values"]
        assert [int(v["step"]) for v in values] == list(range(10)), name


def test_the_logger_with_a_plain_trainer_outside_the_stage(tmp_path):
    code = f'''
import lightning.pytorch as L
import torch
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from kiwi_pipe_optim.integrations.lightning import lr_monitor
from kiwi_pipe_optim.integrations.logger import mlflow_logger


class Logged(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("my_loss", out["loss"])
        return out


trainer = L.Trainer(max_steps=6, logger=mlflow_logger("sqlite:///{tmp_path / 'plain.db'}", run_name="plain"),
                    callbacks=[lr_monitor()], log_every_n_steps=1, enable_progress_bar=False,
                    enable_checkpointing=False, limit_val_batches=0)
trainer.fit(Logged(), BoringDataModule())
'''
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    c = MlflowClient(f"sqlite:///{tmp_path / 'plain.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "plain"
    for key in ("lr/group0", "train_loss", "my_loss"):
        assert steps(c, run, key) == list(range(6)), key
