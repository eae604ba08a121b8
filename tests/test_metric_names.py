"""Names MLflow refuses are mapped when first logged, said once, and never take the run's other
values with them: MLflow refuses a whole batch for one bad name, at the send."""

import logging

import lightning.pytorch as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name
from torch.utils.data import DataLoader, TensorDataset

from kiwi_pipe_optim.integrations.lightning import lr_monitor, mlflow_logger
from kiwi_pipe_optim.integrations.tracking.names import allowed_name, is_allowed

NAMES = ["val acc@1", "f1 (macro)", "a//b", "/leading", "trailing/", "x/../y", "./x", "é-ok", "l" * 300, "loss%", ""]


@pytest.mark.parametrize("name", NAMES)
def test_a_mapped_name_is_one_mlflow_takes(name):
    mapped = allowed_name(name)
    _validate_metric_name(mapped)  # MLflow's own check: raises if refused
    assert is_allowed(mapped) and len(mapped) <= 250


@pytest.mark.parametrize("name", ["train_loss", "lr/encoder", "val acc", "kiwi/train_loss", "a:b", "x.y-z"])
def test_names_mlflow_takes_are_kept(name):
    _validate_metric_name(name)
    assert allowed_name(name) == name


class Refused(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("acc@1", 1.0 - loss.detach())
        self.log("fine", loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_logging_a_refused_name_keeps_every_value(sqlite_uri, tmp_path, caplog):
    data = DataLoader(TensorDataset(torch.randn(24, 3), torch.randn(24, 1)), batch_size=4)
    logger = mlflow_logger(sqlite_uri, run_name="names", flush_interval_s=0.0)
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[lr_monitor()], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="kiwi_pipe_optim"):
        trainer.fit(Refused(), data)
    said = [r.getMessage() for r in caplog.records if "not a name MLflow takes" in r.getMessage()]
    assert len(said) == 1 and "'acc@1'" in said[0] and "'acc_1'" in said[0]
    client = MlflowClient(sqlite_uri)
    [run] = client.search_runs([client.get_experiment_by_name("kiwi-pipe-optim").experiment_id])
    assert run.info.status == "FINISHED"
    assert "acc@1" not in run.data.metrics, sorted(run.data.metrics)
    lr_key = next(key for key in run.data.metrics if key.startswith("lr/"))
    for key in ("acc_1", "fine", lr_key):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(6)), key


def test_params_and_tags_mlflow_refuses_are_mapped_and_the_others_kept(sqlite_uri, caplog):
    from kiwi_pipe_optim.integrations.tracking.run import MlflowRun

    caplog.set_level(logging.WARNING, "kiwi_pipe_optim")
    with MlflowRun(sqlite_uri, "names", "run", {"team?": "a", "ok": "b"}) as run:
        run.log_params({"data.init_args.path (raw)": "x", "optimizer.learning_rate": "0.1", "long": "v" * 7000})
        run.set_tags({"team?": "again", "note": "n" * 9000})
    stored = MlflowClient(sqlite_uri).get_run(run.run_id).data
    assert stored.params["data.init_args.path _raw_"] == "x" and stored.params["optimizer.learning_rate"] == "0.1"
    assert len(stored.params["long"]) == 6000 and len(stored.tags["note"]) == 8000
    assert stored.tags["team_"] == "again" and stored.tags["ok"] == "b"
    said = [r.getMessage() for r in caplog.records if "is not a name MLflow takes" in r.getMessage()]
    assert sorted(s.split(" ")[0] for s in said) == ["param", "tag"]  # each once
