"""The package as a user gets it: the wheel built from this tree, installed into a fresh virtualenv.

First with no extra (torch, pydantic and pyyaml only): ``from_config`` works and the edges say
which extra they need. Then with ``[stage]``, in a new git repository holding a project of its own
(``tests/data/user_project``: its own module, data module, stage and params): ``kiwi-optim init``,
``dvc repro`` and ``dvc exp run`` as the README says, with nothing of this checkout on ``PATH``.

Each virtualenv is new and sees exactly the distributions the wheel's metadata asks for (with the
extra), followed through their own metadata, linked from this checkout's environment rather than
unpacked again (see :func:`borrowed`); pip then installs the wheel with ``--no-index``, so that a
requirement the metadata names and the environment lacks fails the install, and a module the
package imports but does not declare fails the run.
"""

import email.parser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("installed")]

USER_PROJECT = ROOT / "tests" / "data" / "user_project"
GIT = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
FINDING = "optimizer.warmup_steps: 0.1 is not used by the none schedule"
NOISE = ("LeafSpec", "litlogger", "database tables", "Traceback")


def run(args, cwd, venv, check=True, timeout=600, **env):
    """A command with the virtualenv's ``bin`` first on ``PATH``, and nothing of this checkout."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PYTHON", "VIRTUAL_ENV"))}
    path = [p for p in clean.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))]
    clean.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), DVC_NO_ANALYTICS="1", PIP_NO_INPUT="1", **env)
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=clean, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def wheel_requirements(wheel, extras=()):
    """The wheel's own ``Requires-Dist`` lines that apply with ``extras`` (its self-references
    to other extras followed), as its metadata says them."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    wanted, found, todo = set(extras), [], list(extras)
    while todo:  # kiwi-pipe-optim[stage] asks for kiwi-pipe-optim[lightning,mlflow]
        for line in metadata.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.name == "kiwi-pipe-optim" and req.marker and req.marker.evaluate({"extra": todo[0]}):
                todo += sorted(set(req.extras) - wanted)
                wanted |= set(req.extras)
        todo.pop(0)
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.name != "kiwi-pipe-optim" and (req.marker is None or any(
                req.marker.evaluate({"extra": e}) for e in wanted or {""})):
            found.append(req)
    return found


def borrowed(requirements, into):
    """Links to the distributions of this checkout's environment that ``requirements`` need, and
    to nothing else: their dependencies followed through each one's metadata (extras and markers
    evaluated). A virtualenv given this directory (a ``.pth``) sees exactly what pip would install
    for them, at the versions pip's cache holds, without a minute and a half of unpacking; a
    module imported but not declared is missing there, as in a real install."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site = Path(sysconfig.get_paths()["purelib"])
    into.mkdir(parents=True)
    scripts = {}
    seen, todo = {}, [(req, set(req.extras)) for req in requirements]
    while todo:
        req, extras = todo.pop()
        dist = metadata.distribution(req.name)
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in seen[key] | {""}):
                todo.append((sub, set(sub.extras)))
        for file in dist.files or []:
            top = Path(file).parts[0]
            if top not in ("..", "__pycache__") and not (into / top).exists() and (site / top).exists():
                (into / top).symlink_to(site / top)
        scripts.update((ep.name, ep.value) for ep in dist.entry_points.select(group="console_scripts"))
    return into, scripts


def venv_with(tmp_path_factory, wheel, extras=()):
    """A new virtualenv that sees what the wheel needs with ``extras`` (see :func:`borrowed`),
    the wheel then installed by pip, which checks every requirement is there."""
    where = tmp_path_factory.mktemp("venv")
    venv = where / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the old setuptools ensurepip brings would hide the one torch asks for (a real install replaces it)
    run([venv / "bin" / "pip", "uninstall", "-q", "-y", "setuptools"], where, venv)
    deps, scripts = borrowed(wheel_requirements(wheel, extras), where / "deps")
    [site] = venv.glob("lib/python*/site-packages")
    (site / "deps.pth").write_text(f"{deps}\n")
    for name, target in scripts.items():  # the commands pip would have written for them (dvc, ...)
        module, _, call = target.partition(":")
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {call.split('.')[0]}\n"
                          f"sys.exit({call}())\n")
        script.chmod(0o755)
    target = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    run([venv / "bin" / "pip", "install", "-q", "--no-compile", "--no-index", target], where, venv)
    return venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")  # setuptools' build/ outside the checkout
    shutil.copytree(ROOT, build / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".kiwi-pipe-optim",
        "mlflow.db*", "mlartifacts", "plots", "checkpoints", "tests", "docs", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(build / "src")], check=True, capture_output=True, text=True)
    [found] = out.glob("kiwi_pipe_optim-*.whl")
    return found


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory, wheel):
    return venv_with(tmp_path_factory, wheel)


def test_the_core_installs_alone_and_the_edges_name_their_extra(core_venv, tmp_path):
    installed = run([core_venv / "bin" / "pip", "list", "--format=freeze"], tmp_path, core_venv).stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert {"torch", "pydantic", "pyyaml", "kiwi-pipe-optim"} <= names
    assert not names & {"lightning", "pytorch-lightning", "mlflow", "dvc", "matplotlib", "scikit-learn", "rich"}
    script = '''
import torch
from kiwi_pipe_optim import OptimizerConfig, from_config
model = torch.nn.Linear(4, 2)
[optimizer], [scheduler] = from_config(OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=2,
                                                       training_steps=10), model)
before = model.weight.detach().clone()
for _ in range(3):  # warm-up starts at 0
    optimizer.zero_grad()
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    scheduler["scheduler"].step()
assert not torch.equal(before, model.weight)
try:
    import kiwi_pipe_optim.integrations.stage
except ImportError as e:
    print(e)
'''
    out = run([core_venv / "bin" / "python", "-c", script], tmp_path, core_venv)
    [line] = out.stdout.splitlines()
    assert "pip install 'kiwi-pipe-optim[stage]'" in line, line
    (tmp_path / "params.yaml").write_text("optimizer:\n  class_name: sgd\n  learning_rate: 0.1\n")
    assert "sgd" in run([core_venv / "bin" / "kiwi-optim", "validate", "params.yaml"], tmp_path, core_venv).stdout
    assert "adamw" in run([core_venv / "bin" / "kiwi-optim", "list"], tmp_path, core_venv).stdout
    refused = run([core_venv / "bin" / "kiwi-optim", "train"], tmp_path, core_venv, check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "[stage]" in refused.stderr


@pytest.fixture(scope="module")
def stage_venv(tmp_path_factory, wheel):
    return venv_with(tmp_path_factory, wheel, ("stage",))


@pytest.fixture(scope="module")
def user_repo(stage_venv, tmp_path_factory):
    repo = tmp_path_factory.mktemp("user") / "repo"
    shutil.copytree(USER_PROJECT, repo)
    for args in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "mine"]):
        run(args, repo, stage_venv, **GIT)
    return repo


def snapshot(repo):
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git/" not in p.as_posix() and "/.dvc/tmp/" not in p.as_posix()}


def test_init_then_repro_and_exp_run_in_a_users_repository(user_repo, stage_venv):
    repo, venv = user_repo, stage_venv
    theirs = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    first = run(["kiwi-optim", "init", "--model", "wine.model:WineClassifier", "--data", "wine.model:WineData"],
                repo, venv)
    assert "dvc.yaml: added the stages check, schedule, train" in first.stdout
    written = snapshot(repo)
    again = run(["kiwi-optim", "init", "--model", "wine.model:WineClassifier", "--data", "wine.model:WineData"],
                repo, venv)
    assert "nothing to change" in again.stdout
    assert snapshot(repo) == written  # byte for byte
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert pipeline["stages"]["features"] == theirs["features"] and "plots" in pipeline
    assert {"check", "schedule", "train"} <= set(pipeline["stages"])
    assert "wine" in pipeline["stages"]["train"]["deps"]
    params = (repo / "params.yaml").read_text()
    assert params.startswith("# the team's own params") and "seed: 7   # used by the features stage" in params
    assert ".kiwi-pipe-optim/" in (repo / ".gitignore").read_text()
    # SGD with the template's warm-up: a finding, which check, schedule and train all see and
    # which the whole `dvc repro` prints once
    params = params.replace("max_epochs: 10", "max_epochs: 3").replace("class_name: adamw", "class_name: sgd")
    (repo / "params.yaml").write_text(params.replace("learning_rate: 0.01", "learning_rate: 0.1"))
    run(["git", "add", "-A"], repo, venv)
    run(["git", "commit", "-q", "-m", "kiwi-pipe-optim stages"], repo, venv, **GIT)

    repro = run(["dvc", "repro"], repo, venv)
    said = repro.stdout + repro.stderr
    assert not [noise for noise in NOISE if noise in said], said
    assert said.count(FINDING) == 1, said
    # the data module takes no batch size: the steps are counted from its loader
    assert "optimizer steps (142 examples, batch 32, 3 epochs" in repro.stdout, repro.stdout
    run(["git", "add", "-A"], repo, venv)
    run(["git", "commit", "-q", "-m", "trained"], repo, venv, **GIT)
    exp = run(["dvc", "exp", "run", "-S", "optimizer.learning_rate=0.05"], repo, venv)
    assert (exp.stdout + exp.stderr).count(FINDING) == 1  # other params: said again, once

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kiwi-pipe-optim")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert {r.data.tags["kiwi.lightning_flavor"] for r in runs} == {"pytorch_lightning"}
    assert {r.data.params["optimizer.learning_rate"] for r in runs} == {"0.1", "0.05"}
    planned = (repo / "plots" / "schedule" / "default.csv").read_text().splitlines()[1:]
    for r in runs:  # the LR of both groups at every optimizer step the schedule planned
        for group in ("default", "encoder"):
            history = client.get_metric_history(r.info.run_id, f"lr/{group}")
            assert sorted(m.step for m in history) == [int(row.split(",")[0]) for row in planned], group

    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, venv).stdout)["data"]
    for kind in ("schedule", "lr"):
        for group in ("default", "encoder"):
            assert shown.get(f"plots/{kind}/{group}.csv"), (kind, group, sorted(shown))
