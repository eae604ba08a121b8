"""kill -9 mid-training, then `dvc repro` again: the run resumes into the same MLflow run with
the curves of an uninterrupted run; changed params and tampered checkpoints are refused."""

import json
import os
import pickle
import sys
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import Exploit
from tests.e2e.conftest import sh

pytestmark = pytest.mark.e2e

CHECKPOINT = ".kiwi-pipe-optim/checkpoints/train.ckpt"
# 5 batches an epoch, 4 epochs: 20 steps.
PARAMS = {"model": {"class_path": "user_model:DyingDigits"}, "trainer": {"max_epochs": 4}}

DYING = '''
import json
import os
import signal

from kiwi_pipe_optim.examples.digits import DigitsTransformer


class DyingDigits(DigitsTransformer):
    """Killed with SIGKILL, as by the OOM killer, once: at optimizer step $DIE_AT_STEP."""

    def training_step(self, batch, batch_idx):
        at = os.environ.get("DIE_AT_STEP")
        if at and self.global_step == int(at) and not os.path.exists("died"):
            open("died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_step(batch, batch_idx)
'''
KEYS = ("lr/default", "lr/encoder", "train_loss", "val_loss", "val_acc")


def make(repo_factory, name, every_n_steps, flush_interval_s=5.0, sender="auto"):
    repo = repo_factory({**PARAMS, "checkpoint": {"every_n_steps": every_n_steps},
                         "mlflow": {"flush_interval_s": flush_interval_s, "sender": sender}}, name=name)
    (repo / "user_model.py").write_text(DYING)
    sh(["git", "add", "user_model.py"], repo)
    sh(["git", "commit", "-qm", "user model"], repo)
    return repo


def histories(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    return runs, {key: [(m.step, m.value) for m in sorted(client.get_metric_history(runs[0].info.run_id, key),
                                                          key=lambda m: m.step)] for key in KEYS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.e2e.conftest import make_repo

    repo = make_repo(tmp_path_factory.mktemp("base") / "repo", {**PARAMS, "checkpoint": {"every_n_steps": 0}})
    (repo / "user_model.py").write_text(DYING)
    sh(["dvc", "repro"], repo)
    runs, curves = histories(repo)
    assert len(runs) == 1 and [s for s, _ in curves["lr/default"]] == list(range(20))
    return repo, curves


@pytest.mark.parametrize("every_n_steps, die_at, flush_interval_s, sender",
                         [(3, 8, 5.0, "auto"), (5, 12, 5.0, "auto"), (3, 11, 0.0, "auto"), (3, 11, 0.0, "process")],
                         ids=["mid-epoch", "epoch-end", "sent-past-the-checkpoint", "sender-process"])
def test_kill_9_then_repro_resumes_the_same_run_with_identical_curves(repo_factory, uninterrupted, every_n_steps,
                                                                     die_at, flush_interval_s, sender):
    """With a sender process, the killed run's sender sends what was journaled, and the resumed
    stage waits for it (the journal's lock) before cutting the journal back."""
    base_repo, expected = uninterrupted
    repo = make(repo_factory, "killed", every_n_steps, flush_interval_s, sender)
    crashed = sh(["dvc", "repro"], repo, check=False, DIE_AT_STEP=str(die_at))
    assert crashed.returncode != 0 and (repo / "died").exists()
    assert (repo / CHECKPOINT).exists() and not (repo / "metrics.json").exists()
    [run], before = histories(repo)
    assert run.info.status == "RUNNING"  # a SIGKILL leaves no chance to end it
    checkpoint_step = die_at // every_n_steps * every_n_steps
    if flush_interval_s == 0:  # sent at every epoch end: MLflow already holds steps the resume repeats
        deadline = time.monotonic() + 30  # a sender process of the killed run may still be sending
        while max((step for step, _ in before["lr/default"]), default=-1) < checkpoint_step:
            assert time.monotonic() < deadline, before["lr/default"]
            time.sleep(0.5)
            _, before = histories(repo)

    resumed = sh(["dvc", "repro"], repo, DIE_AT_STEP=str(die_at))
    assert "resuming from step" in resumed.stderr
    runs, curves = histories(repo)
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    assert curves == expected  # one value per step, bitwise equal to the uninterrupted run
    assert runs[0].data.tags["kiwi.resumed_at_step"] == str(checkpoint_step)
    for name in ("plots/lr/default.csv", "plots/lr/encoder.csv", "plots/loss.csv"):
        assert (repo / name).read_text() == (base_repo / name).read_text()
    assert not (repo / CHECKPOINT).exists()  # finished: the next run starts afresh
    assert "Stage 'train' didn't change" in sh(["dvc", "repro"], repo).stdout


def crash(repo_factory, name="crashed"):
    repo = make(repo_factory, name, 3)
    assert sh(["dvc", "repro"], repo, check=False, DIE_AT_STEP="8").returncode != 0
    assert (repo / CHECKPOINT).exists()
    return repo


def stage(repo):
    return sh([sys.executable, "stages/train.py"], repo, check=False)


def test_changed_schedule_params_refuse_to_resume_and_say_how_to_start_afresh(repo_factory):
    repo = crash(repo_factory)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["optimizer"]["learning_rate"] = 0.02
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = stage(repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.endswith(
        f"checkpoint: '{CHECKPOINT}' holds a run stopped at step 6 with other params "
        f"(optimizer.learning_rate: 0.01 -> 0.02); resuming would not continue the same run: restore those params "
        f"to resume, or delete '{CHECKPOINT}' (or set checkpoint.resume: false) to start afresh")
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING" and not (repo / "metrics.json").exists()

    params["checkpoint"]["resume"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage(repo).returncode == 0
    runs, curves = histories(repo)
    assert len(runs) == 2 and curves["lr/default"][0][0] == 0
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]  # the old one closed, not left RUNNING


def test_restored_lr_that_differs_from_the_schedule_is_refused(repo_factory):
    repo = crash(repo_factory, "lr")
    path = repo / CHECKPOINT
    checkpoint = torch.load(path, weights_only=True)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        group["lr"] *= 3  # what a changed schedule formula would restore
    torch.save(checkpoint, path)
    result = stage(repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint: '{CHECKPOINT}' restored lr/encoder = " in result.stderr
    assert "at step 6, but the optimizer section gives" in result.stderr
    [run], _ = histories(repo)
    assert run.info.status == "FAILED"


def test_tampered_checkpoint_is_refused_and_runs_nothing(repo_factory):
    repo = crash(repo_factory, "tampered")
    marker = repo / "code-ran"
    with open(repo / CHECKPOINT, "wb") as f:
        pickle.dump({"state_dict": {}, "callbacks": {"x": Exploit(marker)}}, f)
    result = stage(repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint: '{CHECKPOINT}' was refused: it holds Python objects that could run code" in result.stderr
    assert not marker.exists() and not (repo / "metrics.json").exists()
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING"  # nothing was started or changed
    assert os.path.getsize(repo / CHECKPOINT) > 0


def test_kill_9_before_the_first_checkpoint_leaves_no_run_running(repo_factory, uninterrupted):
    _, expected = uninterrupted
    repo = make(repo_factory, "early", every_n_steps=100)
    assert sh(["dvc", "repro"], repo, check=False, DIE_AT_STEP="5").returncode != 0
    assert not (repo / CHECKPOINT).exists()
    sh(["dvc", "repro"], repo, DIE_AT_STEP="5")
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert runs[0].data.tags["kiwi.replaced_by"] == runs[1].info.run_id
    curves = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(runs[1].info.run_id, key),
                                                      key=lambda m: m.step)] for key in KEYS}
    assert curves == expected


DIES_ON_EXIT = DYING + '''

import threading
import time


class DiesOnExit(DyingDigits):
    """Killed with SIGKILL on its way out, once: as soon as the stage has written metrics.json."""

    def on_fit_end(self):
        if os.path.exists("died"):
            return

        def kill_when_written():
            while not os.path.exists("metrics.json"):
                time.sleep(0.0005)
            open("died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_written, daemon=True).start()
'''


def test_kill_9_on_the_way_out_does_not_train_again(repo_factory, uninterrupted):
    base_repo, expected = uninterrupted
    repo = repo_factory({**PARAMS, "model": {"class_path": "user_model:DiesOnExit"}}, name="exit")
    (repo / "user_model.py").write_text(DIES_ON_EXIT)
    sh(["git", "add", "user_model.py"], repo)
    sh(["git", "commit", "-qm", "user model"], repo)
    killed = sh(["dvc", "repro"], repo, check=False)
    assert killed.returncode != 0 and (repo / "died").exists()
    again = sh(["dvc", "repro"], repo)
    assert "its outputs are restored and nothing trains again" in again.stderr
    runs, curves = histories(repo)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert curves == expected
    for name in ("metrics.json", "plots/lr/default.csv", "plots/loss.csv"):
        if name != "metrics.json":
            assert (repo / name).read_text() == (base_repo / name).read_text()
    assert json.loads((repo / "metrics.json").read_text())["steps"] == 20
    assert "Stage 'train' didn't change" in sh(["dvc", "repro"], repo).stdout
