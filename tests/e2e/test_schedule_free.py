"""A schedule-free optimizer (Meta's ``schedulefree``) through the train stage: the run ends
FINISHED, validation sees the averaged weights exactly as the package's README's hand-switched
loop does, and a kill -9 then a rerun resumes with bitwise curves. (DVC around the stage is
tested in test_pipeline.py and test_resume.py; nothing of it depends on the optimizer.)

``pytorch-optimizer``'s ScheduleFreeAdamW switches modes through the same code; its validation on
the average is checked in process by tests/test_what_is_logged.py."""

import importlib
import shutil
import sys

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import sh, stage_in_process

pytestmark = pytest.mark.e2e
pytest.importorskip("schedulefree")
CLASS_NAME = "schedulefree:AdamWScheduleFree"

USER = '''
import os
import signal

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Pairs(L.LightningDataModule):
    """40 training and 16 validation examples, in order: no sampler draws from a generator."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.x = torch.randint(0, 10, (56, 4), generator=g)
        self.y = torch.randint(0, 2, (56,), generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x[:40], self.y[:40]), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[40:], self.y[40:]), batch_size=8)


class Tiny(L.LightningModule):
    """No dropout, no norm: only the optimizer's mode changes what validation sees. Killed with
    SIGKILL once at optimizer step $DIE_AT_STEP."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))

    def training_step(self, batch, _):
        at = os.environ.get("DIE_AT_STEP")
        if at and self.global_step == int(at) and not os.path.exists("died"):
            open("died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))
'''
EPOCHS = 4  # 5 steps an epoch: 20 steps
KEYS = ("lr/default", "train_loss", "val_loss")


def make(repo_factory, name, class_name, every_n_steps=5):
    repo = repo_factory({
        "data": {"class_path": "user_sf:Pairs"}, "model": {"class_path": "user_sf:Tiny"},
        "trainer": {"max_epochs": EPOCHS},
        "optimizer": {"class_name": class_name, "learning_rate": 0.01, "weight_decay": 0.0, "warmup_steps": None,
                      "encoder_learning_rate": None},
        "checkpoint": {"every_n_steps": every_n_steps}}, name=name)
    (repo / "user_sf.py").write_text(USER)
    sh(["git", "add", "user_sf.py"], repo)
    sh(["git", "commit", "-qm", "user classes"], repo)
    return repo


def hand_loop(repo, class_name):
    """What the package's README says: ``train()`` before training, ``eval()`` before evaluating."""
    import lightning.pytorch as L

    sys.path.insert(0, str(repo))
    try:
        user = importlib.import_module("user_sf")
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("user_sf", None)
    module_name, _, name = class_name.partition(":")
    L.seed_everything(0, workers=True, verbose=False)
    data = user.Pairs()
    model = user.Tiny()
    optimizer = getattr(importlib.import_module(module_name), name)(model.parameters(), lr=0.01, weight_decay=0.0)
    val = []
    for _ in range(EPOCHS):
        optimizer.train()
        for x, y in data.train_dataloader():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        optimizer.eval()
        with torch.no_grad():
            losses = [torch.nn.functional.cross_entropy(model(x), y) for x, y in data.val_dataloader()]
        val.append(float(torch.stack(losses).mean()))
    return val


def run_of(repo, experiment="kiwi-pipe-optim"):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run, {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                         key=lambda m: m.step)] for key in KEYS}


def test_schedule_free_through_the_stage_validates_the_average_and_resumes_bitwise(repo_factory, tmp_path):
    straight = make(repo_factory, "straight", CLASS_NAME)
    trained = stage_in_process(straight)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run, curves = run_of(straight)
    assert run.info.status == "FINISHED"
    assert [v for _, v in curves["val_loss"]] == pytest.approx(hand_loop(straight, CLASS_NAME), rel=1e-5)

    # saved at epoch ends (a plain DataLoader resumes at an epoch's start; see resumable_loader); a
    # save switches to eval and back, as the straight run did at the same steps. A copy of the
    # straight repository with only the mlflow group changed (a fresh experiment); the kill needs a
    # process of its own, the resume runs in this one (DVC's part of a resume: test_resume.py).
    killed = shutil.copytree(straight, tmp_path / "killed", symlinks=True)
    params = yaml.safe_load((killed / "params.yaml").read_text())
    params["mlflow"]["experiment_name"] = "resumed"
    (killed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    crashed = sh([sys.executable, "stages/train.py"], killed, check=False, DIE_AT_STEP="8")
    assert crashed.returncode != 0 and (killed / "died").exists()
    resumed = stage_in_process(killed, DIE_AT_STEP="8")
    assert resumed.returncode == 0 and "resuming from step 5" in resumed.stderr, resumed.stderr[-3000:]
    run, resumed_curves = run_of(killed, "resumed")
    assert run.info.status == "FINISHED"
    assert resumed_curves == curves  # bitwise: the same eval/train switches at the same steps
