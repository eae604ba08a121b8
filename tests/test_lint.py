import subprocess

import lightning.pytorch as L
import pytest
import torch

from kiwi_pipe_optim import OptimizerConfig
from kiwi_pipe_optim.examples.digits import DigitsTransformer
from kiwi_pipe_optim.integrations.stage.model_lint import lint_model, logged_metrics
from kiwi_pipe_optim.lint import lint, resolve_errors
from tests.conftest import BIN


class NoEncoder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 2)

    def validation_step(self, batch, _):
        self.log_dict({"val_f1": 1.0, "val_recall": 0.5})


def messages(section, run_steps=None, model_cls=None):
    config = OptimizerConfig(**section)
    found = lint(config, run_steps) + (lint_model(config, model_cls) if model_cls else [])
    return [str(f) for f in found]


def test_warmup_longer_than_the_run():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 500}, run_steps=230) == [
        "error: optimizer.warmup_steps: 500 steps is longer than the run (230 optimizer steps); use at most 230, "
        "or a fraction such as 0.1"]
    assert [str(f) for f in resolve_errors(OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=500),
                                           230, None)] == [
        "error: optimizer.warmup_steps: 500 steps is longer than training_steps (230); use at most 230 steps, "
        "or a fraction in [0, 1]"]


def test_warmup_one_means_the_whole_run():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 1}) == [
        "warning: optimizer.warmup_steps: 1 means a fraction of 1.0: warm-up over the whole run, so the LR only "
        "reaches its peak at the last step; write 1.0 if that is meant, or a step count >= 2"]
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 1.0}) == []


def test_fraction_rounding_to_zero_steps():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 0.001}, run_steps=230) == [
        "warning: optimizer.warmup_steps: 0.001 of 230 steps rounds to 0 steps: no warm-up at all; use at least "
        "0.0043 or a step count"]


def test_schedule_ends_before_the_trainer():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "training_steps": 100}, run_steps=230) == [
        "warning: optimizer.training_steps: the linear schedule reaches 0 at step 100 but the trainer runs 230 steps: "
        "the last 130 steps do not learn; remove training_steps to follow the trainer, or set it to 230"]


def test_schedule_never_decays():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "training_steps": 12000}, run_steps=230) == [
        "warning: optimizer.training_steps: the linear schedule decays over 12000 steps but the trainer stops after "
        "230: it never decays fully (it ends near 98% of the way up); remove training_steps to follow the trainer, "
        "or set it to 230"]


@pytest.mark.parametrize("name, lr, message", [
    ("adam", 0.5, "0.5 is far above the usual range of adam (1e-06 to 0.01)"),
    ("sgd", 1e-7, "1e-07 is far below the usual range of sgd (0.0001 to 2)"),
])
def test_learning_rate_far_outside_the_usual_range(name, lr, message):
    assert messages({"class_name": name, "learning_rate": lr}) == [
        f"warning: optimizer.learning_rate: {message}; check the exponent (OpenKiwi's guide: sgd 1, adagrad 0.1, "
        "adadelta 1, adam 0.001)"]


def test_plateau_monitor_the_model_never_logs():
    section = {"class_name": "adam", "learning_rate": 1e-3, "learning_rate_decay": 0.5, "monitor": "val_los"}
    assert messages(section, model_cls=DigitsTransformer) == [
        "warning: optimizer.monitor: plateau monitors 'val_los' but DigitsTransformer never logs it (it logs: "
        "train_loss, val_acc, val_loss); set optimizer.monitor to one of them"]
    assert messages({**section, "monitor": "val_acc", "mode": "max"}, model_cls=DigitsTransformer) == []
    assert logged_metrics(NoEncoder) == {"val_f1", "val_recall"}


def test_encoder_learning_rate_without_an_encoder_stops_preview_and_stage(tmp_path, capsys):
    """Checked on the model itself (built on the meta device by preview), not guessed from source;
    both commands in this process (their scripts' exit paths are test_bad_params.py's)."""
    import yaml

    from kiwi_pipe_optim.cli import main as kiwi_optim
    from kiwi_pipe_optim.integrations.stage import main as train
    from tests.test_preview import FAST

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**FAST, "model": {"class_path": "tests.test_lint:NoEncoder"},
                                    "optimizer": {"class_name": "adam", "learning_rate": 1e-3,
                                                  "encoder_learning_rate": 1e-4}}))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "encoder_learning_rate" in text)
    for command in (lambda: kiwi_optim(["preview", str(path)]), lambda: train(["--params", str(path)])):
        code = command()
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.strip().splitlines()[-1] == (
            f"{path}:{line}: optimizer.encoder_learning_rate: 0.0001 is set, but NoEncoder has no 'encoder' submodule; "
            "remove encoder_learning_rate or give the model an 'encoder' attribute")


def test_validate_prints_lint_once(write_params):
    path = write_params("optimizer: {class_name: adamw, learning_rate: 5, warmup_steps: 1}\n")
    out = subprocess.run([str(BIN / "kiwi-optim"), "validate", str(path)], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stderr.splitlines() == [
        f"{path}:1: warning: optimizer.warmup_steps: 1 means a fraction of 1.0: warm-up over the whole run, so the LR only "
        "reaches its peak at the last step; write 1.0 if that is meant, or a step count >= 2",
        f"{path}:1: warning: optimizer.learning_rate: 5.0 is far above the usual range of adamw (1e-06 to 0.01); check the "
        "exponent (OpenKiwi's guide: sgd 1, adagrad 0.1, adadelta 1, adam 0.001)",
    ]


def test_warmup_as_long_as_the_run():
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 230}, run_steps=230) == [
        "warning: optimizer.warmup_steps: warm-up of 230 steps covers the whole run of 230 steps: the LR never "
        "reaches its peak; use fewer steps, such as 23"]
    assert messages({"class_name": "adamw", "learning_rate": 1e-3, "warmup_steps": 229}, run_steps=230) == []


@pytest.mark.parametrize("monitor, mode, expected", [
    ("val_loss", "max", "min"), ("val_acc", "min", "max"), ("f1_macro", "min", "max"),
])
def test_mode_against_the_direction_of_the_monitored_metric(monitor, mode, expected):
    section = {"class_name": "sgd", "learning_rate": 0.1, "learning_rate_decay": 0.5, "monitor": monitor,
               "mode": mode}
    assert messages(section) == [
        f"warning: optimizer.mode: {mode} with monitor '{monitor}': plateau would reduce the LR while {monitor} "
        f"improves; use mode: {expected}"]
    assert messages({**section, "mode": expected}) == []
    assert messages({**section, "monitor": "custom_score", "mode": mode}) == []
