"""``kiwi-optim init`` in a git repository of the user's: what it adds, what it refuses, and that it
leaves everything else as it was. (The whole path, from a built wheel through ``dvc repro``, is
``tests/e2e/test_installed.py``.)"""

import shutil
import subprocess

import pytest
import yaml

from kiwi_pipe_optim.cli.init import pipeline, stages_text
from tests.conftest import ROOT
from tests.e2e.conftest import kiwi_optim_in_process

USER_PROJECT = ROOT / "tests" / "data" / "user_project"
WINE = ["--model", "wine.model:WineClassifier", "--data", "wine.model:WineData"]


def kiwi_optim(repo, *args):
    done = kiwi_optim_in_process(repo, "init", *args)
    return done.returncode, done.stdout, done.stderr


def files(repo):
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git/" not in p.as_posix() and "__pycache__" not in p.as_posix()}


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    shutil.copytree(USER_PROJECT, path)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    (path / ".dvc").mkdir()  # as after dvc init (which one test runs for real)
    return path


def test_this_repositorys_pipeline_is_what_init_writes():
    text = (ROOT / "dvc.yaml").read_text()
    assert text == "stages:\n" + stages_text(pipeline(["kiwi_pipe_optim"]))
    assert yaml.safe_load(text) == {"stages": pipeline(["kiwi_pipe_optim"])}


def test_init_adds_stages_params_and_ignores_and_keeps_the_users_own(repo):
    before = {name: (repo / name).read_text() for name in ("dvc.yaml", "params.yaml")}
    code, out, err = kiwi_optim(repo, *WINE)
    assert code == 0, err
    pipeline_now = yaml.safe_load((repo / "dvc.yaml").read_text())
    theirs = yaml.safe_load(before["dvc.yaml"])
    assert pipeline_now["stages"] == {**theirs["stages"], **pipeline(["wine"])}
    assert pipeline_now["plots"] == theirs["plots"]
    assert (repo / "params.yaml").read_text().startswith(before["params.yaml"])  # appended, comments and all
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"] == {"class_path": "wine.model:WineClassifier", "init_args": {"hidden": 16, "classes": 3}}
    assert params["data"] == {"class_path": "wine.model:WineData", "init_args": {"seed": 0}}
    assert params["seed"] == 7 and params["optimizer"]["class_name"] == "adamw"
    assert {"/.kiwi-pipe-optim/", "/mlflow.db", "/mlflow.db.lock", "/mlartifacts/"} <= set(
        (repo / ".gitignore").read_text().splitlines())
    assert "next: " in out and "dvc repro" in out
    from kiwi_pipe_optim.integrations.sweep.spec import load_sweep

    assert load_sweep(repo / "sweep.yaml", repo / "params.yaml").name == "lr-search"  # a study ready to run
    template = (repo / ".dvc" / "plots" / "kiwi-lr.json").read_text()
    assert '"scale": {"zero": true, "padding": 20}' in template and '"zero": false' not in template

    written = files(repo)
    code, out, _ = kiwi_optim(repo, *WINE)
    assert code == 0 and "nothing to change" in out
    assert files(repo) == written


def test_a_stage_of_the_same_name_is_refused_then_prefixed(repo):
    (repo / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python train.py\n")
    before = files(repo)
    code, _, err = kiwi_optim(repo, *WINE)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already has a stage 'train'" in err and "--prefix" in err
    assert files(repo) == before  # nothing half-written
    code, _, err = kiwi_optim(repo, *WINE, "--prefix", "kiwi-")
    assert code == 0, err
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"train", "kiwi-check", "kiwi-schedule", "kiwi-train"}
    assert stages["train"] == {"cmd": "python train.py"}


@pytest.mark.parametrize(("args", "said"), [
    (["--model", "wine.model:Nope", "--data", "wine.model:WineData"], "--model 'wine.model:Nope': the module has no"),
    (["--model", "wine.model:WineData", "--data", "wine.model:WineData"], "is not a LightningModule"),
    (["--model", "nowhere.at_all:Model", "--data", "wine.model:WineData"], "cannot import it"),
    (["--example", "--model", "wine.model:WineClassifier"], "--example writes the bundled task"),
    ([], "has no model group: give --model and --data, or --example"),
])
def test_mistakes_are_one_line_and_change_nothing(repo, args, said):
    before = files(repo)
    code, _, err = kiwi_optim(repo, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and said in err, err
    assert files(repo) == before


def test_a_params_file_naming_another_model_is_refused(repo):
    (repo / "params.yaml").write_text("model:\n  class_path: theirs.Model\n")
    code, _, err = kiwi_optim(repo, *WINE)
    assert code == 2 and "already has model.class_path: theirs.Model" in err


def test_outside_a_git_repository(tmp_path):
    code, _, err = kiwi_optim(tmp_path, "--example")
    assert code == 2 and "is not in a git repository: run git init first" in err


def test_example_in_an_empty_repository_runs_dvc_init(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    code, out, err = kiwi_optim(tmp_path, "--example")
    assert code == 0, err
    assert (tmp_path / ".dvc" / "config").exists() and ".dvc/: dvc init" in out
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["model"]["class_path"] == "kiwi_pipe_optim.examples.digits:DigitsTransformer"
    assert "deps" not in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["check"]
