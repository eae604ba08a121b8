"""The sweep file, the values a trial draws, and how trials are claimed, with real Optuna
(no DVC, no training: tests/e2e/test_sweep.py runs sweeps end to end)."""

import shutil
import threading
from pathlib import Path

import optuna
import pytest
import yaml

from kiwi_pipe_optim.cli import main
from kiwi_pipe_optim.errors import ConfigError
from kiwi_pipe_optim.integrations.sweep.driver import Sweep
from kiwi_pipe_optim.integrations.sweep.spec import SweepSpec, load_sweep
from kiwi_pipe_optim.integrations.study.storage import open_storage
from kiwi_pipe_optim.integrations.sweep.study import cli_value, load, suggest
from tests.conftest import ROOT

CORPUS = sorted((Path(__file__).parent / "bad_sweeps").iterdir())
ISSUE_FORM = """\
name: lr-search
metric: val_loss
direction: minimize
trials: 20
space:
  optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0e-1]}
  optimizer.class_name: {choice: [adamw, muon]}
  optimizer.warmup_steps: {uniform: [0.0, 0.2]}
"""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_documented_form_loads(workspace):
    (workspace / "sweep.yaml").write_text(ISSUE_FORM)
    spec = load_sweep("sweep.yaml")
    assert spec.trials == 20 and spec.sampler == "tpe" and spec.pruner.name == "median"
    assert [spec.space[k].kind for k in spec.space] == ["log_uniform", "choice", "uniform"]


def test_the_repository_sweep_file_loads():
    spec = load_sweep(ROOT / "sweep.yaml", ROOT / "params.yaml")
    assert spec.metric == "val_loss"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_sweep_file_is_one_line_before_anything_starts(path, workspace, capsys):
    shutil.copy(path, workspace / "sweep.yaml")
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code = main(["sweep", "sweep.yaml"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not (workspace / ".kiwi-pipe-optim").exists()  # no study, no trial, no log


def test_conditional_keys_are_drawn_only_for_their_choice():
    spec = SweepSpec.model_validate({
        "name": "c", "metric": "val_loss", "trials": 30, "seed": 3,
        "space": {"optimizer.class_name": {"choice": ["adamw", "muon"]},
                  "optimizer.weight_decay": {"uniform": [0.0, 0.1], "when": {"optimizer.class_name": "muon"}},
                  "trainer.max_epochs": {"int": [1, 8], "log": True}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        values = suggest(study.ask(), spec)
        seen.add(values["optimizer.class_name"])
        assert ("optimizer.weight_decay" in values) == (values["optimizer.class_name"] == "muon")
        assert 1 <= values["trainer.max_epochs"] <= 8 and isinstance(values["trainer.max_epochs"], int)
    assert seen == {"adamw", "muon"}


def test_grid_sampler_walks_every_point(workspace):
    spec = SweepSpec.model_validate({
        "name": "g", "metric": "val_loss", "trials": 6, "sampler": "grid",
        "space": {"optimizer.class_name": {"choice": ["adamw", "sgd"]},
                  "optimizer.warmup_steps": {"uniform": [0.0, 0.2], "step": 0.1}}})
    storage = open_storage(str(workspace / "g.journal"))
    study = load(storage, "g", spec)
    points = set()
    for _ in range(6):
        values = suggest(study.ask(), spec)
        points.add((values["optimizer.class_name"], round(values["optimizer.warmup_steps"], 6)))
    assert len(points) == 6


def test_a_study_resumed_with_another_space_is_refused(workspace):
    storage = open_storage(str(workspace / "s.journal"))
    first = SweepSpec.model_validate(yaml.safe_load(ISSUE_FORM))
    load(storage, "lr-search", first)
    changed = yaml.safe_load(ISSUE_FORM)
    changed["space"]["optimizer.learning_rate"] = {"log_uniform": [1e-5, 1e-1]}
    with pytest.raises(ConfigError, match="begun with another metric, direction or space"):
        load(storage, "lr-search", SweepSpec.model_validate(changed))
    assert load(storage, "lr-search", first).study_name == "lr-search"  # the same file resumes it


def test_sqlite_storage_is_refused():
    with pytest.raises(ConfigError, match="SQLite breaks under parallel trials"):
        open_storage("sqlite:///optuna.db")


@pytest.mark.parametrize("value, written", [(1e-05, "1.0e-05"), (0.001, "0.001"), (3, "3"), (True, "true"),
                                            (None, "null"), ("adamw", "adamw"), ("a b", "'a b'"),
                                            ("it's", "'it\\'s'")])
def test_values_are_written_as_dvc_reads_them_back(value, written):
    assert cli_value(value) == written
    if isinstance(value, float):
        assert isinstance(yaml.safe_load(written), float)  # YAML 1.1 reads 1e-05 as text, 1.0e-05 as a number


def test_workers_asking_at_once_never_exceed_the_trials(workspace):
    """Eight workers, one journal, trials: 5: exactly five trials are claimed, each once."""
    spec = SweepSpec.model_validate({**yaml.safe_load(ISSUE_FORM), "trials": 5})
    url = str(workspace / "race.journal")
    claimed, barrier = [], threading.Barrier(8)

    def worker():
        storage = open_storage(url)
        sweep = Sweep(spec, workspace, workspace / "params.yaml", url, storage, load(storage, spec.name, spec),
                      say=lambda line: None)
        barrier.wait()
        while (got := sweep.claim()) is not None:
            claimed.append(got[0].number)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [0, 1, 2, 3, 4]


def test_a_stage_orphaned_by_its_shell_is_stopped_with_its_group():
    """`sh -c` killed under a running command leaves the command running; ending the group stops it."""
    import os
    import signal
    import subprocess
    import time

    from kiwi_pipe_optim import processes

    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 120; true"], start_new_session=True)
    deadline = time.time() + 10
    while not (children := subprocess.run(["pgrep", "-P", str(shell.pid)], capture_output=True,
                                          text=True).stdout.split()) and time.time() < deadline:
        time.sleep(0.05)
    child = processes.this(int(children[0]))
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    assert not processes.is_gone(child)  # orphaned, still running
    assert processes.end_group(shell.pid, grace_s=5)
    deadline = time.time() + 10
    while not processes.is_gone(child) and time.time() < deadline:
        time.sleep(0.05)
    assert processes.is_gone(child)
    assert not processes.end_group(shell.pid)  # nothing left
