"""A params mistake stops `dvc repro` at the `check` stage, before DVC deletes the outputs of
the last good run: they stay byte for byte, and no MLflow run is started.

What DVC decides is the same for every mistake: it reruns `check` when any params group that
`check` reads changed, and stops at a failed stage. What differs is whether the `check` command
refuses the mistake. So DVC is asked once (every group changed, one `dvc repro`), and each
mistake is given to the `check` stage's own command, run in this process (seconds saved each)."""

import contextlib
import io
import json
import os
import shlex

import pytest
import yaml
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.cli import main as kiwi_optim
from tests.e2e.conftest import sh

pytestmark = pytest.mark.e2e

OUTPUTS = ["metrics.json", "plots/loss.csv", "plots/lr/default.csv", "plots/lr/encoder.csv", "plots/schedule/default.csv",
           "plots/schedule.png"]
# group: (section, sub-mapping, key, bad value, the dotted key the message names)
MISTAKES = {
    "data": ("data", "init_args", "val_fraction", 7, "data.init_args.val_fraction"),
    "model": ("model", "init_args", "nhead", 3, "model.init_args"),  # the constructor's own assertion
    "trainer": ("trainer", None, "devices", -1, "trainer.devices"),
    "optimizer": ("optimizer", None, "learning_rate", -1, "optimizer.learning_rate"),
    "checkpoint": ("checkpoint", None, "every_n_steps", "often", "checkpoint.every_n_steps"),
}

# What the optimizer's constructor or Lightning would refuse only in `train`, found at `check`
# by building: {section: {key: value}}, the dotted keys the message names.
BUILT = {
    "kwargs_class_ignores_a_typo": ({"optimizer": {"class_name": "pytorch_optimizer:Lion", "learning_rate": 1e-4,
                                                   "options": {"betaz": [0.9, 0.99]}}},
                                    ["optimizer.options.betaz", "betas"]),
    "lion_betas_not_a_pair": ({"optimizer": {"class_name": "pytorch_optimizer:Lion", "learning_rate": 1e-4,
                                             "options": {"betas": 0.9}}}, ["optimizer.options.betas", "0.9"]),
    "fused_clipped_under_mixed_precision": ({"optimizer": {"implementation": "fused"},
                                             "trainer": {"precision": "bf16-mixed", "gradient_clip_val": 1.0}},
                                            ["optimizer.implementation", "trainer.gradient_clip_val"]),
}


def check_stage(repo):
    """The `check` stage's command as dvc.yaml gives it, run in this process in ``repo``."""
    prog, *args = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["check"]["cmd"])
    assert prog == "kiwi-optim", prog
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(repo)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = kiwi_optim(args)
    finally:
        os.chdir(cwd)
    return code, err.getvalue()


def with_mistakes(good, *groups):
    params = yaml.safe_load(good)
    for group in groups:
        section, sub, key, value, _ = MISTAKES[group]
        (params[section][sub] if sub else params[section])[key] = value
    return yaml.safe_dump(params, sort_keys=False)


def test_bad_params_in_any_group_keep_the_last_outputs(repo_factory):
    repo = repo_factory()
    sh(["dvc", "repro"], repo)
    before = {name: (repo / name).read_bytes() for name in OUTPUTS}
    checked = (repo / ".kiwi-pipe-optim/checked.yaml").read_bytes()
    good = (repo / "params.yaml").read_text()
    for group, (_, _, _, _, dotted) in MISTAKES.items():
        (repo / "params.yaml").write_text(with_mistakes(good, group))
        code, stderr = check_stage(repo)
        assert code == 2, group
        assert "params.yaml:" in stderr and dotted in stderr, (group, stderr[-2000:])
        assert "Traceback" not in stderr, group
        assert (repo / ".kiwi-pipe-optim/checked.yaml").read_bytes() == checked, group  # nothing passed on
    for case, (override, named) in BUILT.items():
        params = yaml.safe_load(good)
        for section, values in override.items():
            params[section] = {**params[section], **values}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        code, stderr = check_stage(repo)
        assert code == 2, case
        assert all(word in stderr for word in named), (case, stderr[-2000:])
        assert "Traceback" not in stderr, case
        assert (repo / ".kiwi-pipe-optim/checked.yaml").read_bytes() == checked, case

    # a mistake in one group alone would have DVC run `check` again: it reads every group
    (repo / "params.yaml").write_text(with_mistakes(good, *MISTAKES))
    [changed] = [entry["changed deps"] for entry in json.loads(sh(["dvc", "status", "--json", "check"], repo).stdout)
                 ["check"] if "changed deps" in entry]
    assert {group: "modified" for group in MISTAKES}.items() <= changed["params.yaml"].items(), changed
    result = sh(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "ERROR: failed to reproduce 'check'" in result.stderr, result.stderr[-2000:]
    assert "params.yaml:" in result.stderr
    for group in ("optimizer", "checkpoint"):  # fields of the file itself: every one refused at once
        assert MISTAKES[group][-1] in result.stderr, (group, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == before
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])) == 1
