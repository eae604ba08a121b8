"""kill -9 mid-training, then `dvc repro` again: the run resumes into the same MLflow run with
the curves of an uninterrupted run; changed params and tampered checkpoints are refused.

Starting Python and its imports costs more than training 20 tiny steps, so each state is built
once per module and copied: a repository whose `check` and `schedule` stages DVC has already run
(a `dvc repro` then reruns only `train`), an uninterrupted run trained in this process (the curves
every resume must give), and one run killed at step 8. DVC is used where it is what is tested;
a kill needs a process of its own; everything else trains in this process. The module's tests
share one xdist worker, so that these states are built once."""

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.stage.checkpoint import seal
from tests.conftest import Exploit
from tests.e2e.conftest import make_repo, sh, stage_in_process, tool_env

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("resume")]

CHECKPOINT = ".kiwi-pipe-optim/checkpoints/train.ckpt"
# 5 batches an epoch, 4 epochs: 20 steps; saved at steps 3, 6, 9, ... (mid-epoch, past epoch ends)
PARAMS = {"model": {"class_path": "user_model:DyingDigits"}, "trainer": {"max_epochs": 4},
          "checkpoint": {"every_n_steps": 3}}

DYING = '''
import json
import os
import signal
import threading
import time

from kiwi_pipe_optim.examples.digits import DigitsTransformer


class DyingDigits(DigitsTransformer):
    """Killed with SIGKILL, as by the OOM killer, once: at optimizer step $DIE_AT_STEP, or with
    $DIE_ON_EXIT on its way out, as soon as the stage has written metrics.json. Sent SIGTERM once
    during step $SIGTERM_AT_STEP."""

    def training_step(self, batch, batch_idx):
        at = os.environ.get("DIE_AT_STEP")
        if at and self.global_step == int(at) and not os.path.exists("died"):
            open("died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        at = os.environ.get("SIGTERM_AT_STEP")  # as a scheduler preempting the job
        if at and self.global_step == int(at) and not os.path.exists("signalled"):
            open("signalled", "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(float(os.environ.get("STEP_SLEEP_S", "0")))
        at = os.environ.get("FILL_AT_STEP")  # another process fills the disk the run keeps its state on
        if at and self.global_step == int(at) and not os.path.exists("filled"):
            open("filled", "w").close()
            fd = os.open(".kiwi-pipe-optim/filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, bytes(1 << 16)):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        return super().training_step(batch, batch_idx)

    def on_fit_end(self):
        if not os.environ.get("DIE_ON_EXIT") or os.path.exists("died"):
            return

        def kill_when_written():
            while not os.path.exists("metrics.json"):
                time.sleep(0.0005)
            open("died", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_written, daemon=True).start()
'''
KEYS = ("lr/default", "lr/encoder", "train_loss", "val_loss", "val_acc")
PLOTS = ("plots/lr/default.csv", "plots/lr/encoder.csv", "plots/loss.csv")


def copy(repo, tmp_path, name="repo"):
    return shutil.copytree(repo, tmp_path / name, symlinks=True)


def set_params(repo, **sections):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def histories(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id],
                              order_by=["attributes.start_time ASC"])
    return runs, {key: [(m.step, m.value) for m in sorted(client.get_metric_history(runs[-1].info.run_id, key),
                                                          key=lambda m: m.step)] for key in KEYS}


def started_runs(repo):
    if not (repo / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments(view_type=3)], run_view_type=3)


def train_py(repo, **env):
    """The stage in a process of its own, for a kill -9 to kill."""
    return sh([sys.executable, "stages/train.py"], repo, check=False, **env)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """`check` and `schedule` already run by DVC: a copy's `dvc repro` runs `train` alone."""
    repo = make_repo(tmp_path_factory.mktemp("base") / "repo", PARAMS)
    (repo / "user_model.py").write_text(DYING)
    sh(["git", "add", "user_model.py"], repo)
    sh(["git", "commit", "-qm", "user model"], repo)
    sh(["dvc", "repro", "schedule"], repo)
    return repo


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    """Never saved (every_n_steps: 0), so a checkpoint's save cannot hide in both curves."""
    repo = copy(base, tmp_path_factory.mktemp("uninterrupted"))
    set_params(repo, checkpoint={"every_n_steps": 0})
    result = stage_in_process(repo)
    assert result.returncode == 0, result.stderr[-3000:]
    runs, curves = histories(repo)
    assert len(runs) == 1 and [s for s, _ in curves["lr/default"]] == list(range(20))
    return repo, curves


@pytest.fixture(scope="module")
def crashed(base, tmp_path_factory):
    """Killed at step 8, its last checkpoint at step 6; ``sh`` waits until every process of the
    killed run (a sender too) has exited, so that copies are of a state that no longer moves."""
    repo = copy(base, tmp_path_factory.mktemp("crashed"))
    assert train_py(repo, DIE_AT_STEP="8").returncode != 0 and (repo / "died").exists()
    assert (repo / CHECKPOINT).exists() and not (repo / "metrics.json").exists()
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING"  # a SIGKILL leaves no chance to end it
    return repo


def assert_resumed(repo, run_id, checkpoint_step, uninterrupted):
    base_repo, expected = uninterrupted
    runs, curves = histories(repo)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert set(curves) == set(expected)
    for key in expected:  # one value per step, bitwise equal to the uninterrupted run
        assert curves[key] == expected[key], (key, [(a, b) for a, b in zip(curves[key], expected[key]) if a != b][:3])
    assert runs[0].data.tags["kiwi.resumed_at_step"] == str(checkpoint_step)
    for name in PLOTS:
        assert (repo / name).read_text() == (base_repo / name).read_text()
    assert not (repo / CHECKPOINT).exists()  # finished: the next run starts afresh


def test_kill_9_mid_epoch_then_repro_resumes_the_same_run_with_identical_curves(crashed, uninterrupted, tmp_path):
    repo = copy(crashed, tmp_path)
    [run], _ = histories(repo)
    resumed = sh(["dvc", "repro"], repo, DIE_AT_STEP="8")
    assert "Running stage 'check'" not in resumed.stdout  # what a copy of `base` is for
    assert "resuming from step 6" in resumed.stderr
    assert_resumed(repo, run.info.run_id, 6, uninterrupted)
    assert "Stage 'train' didn't change" in sh(["dvc", "repro"], repo).stdout


def test_kill_9_with_a_sender_process_resumes_without_repeating_what_it_sent(base, uninterrupted, tmp_path):
    """Sent at every epoch end (flush 0): MLflow already holds steps past the checkpoint that the
    resume repeats. The killed run's sender process sends what was journaled; the resumed stage
    waits for it (the journal's lock) before cutting the journal back. The kill's output goes to a
    file, not a pipe, so that the resume may start while that sender is still sending."""
    repo = copy(base, tmp_path)
    set_params(repo, mlflow={"flush_interval_s": 0.0, "sender": "process"})
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.run([sys.executable, "stages/train.py"], cwd=repo, stdout=log, stderr=log, timeout=300,
                                env=tool_env(DIE_AT_STEP="11"))
    assert killed.returncode != 0 and (repo / "died").exists()
    [run], before = histories(repo)
    assert run.info.status == "RUNNING"
    deadline = time.monotonic() + 30
    while max((step for step, _ in before["lr/default"]), default=-1) < 9:
        assert time.monotonic() < deadline, before["lr/default"]
        time.sleep(0.5)
        _, before = histories(repo)

    resumed = stage_in_process(repo, DIE_AT_STEP="11")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 9" in resumed.stderr
    assert_resumed(repo, run.info.run_id, 9, uninterrupted)


def stopped_line(result):
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if "stopped by SIGTERM" in line]


def test_sigterm_saves_the_step_it_stops_at_and_the_rerun_resumes_it(base, uninterrupted, tmp_path):
    """Signalled during step 8 (mid-epoch): step 9 is finished, saved, and the fit ends there."""
    from kiwi_pipe_optim.integrations.stage.checkpoint import read_resume_point

    repo = copy(base, tmp_path)
    stopped = stage_in_process(repo, SIGTERM_AT_STEP="8")
    assert stopped.returncode == 143
    assert stopped_line(stopped) == ["stopped by SIGTERM at step 9, checkpoint saved; the MLflow run is marked "
                                     "KILLED: run again to resume from step 9"]
    [run], _ = histories(repo)
    assert run.info.status == "KILLED" and not (repo / "metrics.json").exists()
    assert read_resume_point(repo / CHECKPOINT).step == 9
    resumed = stage_in_process(repo, SIGTERM_AT_STEP="8")
    assert resumed.returncode == 0 and "resuming from step 9" in resumed.stderr
    assert_resumed(repo, run.info.run_id, 9, uninterrupted)


def test_sigterm_at_an_epochs_last_step_under_dvc_repro_stops_after_its_validation(base, uninterrupted, tmp_path):
    repo = copy(base, tmp_path)
    stopped = sh(["dvc", "repro"], repo, check=False, SIGTERM_AT_STEP="9")
    assert stopped.returncode != 0 and len(stopped_line(stopped)) == 1, stopped.stderr[-3000:]
    [run], curves = histories(repo)
    assert run.info.status == "KILLED" and len(curves["val_loss"]) == 2  # epoch 2's validation ran
    resumed = sh(["dvc", "repro"], repo, SIGTERM_AT_STEP="9")
    assert "resuming from step 10" in resumed.stderr
    assert_resumed(repo, run.info.run_id, 10, uninterrupted)


def test_changed_schedule_params_refuse_to_resume_and_say_how_to_start_afresh(crashed, tmp_path):
    repo = copy(crashed, tmp_path)
    params = set_params(repo, optimizer={"learning_rate": 0.02})
    result = stage_in_process(repo)
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
    assert stage_in_process(repo).returncode == 0
    runs, curves = histories(repo)
    assert len(runs) == 2 and curves["lr/default"][0][0] == 0
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]  # the old one closed, not left RUNNING


def test_restored_lr_that_differs_from_the_schedule_is_refused(crashed, tmp_path):
    repo = copy(crashed, tmp_path)
    path = repo / CHECKPOINT
    checkpoint = torch.load(path, weights_only=True)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        group["lr"] *= 3  # what a changed schedule formula would restore
    torch.save(checkpoint, tmp_path / "changed.ckpt")
    seal(tmp_path / "changed.ckpt", path)  # a file the stage wrote, so that its checksum holds
    result = stage_in_process(repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint: '{CHECKPOINT}' restored lr/encoder = " in result.stderr
    assert "at step 6, but the optimizer section gives" in result.stderr
    [run], _ = histories(repo)
    assert run.info.status == "FAILED"


def test_tampered_checkpoint_is_refused_and_runs_nothing(crashed, tmp_path):
    repo = copy(crashed, tmp_path)
    marker = repo / "code-ran"
    with open(tmp_path / "tampered.ckpt", "wb") as f:
        pickle.dump({"state_dict": {}, "callbacks": {"x": Exploit(marker)}}, f)
    seal(tmp_path / "tampered.ckpt", repo / CHECKPOINT)  # whoever tampers can write a checksum too
    result = stage_in_process(repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint: '{CHECKPOINT}' was refused: it holds Python objects that could run code" in result.stderr
    assert not marker.exists() and not (repo / "metrics.json").exists()
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING"  # nothing was started or changed
    assert os.path.getsize(repo / CHECKPOINT) > 0


def test_kill_9_before_the_first_checkpoint_leaves_no_run_running(base, uninterrupted, tmp_path):
    """Killed after the first epoch's end (step 5), so the killed run holds values of its own."""
    _, expected = uninterrupted
    repo = copy(base, tmp_path)
    set_params(repo, checkpoint={"every_n_steps": 100})
    assert train_py(repo, DIE_AT_STEP="5").returncode != 0 and (repo / "died").exists()
    assert not (repo / CHECKPOINT).exists()
    again = stage_in_process(repo, DIE_AT_STEP="5")
    assert again.returncode == 0, again.stderr[-3000:]
    runs, curves = histories(repo)  # the curves of the last run
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert runs[0].data.tags["kiwi.replaced_by"] == runs[1].info.run_id
    assert curves == expected


def test_kill_9_on_the_way_out_does_not_train_again(base, uninterrupted, tmp_path):
    """DVC saw the stage fail after it had finished: `dvc repro` must not train it again."""
    base_repo, expected = uninterrupted
    repo = copy(base, tmp_path)
    killed = sh(["dvc", "repro"], repo, check=False, DIE_ON_EXIT="1")
    assert killed.returncode != 0 and (repo / "died").exists()
    again = sh(["dvc", "repro"], repo)
    assert "its outputs are restored and nothing trains again" in again.stderr
    runs, curves = histories(repo)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert curves == expected
    for name in PLOTS:
        assert (repo / name).read_text() == (base_repo / name).read_text()
    assert json.loads((repo / "metrics.json").read_text())["steps"] == 20
    assert "Stage 'train' didn't change" in sh(["dvc", "repro"], repo).stdout


@pytest.fixture(scope="module")
def crashed_after_sending(base, tmp_path_factory):
    """Sent at every epoch end (flush 0) and killed at step 11: MLflow holds steps 9 and 10,
    past the checkpoint at step 9, which the resume logs again."""
    repo = copy(base, tmp_path_factory.mktemp("sent"))
    set_params(repo, mlflow={"flush_interval_s": 0.0})
    assert train_py(repo, DIE_AT_STEP="11").returncode != 0 and (repo / "died").exists()
    [run], held = histories(repo)
    assert max(step for step, _ in held["lr/default"]) >= 9
    return repo, run.info.run_id


def one_line(result, expected, code=2):
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


JOURNAL = ".kiwi-pipe-optim/journal/train.journal"


@pytest.mark.parametrize("damage", ["deleted", "garbled", "another run's"])
def test_a_sent_marker_that_cannot_say_asks_mlflow_and_sends_nothing_twice(crashed_after_sending, uninterrupted,
                                                                           tmp_path, damage):
    repo, run_id = crashed_after_sending
    repo = copy(repo, tmp_path)
    marker = repo / (JOURNAL + ".sent")
    if damage == "deleted":
        marker.unlink()
    elif damage == "garbled":
        marker.write_text("9999")  # what a marker without its checksum says
    else:
        offset, _, _ = marker.read_text().split()
        marker.write_text(f"{offset} {'0' * 32} 00000000")
    resumed = stage_in_process(repo, DIE_AT_STEP="11")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "only the rest is sent" in resumed.stderr
    assert_resumed(repo, run_id, 9, uninterrupted)


def test_a_run_deleted_before_the_resume_is_replaced_by_one_holding_the_whole_run(crashed_after_sending,
                                                                                  uninterrupted, tmp_path):
    repo, run_id = crashed_after_sending
    repo = copy(repo, tmp_path)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    client.delete_run(run_id)  # as the UI's delete button does
    resumed = stage_in_process(repo, DIE_AT_STEP="11")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the MLflow run {run_id} of the checkpoint is gone" in resumed.stderr
    [run], curves = histories(repo)
    assert run.info.run_id != run_id and run.info.status == "FINISHED"
    assert curves == uninterrupted[1]  # every step of every metric, once
    old = client.get_run(run_id)
    assert old.info.status == "KILLED" and old.info.lifecycle_stage == "deleted"
    assert old.data.tags["kiwi.replaced_by"] == run.info.run_id


def test_a_store_deleted_before_the_resume_gets_the_whole_run(crashed_after_sending, uninterrupted, tmp_path):
    repo, run_id = crashed_after_sending
    repo = copy(repo, tmp_path)
    (repo / "mlflow.db").unlink()
    resumed = stage_in_process(repo, DIE_AT_STEP="11")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "is gone" in resumed.stderr
    [run], curves = histories(repo)
    assert run.info.status == "FINISHED" and curves == uninterrupted[1]


def test_a_deleted_experiment_is_one_line_and_the_resume_waits_for_it(crashed_after_sending, tmp_path):
    repo, run_id = crashed_after_sending
    repo = copy(repo, tmp_path)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kiwi-pipe-optim").experiment_id
    client.delete_experiment(experiment)
    result = stage_in_process(repo)
    one_line(result, f"mlflow.experiment_name: the MLflow experiment 'kiwi-pipe-optim' (id {experiment}) is "
                     f"deleted in sqlite:///")
    assert "restore it" in result.stderr and (repo / CHECKPOINT).exists()
    assert len(client.search_runs([experiment], run_view_type=3)) == 1  # no run was started


def flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bytes_flipped_inside_a_checkpoint_are_refused_before_it_is_loaded(crashed, tmp_path):
    repo = copy(crashed, tmp_path)
    import zipfile

    with zipfile.ZipFile(repo / CHECKPOINT) as archive:  # inside a tensor's record: the zip stays whole
        record = max(archive.infolist(), key=lambda info: info.file_size)
    flip(repo / CHECKPOINT, record.header_offset + 30 + len(record.filename) + len(record.extra) + 7)
    result = stage_in_process(repo)
    one_line(result, f"checkpoint: '{CHECKPOINT}' is damaged: its bytes do not match the checksum written with it; "
                     f"delete '{CHECKPOINT}' (or set checkpoint.resume: false) to start afresh")
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING"  # nothing was started or changed


@pytest.mark.parametrize("damaged", ["keys", "record", "run marker"])
def test_damaged_state_files_are_one_line_and_start_no_run(crashed, tmp_path, damaged):
    repo = copy(crashed, tmp_path)
    if damaged == "keys":
        (repo / (JOURNAL + ".keys")).write_bytes(b"\x00\xffnot json")
        expected = "train.journal.keys' cannot be read"
    elif damaged == "record":
        flip(repo / JOURNAL, 28 * 5 + 3)  # the high byte of record 5's key index
        expected = "train.journal' is damaged: record 5 of"
    else:
        (repo / ".kiwi-pipe-optim/checkpoints/train.run").write_bytes(b"\x89garbage")
        expected = "train.run' is damaged"
    result = stage_in_process(repo)
    one_line(result, expected)
    [run], _ = histories(repo)
    assert run.info.status == "RUNNING" and not (repo / "metrics.json").exists()


@contextlib.contextmanager
def mounted(path, *options):
    """A real file system fault: ``mount OPTIONS path`` for the block (root only, else skipped)."""
    done = subprocess.run(["mount", *options, str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip()[:200]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def state_on_tmpfs(repo, size):
    """The repository's ``.kiwi-pipe-optim`` on a tmpfs of ``size``, its files copied in."""
    state = repo / ".kiwi-pipe-optim"
    kept = shutil.move(state, repo / "state-kept") if state.exists() else None
    state.mkdir()
    with mounted(state, "-t", "tmpfs", "-o", f"size={size}", "tmpfs"):
        if kept:
            shutil.copytree(kept, state, dirs_exist_ok=True)
        yield state


def test_a_disk_full_mid_run_fails_the_run_in_one_line_and_the_resume_is_clean(base, uninterrupted, tmp_path):
    repo = copy(base, tmp_path)
    (repo / "metrics.json").write_text('{"kept": true}\n')  # the last good run's, as `kiwi-optim train` leaves it
    with state_on_tmpfs(repo, "4m") as state:
        full = stage_in_process(repo, FILL_AT_STEP="7")  # found at the next save, step 9
        one_line(full, "No space left on device", code=1)
        assert "journal kept" in full.stderr and (repo / "metrics.json").read_text() == '{"kept": true}\n'
        [run], _ = histories(repo)
        assert run.info.status == "FAILED"
        (state / "filler").unlink()
        resumed = stage_in_process(repo, FILL_AT_STEP="7")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from step 6" in resumed.stderr
        assert_resumed(repo, run.info.run_id, 6, uninterrupted)


def test_too_little_disk_for_a_checkpoint_is_refused_before_any_run(base, tmp_path):
    repo = copy(base, tmp_path)
    (repo / "metrics.json").write_text('{"kept": true}\n')
    with state_on_tmpfs(repo, "256k"):
        result = stage_in_process(repo)
    assert (repo / "metrics.json").read_text() == '{"kept": true}\n'
    one_line(result, "MiB free on the disk of '.kiwi-pipe-optim', where the run keeps its checkpoints and journal; "
                     "it needs at least")
    assert not started_runs(repo)


@pytest.mark.parametrize("fault", ["read-only state", "plots a file", "metrics.json a directory",
                                   "mlartifacts a file"])
def test_a_path_the_run_cannot_write_is_refused_before_any_run(base, tmp_path, fault):
    repo = copy(base, tmp_path)
    with contextlib.ExitStack() as stack:
        if fault == "read-only state":
            state = repo / ".kiwi-pipe-optim"
            state.mkdir(exist_ok=True)
            stack.enter_context(mounted(state, "--bind", str(state)))
            stack.enter_context(mounted(state, "-o", "remount,bind,ro"))
            expected = "cannot write in '.kiwi-pipe-optim' (Read-only file system); make it writable"
        elif fault == "plots a file":
            shutil.rmtree(repo / "plots", ignore_errors=True)
            (repo / "plots").write_text("")
            expected = "'plots' is a file, where the run writes a directory; move or delete it"
        elif fault == "metrics.json a directory":
            (repo / "metrics.json").mkdir()
            expected = "'metrics.json' is a directory, where the run writes a file; move or delete it"
        else:
            (repo / "mlartifacts").write_text("")
            expected = "mlartifacts' is a file, where the run writes a directory"
        result = stage_in_process(repo)
    one_line(result, expected)
    assert not started_runs(repo)


def test_a_store_that_cannot_be_created_is_removed_not_left_half_migrated(base, tmp_path):
    repo = copy(base, tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    with mounted(store, "-t", "tmpfs", "-o", "size=96k", "tmpfs"):
        result = stage_in_process(repo, MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
        listed = sorted(p.name for p in store.iterdir())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "MLFLOW_TRACKING_URI: cannot open an MLflow run" in result.stderr.strip().splitlines()[-1]
    assert "mlflow.db" not in listed, listed


def test_dvc_stopped_alone_does_not_train_the_same_params_twice(base, uninterrupted, tmp_path):
    """SIGTERM to DVC's pid only: its stage goes on and finishes, but dvc.lock is not written.
    The next `dvc repro` restores what that stage wrote rather than training again."""
    import psutil

    base_repo, expected = uninterrupted
    repo = copy(base, tmp_path)
    dvc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=tool_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (repo / ".kiwi-pipe-optim/checkpoints/train.run").exists():  # the MLflow run has started
        assert time.monotonic() < deadline and dvc.poll() is None
        time.sleep(0.05)
    [stage] = [p for p in psutil.Process(dvc.pid).children(recursive=True)
               if p.cmdline()[-2:] == ["kiwi-optim", "train"] or p.cmdline()[-1:] == ["train"]]
    dvc.send_signal(signal.SIGTERM)
    assert dvc.wait(timeout=30) != 0
    stage.wait(timeout=120)  # it finished on its own
    assert (repo / "metrics.json").exists() and "train" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]

    again = sh(["dvc", "repro"], repo)
    assert "its outputs are restored and nothing trains again" in again.stderr
    runs, curves = histories(repo)
    assert [r.info.status for r in runs] == ["FINISHED"] and curves == expected
    for name in PLOTS:
        assert (repo / name).read_text() == (base_repo / name).read_text()
    assert "Stage 'train' didn't change" in sh(["dvc", "repro"], repo).stdout


def test_a_second_run_in_the_same_workspace_is_refused_and_the_first_finishes(base, uninterrupted, tmp_path):
    repo = copy(base, tmp_path)
    first = subprocess.Popen([sys.executable, "stages/train.py"], cwd=repo, env=tool_env(STEP_SLEEP_S="0.3"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (repo / ".kiwi-pipe-optim/checkpoints/train.run").exists():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    second = stage_in_process(repo)
    assert first.poll() is None  # refused while the first was training
    assert second.stderr.strip().splitlines()[-1].startswith("another run")  # no params file named
    one_line(second, f"another run of this stage (pid {first.pid}) is in progress in this workspace; wait for it, "
                     f"or stop that process, and run again")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0 and "Traceback" not in err, err[-3000:]
    runs, curves = histories(repo)
    assert [r.info.status for r in runs] == ["FINISHED"] and curves == uninterrupted[1]
