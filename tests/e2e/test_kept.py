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
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])) == 1
