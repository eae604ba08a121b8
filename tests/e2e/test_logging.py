"""Every value a user's module logs reaches MLflow, live within an epoch, through our Lightning
logger; DVC draws the LR of every param group; the logger works with a plain Trainer too.

The stage and the Trainer run in this process: what is tested is what reaches MLflow and the
files, not the interpreter (test_users runs a pytorch_lightning project through ``dvc repro``).
"""

import json
import shutil
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.tracking.store import client_for
from tests.e2e.conftest import sh, stage_in_process, template

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


def test_every_self_log_metric_reaches_mlflow(repo_factory):
    repo = repo_factory({"model": {"class_path": "user_metrics:Metrics", "init_args": {}},
                         "trainer": {"log_every_n_steps": 1}})
    (repo / "user_metrics.py").write_text(METRICS_MODULE)
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    c, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.tags["kiwi.lightning_flavor"] == "pytorch_lightning"
    every_step, every_epoch = list(range(10)), [4, 9]  # 5 steps an epoch, 2 epochs
    for key in ("lr/default", "train_loss", "train_acc_step", "zz_custom/ratio"):
        assert steps(c, run, key) == every_step, key
    for key in ("train_acc_epoch", "f1_macro"):
        assert steps(c, run, key) == every_epoch, key
    metrics = json.loads((repo / "metrics.json").read_text())
    assert {"train_acc_epoch", "f1_macro", "zz_custom/ratio", "train_loss"} <= set(metrics)


SLOW_MODULE = '''
import time

from kiwi_pipe_optim.examples.digits import DigitsMLP


class SlowDigits(DigitsMLP):
    """At least 10 ms a step, however fast the machine: the epoch lasts many flush intervals."""

    def training_step(self, batch, batch_idx):
        time.sleep(0.01)
        return super().training_step(batch, batch_idx)
'''


@pytest.mark.xdist_group("serial")  # a starved watcher would see the epoch only once it has ended
def test_values_are_live_within_a_long_epoch(repo_factory):
    """One epoch of 200 steps (batches of 1), 2 s at least, flushed every 0.2 s: the store shows
    part of it before it ends, while the stage trains in this thread and another one watches."""
    repo = repo_factory({"data": {"init_args": {"limit": 250, "batch_size": 1}},
                         "model": {"class_path": "user_slow:SlowDigits", "init_args": {"hidden": 16}},
                         "trainer": {"max_epochs": 1}, "mlflow": {"flush_interval_s": 0.2},
                         "checkpoint": {"every_n_steps": 0}})
    (repo / "user_slow.py").write_text(SLOW_MODULE)
    seen, done = [], threading.Event()

    def watch():
        c = client_for(f"sqlite:///{repo / 'mlflow.db'}")
        experiment = None
        while not done.is_set():
            time.sleep(0.05)
            experiment = experiment or c.get_experiment_by_name("kiwi-pipe-optim")
            found = c.search_runs([experiment.experiment_id]) if experiment else []
            if found and "val_loss" not in found[0].data.metrics:
                seen.append(len(c.get_metric_history(found[0].info.run_id, "lr/default")))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = stage_in_process(repo)
    finally:
        done.set()
        watcher.join(timeout=30)
    assert result.returncode == 0, result.stderr[-3000:]
    partial = [n for n in seen if 0 < n < 200]
    assert partial, f"no partial history seen while the epoch ran: {seen}"
    c, run = only_run(repo)
    assert steps(c, run, "lr/default") == list(range(200))


def test_dvc_plots_draw_every_param_group(repo_factory):
    rules = [{"name": "embed", "match": "encoder.embed", "lr": 0.001}, {"name": "head", "match": "head", "lr_scale": 2}]
    repo = repo_factory({"optimizer": {"encoder_learning_rate": None, "param_groups": rules}})
    trained = stage_in_process(repo)  # the train stage's own command: DVC reads what it wrote
    assert trained.returncode == 0, trained.stderr[-3000:]
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], repo).stdout)
    drawn = {name for name, plots in shown["data"].items() if name.startswith("plots/lr/") and plots}
    assert drawn == {"plots/lr/embed.csv", "plots/lr/head.csv", "plots/lr/default.csv"}
    for name in drawn:
        [plot] = shown["data"][name]
        values = plot["content"]["data"]["values"]
        assert [int(v["step"]) for v in values] == list(range(10)), name


def test_the_logger_with_a_plain_trainer_outside_the_stage(tmp_path, monkeypatch):
    """Under the other import name, lightning.pytorch, and with no stage around it."""
    import lightning.pytorch as L
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    from kiwi_pipe_optim.integrations.lightning import lr_monitor
    from kiwi_pipe_optim.integrations.logger import mlflow_logger

    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("my_loss", out["loss"])
            return out

    monkeypatch.chdir(tmp_path)  # where MLflow and Lightning write what they write
    shutil.copy(template() / "mlflow.db", tmp_path / "plain.db")  # an empty store, its migrations done
    trainer = L.Trainer(max_steps=6, logger=mlflow_logger(f"sqlite:///{tmp_path / 'plain.db'}", run_name="plain"),
                        callbacks=[lr_monitor()], log_every_n_steps=1, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Logged(), BoringDataModule())
    c = MlflowClient(f"sqlite:///{tmp_path / 'plain.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "plain"
    for key in ("lr/group0", "train_loss", "my_loss"):
        assert steps(c, run, key) == list(range(6)), key
