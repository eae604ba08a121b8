"""Four stage runs at once against one sqlite MLflow store that none of them finds: they race to
create it and its tables, then to write, and every value is stored. (Writing into an existing
store is what the rest of the suite does, one run at a time.)"""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import tool_env

# four processes at once: alone on one xdist worker, not beside another test's processes
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serial")]


def test_four_concurrent_runs_create_one_store_and_store_every_value(repo_factory, tmp_path):
    store = tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    repos = [repo_factory({"optimizer": {"learning_rate": 0.001 * (i + 1)}}, name=f"r{i}") for i in range(4)]
    assert not store.exists()  # for one of them to create
    procs = [subprocess.Popen([sys.executable, "stages/train.py"], cwd=r, env=tool_env(MLFLOW_TRACKING_URI=uri),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in repos]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(float(r.data.params["optimizer.learning_rate"]) for r in runs) == [0.001, 0.002, 0.003, 0.004]
    for run in runs:
        counts = {key: len(client.get_metric_history(run.info.run_id, key))
                  for key in ("lr/default", "lr/encoder", "train_loss", "val_loss", "val_acc")}
        assert counts == {"lr/default": 10, "lr/encoder": 10, "train_loss": 10, "val_loss": 2, "val_acc": 2}
