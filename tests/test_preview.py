"""Preview: step counting as Lightning does it, and curves equal to what a real run logs."""

import csv
import json
import subprocess

import jsonschema
import lightning.pytorch as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from kiwi_pipe_optim import OptimizerConfig
from kiwi_pipe_optim.integrations.stage.params import load_stage_params, params_schema
from kiwi_pipe_optim.integrations.stage.classes import import_class, model_on_meta
from kiwi_pipe_optim.resolve import model_size_of
from kiwi_pipe_optim.integrations.stage import run as run_stage
from kiwi_pipe_optim.integrations.stage.steps import run_steps_from_params, stepping_batches
from kiwi_pipe_optim.preview import curves, sample_steps, write_csv
from kiwi_pipe_optim.resolve import resolve_for
from tests.conftest import BIN, ROOT, committed


class Nothing(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w * batch[0].sum()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("size, batch, epochs, accumulate, limit, max_steps, drop_last", [
    (1438, 64, 10, 1, None, -1, False),
    (1438, 64, 3, 4, None, -1, False),
    (100, 7, 2, 3, None, -1, True),
    (100, 7, 5, 2, 0.5, -1, False),
    (100, 7, 5, 1, 4, -1, False),
    (100, 10, 50, 1, None, 23, False),
])
def test_step_count_matches_lightning(size, batch, epochs, accumulate, limit, max_steps, drop_last):
    data = DataLoader(TensorDataset(torch.zeros(size, 1)), batch_size=batch, drop_last=drop_last)
    kwargs = {} if limit is None else {"limit_train_batches": limit}
    trainer = L.Trainer(max_epochs=epochs, max_steps=max_steps, accumulate_grad_batches=accumulate, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    trainer.fit(Nothing(), train_dataloaders=data)
    expected = stepping_batches(size, batch, epochs, accumulate, 1, max_steps, limit, drop_last)
    assert expected == trainer.global_step


def test_world_size_splits_the_data():
    # 1438 examples over 2 processes: 719 each, 12 batches of 64, 6 optimizer steps per epoch
    assert stepping_batches(1438, 64, 10, accumulate=2, world_size=2) == 60


FAST = {
    "data": {"class_path": "kiwi_pipe_optim.examples.digits_data:DigitsDataModule",
             "init_args": {"batch_size": 32, "limit": 300, "seed": 1}},
    "model": {"class_path": "kiwi_pipe_optim.examples.digits:DigitsTransformer",
              "init_args": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 16}},
    "trainer": {"max_epochs": 3, "accumulate_grad_batches": 2, "enable_progress_bar": False,
                "enable_model_summary": False, "accelerator": "cpu"},
    "mlflow": {"enabled": False},
}
OPTIMIZERS = {
    "noam": {"class_name": "noam", "learning_rate": 1.5, "warmup_steps": 6},
    "linear": {"class_name": "adamw", "learning_rate": 3e-3, "warmup_steps": 0.2},
    "cosine": {"class_name": "sgd", "learning_rate": 0.1, "scheduler": "cosine", "warmup_steps": 3,
               "final_lr_ratio": 0.1},
    "encoder": {"class_name": "adam", "learning_rate": 2e-3, "encoder_learning_rate": 4e-4, "scheduler": "linear",
                "warmup_steps": 2},
}


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], [[float(v) for v in row] for row in rows[1:]]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_preview_equals_the_lrs_a_real_run_logs(name, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**FAST, "optimizer": OPTIMIZERS[name]}))
    params = load_stage_params(path)
    steps, _ = run_steps_from_params(params)
    write_csv(tmp_path / "preview.csv", curves(params.optimizer, steps, model_size_of(model_on_meta(import_class(params.model, "model"), params.model))))
    metrics = run_stage(path, tmp_path)
    assert metrics["steps"] == steps  # 240 examples, batches of 32, pairs: 4 steps an epoch
    preview_header, preview = read_csv(tmp_path / "preview.csv")
    assert sorted(p.stem for p in (tmp_path / "plots" / "lr").glob("*.csv")) == sorted(preview_header[1:])
    for column, group in enumerate(preview_header[1:], 1):
        header, logged = read_csv(tmp_path / "plots" / "lr" / f"{group}.csv")
        assert header == ["step", "lr"] and len(logged) == len(preview) == steps
        for got, want in zip(logged, preview):
            assert got == pytest.approx([want[0], want[column]], rel=1e-12, abs=1e-18)


class NoSizeAttribute(torch.nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Linear(hidden, hidden),
                                        torch.nn.Linear(hidden, 10))


def test_preview_and_the_run_decide_the_model_size_the_same_way(tmp_path):
    """Declared (``model_size``) or not (the most common last dimension), from the params' model
    built on the meta device, as from_config finds it on the real one."""
    for class_path, init_args, size in (("kiwi_pipe_optim.examples.digits:DigitsTransformer", {"d_model": 12}, 12),
                                        ("tests.test_preview:NoSizeAttribute", {"hidden": 24}, 24)):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({**FAST, "model": {"class_path": class_path, "init_args": init_args},
                                        "optimizer": OPTIMIZERS["noam"]}))
        params = load_stage_params(path)
        model = import_class(params.model, "model")(**init_args)
        on_meta = model_on_meta(import_class(params.model, "model"), params.model)
        assert model_size_of(on_meta) == resolve_for(params.optimizer, model).model_size == size


def test_long_runs_are_sampled_keeping_key_steps():
    index = sample_steps(1_000_000, 1000, keep=(12_345, 777_777))
    assert index[0] == 0 and index[-1] == 999_999 and 12_345 in index and 777_777 in index
    assert len(index) < 1100


def test_preview_cli_writes_csv_and_png(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**FAST, "optimizer": OPTIMIZERS["noam"]}))
    out = subprocess.run([str(BIN / "kiwi-optim"), "preview", str(path), "--csv", str(tmp_path / "s.csv"),
                          "--png", str(tmp_path / "s.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ("schedule: noam, 12 optimizer steps (240 examples, batch 32, 3 epochs, "
                                          "accumulate 2, 1 process(es))")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["step", "default"] and len(rows) == 12
    assert max(rows, key=lambda r: r[1])[0] == 5  # peak at s = step + 1 = warmup


def test_preview_of_a_million_steps_keeps_the_csv_small(tmp_path):
    # Its speed (< 0.5 s) is measured by benchmarks/run.py, side by side with stepping LambdaLR.
    config = OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=0.01, scheduler="cosine")
    result = curves(config, 1_000_000)
    write_csv(tmp_path / "s.csv", result)
    assert result.lrs["default"].shape == (1_000_000,)
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["step", "default"] and len(rows) <= 5001
    assert rows[0][0] == 0 and rows[-1][0] == 999_999 and max(r[1] for r in rows) == 1e-3


def test_schema_accepts_the_repository_params_and_rejects_a_typo():
    schema = params_schema()
    assert json.loads((ROOT / "params.schema.json").read_text()) == schema, "run: kiwi-optim schema -o params.schema.json"
    params = yaml.safe_load(committed("params.yaml"))
    jsonschema.validate(params, schema)
    params["optimizer"]["class_name"] = "adamm"
    with pytest.raises(jsonschema.ValidationError, match="'adamm' is not valid under any of the given schemas"):
        jsonschema.validate(params, schema)
    params["optimizer"]["class_name"] = "my_project.optim:SignSGD"  # an import path: its own pattern
    jsonschema.validate(params, schema)
    params["optimizer"]["class_name"] = "adam"
    params["optimizer"]["learnig_rate"] = 0.1
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        jsonschema.validate(params, schema)
    assert "# yaml-language-server: $schema=params.schema.json" in committed("params.yaml")


def test_groups_cli_prints_the_table(tmp_path):
    path = tmp_path / "params.yaml"
    rules = [{"name": "embed", "match": "encoder.embed", "lr": 0.01}, {"name": "head", "match": "head", "lr_scale": 2}]
    path.write_text(yaml.safe_dump({**FAST, "optimizer": {"class_name": "adamw", "learning_rate": 1e-3,
                                                          "weight_decay": 0.1, "param_groups": rules}}))
    out = subprocess.run([str(BIN / "kiwi-optim"), "groups", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line.replace("│", " ").split() for line in out.stdout.splitlines()]
    assert ["encoder.embed.weight", "16x8", "embed", "0.01", "0.1"] in lines
    assert ["encoder.embed.bias", "16", "embed", "0.01", "0"] in lines
    assert ["head.weight", "10x16", "head", "0.002", "0.1"] in lines
    assert ["encoder.position", "8x16", "default", "0.001", "0.1"] in lines
