"""A params mistake stops `dvc repro` at the `check` stage, before DVC deletes the outputs of
the last good run: they stay byte for byte, and no MLflow run is started."""

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import sh

pytestmark = pytest.mark.e2e

OUTPUTS = ["metrics.json", "plots/loss.csv", "plots/lr/default.csv", "plots/lr/encoder.csv", "plots/schedule.csv",
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


def test_bad_params_in_any_group_keep_the_last_outputs(repo_factory):
    repo = repo_factory()
    sh(["dvc", "repro"], repo)
    before = {name: (repo / name).read_bytes() for name in OUTPUTS}
    good = (repo / "params.yaml").read_text()
    for group, (section, sub, key, value, dotted) in MISTAKES.items():
        params = yaml.safe_load(good)
        (params[section][sub] if sub else params[section])[key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = sh(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0, group
        assert "params.yaml:" in result.stderr and dotted in result.stderr, (group, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, group
        assert {name: (repo / name).read_bytes() for name in OUTPUTS} == before, group
    for case, (override, named) in BUILT.items():
        params = yaml.safe_load(good)
        for section, values in override.items():
            params[section] = {**params[section], **values}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = sh(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0, case
        assert "ERROR: failed to reproduce 'check'" in result.stderr, (case, result.stderr[-2000:])
        assert all(word in result.stderr for word in named), (case, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, case
        assert {name: (repo / name).read_bytes() for name in OUTPUTS} == before, case
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])) == 1
