"""The stage script run directly: user modules of either Lightning name, failures, bad params.

Where DVC or the interpreter is not what a test is about, the stage runs in this process
(``stage_in_process``): a ``python stages/train.py`` costs seconds of start-up and imports each
time. The bad-params test keeps the real script, for its exit status and its lines without a
traceback; the whole-``dvc repro`` test keeps DVC, whose three stages share what was shown.
"""

import json
import shutil
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import runs_in, sh, stage_in_process

pytestmark = pytest.mark.e2e

PL_MODULE = '''
import pytorch_lightning as pl
import torch
from torch import nn


class PlainDigits(pl.LightningModule):
    """A user's module written against pytorch_lightning, without configure_optimizers."""

    def __init__(self, hidden: int = 32, explode_at: int = -1):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)
        self.explode_at = explode_at

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        if self.global_step == self.explode_at:
            raise RuntimeError("boom at step %d" % self.global_step)
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
'''


def stage(repo, *args, **env):
    return sh([sys.executable, "stages/train.py", *args], repo, check=False, **env)




def only_run(repo):
    c = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    return c, run


def test_pytorch_lightning_user_module_with_two_groups(repo_factory):
    repo = repo_factory({
        "model": {"class_path": "user_two_groups:PlainDigits", "init_args": {"hidden": 16}},
        "optimizer": {"class_name": "sgd", "learning_rate": 0.1, "encoder_learning_rate": 0.01,
                      "scheduler": "cosine", "warmup_steps": 2},
    })
    (repo / "user_two_groups.py").write_text(PL_MODULE)
    result = stage_in_process(repo)  # in a fresh interpreter: test_users' pytorch_lightning project
    assert result.returncode == 0, result.stderr[-3000:]
    c, run = only_run(repo)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kiwi.lightning_flavor"] == "pytorch_lightning"
    encoder = sorted(c.get_metric_history(run.info.run_id, "lr/encoder"), key=lambda m: m.step)
    default = sorted(c.get_metric_history(run.info.run_id, "lr/default"), key=lambda m: m.step)
    assert len(encoder) == len(default) == 10
    assert encoder[4].value == pytest.approx(default[4].value / 10)
    assert default[2].value == pytest.approx(0.1)  # warm-up done, cosine starts at the peak


def test_training_failure_marks_the_run_failed_and_writes_no_output(repo_factory):
    repo = repo_factory({"model": {"class_path": "user_explodes:PlainDigits", "init_args": {"explode_at": 3}}})
    (repo / "user_explodes.py").write_text(PL_MODULE)
    # main() lets the user's error through: the script dies of it with its traceback, exit 1
    with pytest.raises(RuntimeError, match="^boom at step 3$"):
        stage_in_process(repo)
    c, run = only_run(repo)
    assert run.info.status == "FAILED"
    assert run.data.tags["kiwi.error"] == "RuntimeError: boom at step 3"
    assert [m.step for m in sorted(c.get_metric_history(run.info.run_id, "lr/default"), key=lambda m: m.step)] == [0, 1, 2]
    assert not (repo / "metrics.json").exists() and not (repo / "plots").exists()


def test_bad_params_exit_2_before_mlflow_with_every_problem(repo_factory):
    repo = repo_factory({
        "optimizer": {"class_name": "adamx", "learning_rate": "fast"},
        "trainer": {"max_epoch": 3},
        "model": {"init_args": {"d_modle": 8}},
    })
    (repo / "metrics.json").write_text('{"keep": true}\n')
    result = stage(repo)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert [line.split(": ")[1] for line in lines] == ["optimizer.class_name", "optimizer.learning_rate"]
    assert runs_in(repo) == []
    assert json.loads((repo / "metrics.json").read_text()) == {"keep": True}

    repo2 = repo_factory({"trainer": {"max_epoch": 3}, "model": {"init_args": {"d_modle": 8}}}, name="repo2")
    result = stage_in_process(repo2)  # the script's exit and lines are proven above
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = (repo2 / "params.yaml").read_text().splitlines()
    where = {key: f"params.yaml:{next(i for i, line in enumerate(lines, 1) if line.strip().startswith(key + ':'))}: "
             for key in ("max_epoch", "d_modle")}
    assert result.stderr.strip().splitlines() == [where["max_epoch"] +
        "trainer.max_epoch: not an argument of lightning.pytorch.Trainer (did you mean 'max_epochs'?)",
        where["d_modle"] + "model.init_args.d_modle: not an argument of DigitsTransformer (did you mean 'd_model'?); it accepts: "
        "d_model, nhead, num_layers, dim_feedforward, dropout, num_classes",
    ]
    assert runs_in(repo2) == []


def test_tracking_uri_from_environment_and_logging_off(repo_factory, tmp_path):
    repo = repo_factory()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(repo / "mlflow.db", elsewhere / "mlflow.db")  # an empty store, its migrations done
    result = stage_in_process(repo, MLFLOW_TRACKING_URI=f"sqlite:///{elsewhere / 'mlflow.db'}")
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = runs_in(elsewhere)
    assert run.info.status == "FINISHED" and runs_in(repo) == []

    off = repo_factory({"mlflow": {"enabled": False}}, name="off")
    result = stage_in_process(off)
    assert result.returncode == 0 and runs_in(off) == []
    assert len((off / "plots" / "lr" / "default.csv").read_text().splitlines()) == 11


def test_two_runs_have_bitwise_identical_histories(repo_factory):
    """The seed alone makes two runs equal: the second, in the same process and repository as the
    first (torch warmed up, the first's outputs there), must not differ in one bit."""
    repo = repo_factory()
    for _ in range(2):
        result = stage_in_process(repo)
        assert result.returncode == 0, result.stderr[-3000:]
    c = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    first, second = c.search_runs([c.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    for key in ("lr/default", "lr/encoder", "train_loss", "val_loss"):
        histories = [[(m.step, m.value) for m in sorted(c.get_metric_history(r.info.run_id, key), key=lambda m: m.step)]
                     for r in (first, second)]
        assert histories[0] == histories[1] and histories[0], key
    assert first.data.tags["params.sha256"] == second.data.tags["params.sha256"]


def test_a_finding_is_printed_once_and_the_kernel_used_is_logged(repo_factory):
    repo = repo_factory({"optimizer": {"class_name": "sgd", "learning_rate": 0.1, "learning_rate_decay": 0.5,
                                       "warmup_steps": 10}})
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (repo / "params.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("warmup_steps:"))
    assert [x for x in result.stderr.splitlines() if "warmup_steps" in x] == [
        f"kiwi-pipe-optim: WARNING: params.yaml:{line}: warning: optimizer.warmup_steps: 10 is not used by the "
        "plateau schedule; remove it or choose a schedule with warm-up: constant, cosine, cosine_restarts, "
        "exponential, inverse_sqrt, linear, multistep, noam, one_cycle, polynomial, step, wsd"]
    _, run = only_run(repo)
    assert run.data.params["resolved.schedule"] == "plateau"
    assert run.data.params["resolved.implementation"] == "fused"  # auto: torch's fused SGD exists on CPU


EPOCH_LOSS = '''
from torch.nn import functional as F

from kiwi_pipe_optim.examples.digits import DigitsMLP


class EpochLossDigits(DigitsMLP):
    """Logs its own train_loss once an epoch (Lightning's epoch mean), and returns 3x that loss."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return 3 * loss
'''


def test_a_module_logging_its_own_train_loss_keeps_it_and_no_epoch_limit_runs_max_steps(repo_factory):
    """max_epochs: -1 is Lightning's "no epoch limit": max_steps ends the run."""
    repo = repo_factory({"model": {"class_path": "user_epoch:EpochLossDigits", "init_args": {"hidden": 16}},
                         "trainer": {"max_epochs": -1, "max_steps": 50}})
    (repo / "user_epoch.py").write_text(EPOCH_LOSS)
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["steps"] == 50
    c, run = only_run(repo)
    theirs = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "train_loss"))
    ours = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "kiwi/train_loss"))
    assert len(theirs) == 10 and len(ours) == 50  # 5 batches an epoch: 10 epochs
    assert metrics["train_loss"] == pytest.approx(theirs[-1][1]) and metrics["kiwi/train_loss"] == pytest.approx(ours[-1][1])
    assert all(value > 2 * theirs[0][1] for _, value in ours[:5])  # ours is the returned 3x loss
    assert (repo / "plots/loss.csv").read_text().splitlines()[1].startswith("0,")


def test_fused_kernels_give_way_to_foreach_when_clipping_under_mixed_precision(repo_factory):
    repo = repo_factory({"trainer": {"precision": "bf16-mixed", "gradient_clip_val": 1.0, "max_epochs": 1}})
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "auto: foreach, not fused" in result.stderr
    _, run = only_run(repo)
    assert run.info.status == "FINISHED" and run.data.params["resolved.implementation"] == "foreach"
