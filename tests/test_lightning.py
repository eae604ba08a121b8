"""Every registry entry inside a real ``Trainer.fit``, under both Lightning import names."""

import lightning.pytorch as L
import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as PL
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kiwi_pipe_optim import OptimizerConfig, list_optimizers
from kiwi_pipe_optim.integrations.tracking.journal import Journal
from kiwi_pipe_optim.integrations.lightning import (KiwiOptimizers, attach_config, flavor_of, resolved_schedule,
                                                    step_recorder)
from kiwi_pipe_optim.integrations.logger import kiwi_logger
from kiwi_pipe_optim.schedules import multiplier

SECTIONS = {
    "sgd": dict(learning_rate=0.1, options={"momentum": 0.9}),
    "averaged_sgd": dict(learning_rate=0.1),
    "adam": dict(learning_rate=1e-3),
    "noam": dict(learning_rate=1.0, warmup_steps=2),
    "sparse_adam": dict(learning_rate=1e-2),
    "adamw": dict(learning_rate=1e-3, warmup_steps=0.5),
    "adagrad": dict(learning_rate=0.1),
    "adadelta": dict(learning_rate=1.0),
    "adamax": dict(learning_rate=2e-3),
    "rmsprop": dict(learning_rate=1e-3),
    "nadam": dict(learning_rate=2e-3, scheduler="cosine"),
    "radam": dict(learning_rate=1e-3, options={"decoupled_weight_decay": True}, weight_decay=0.01),
    "adafactor": dict(learning_rate=1e-2, scheduler="constant", warmup_steps=2),
    "rprop": dict(learning_rate=1e-2),
    "lbfgs": dict(learning_rate=0.5, options={"max_iter": 3, "line_search_fn": "strong_wolfe"}),
    "muon": dict(learning_rate=0.02, warmup_steps=2, training_steps=4, scheduler="linear"),
}


def tiny_module(base, sparse=False, hidden=False):
    class Tiny(KiwiOptimizers, base):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(10, 8, sparse=sparse)
            self.hidden = nn.Linear(8, 8) if hidden else nn.Identity()
            self.head = nn.Linear(8, 2)
            self.model_size = 8
            if sparse:  # SparseAdam needs every trained parameter to get sparse gradients
                self.head.requires_grad_(False)
                self.hidden.requires_grad_(False)

        def forward(self, x):
            return self.head(self.hidden(self.encoder(x).mean(1)))

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    return Tiny()


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 10, (32, 4), generator=g)
    y = torch.randint(0, 2, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def curves(journal):
    """Every logged key's ``[(step, value), ...]``, read back from the journal."""
    out = {}
    for (key, value, _, step) in next(journal.values(chunk=10**9), (0, []))[1]:
        out.setdefault(key, []).append((step, value))
    return out


def fit(module, config, max_steps=4, max_epochs=None, accumulate=1):
    """Train with our logger (journal only, no MLflow) and the step recorder; return the curves."""
    flavor = flavor_of(module)
    attach_config(module, config)
    journal = Journal(Path(tempfile.mkdtemp()) / "journal")
    run_logger = kiwi_logger(flavor, journal=journal, flush_interval_s=0)
    trainer = flavor.Trainer(max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=accumulate,
                             logger=run_logger, log_every_n_steps=1, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[step_recorder(flavor)],
                             accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    run_logger.persist()
    return trainer, curves(journal)


def test_every_registry_entry_has_a_section_here():
    assert sorted(SECTIONS) == list_optimizers()


@pytest.mark.parametrize("base", [L.LightningModule, PL.LightningModule], ids=["lightning.pytorch", "pytorch_lightning"])
@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_optimizer_trains_in_lightning(name, base):
    torch.manual_seed(0)
    module = tiny_module(base, sparse=name == "sparse_adam", hidden=True)
    before = [p.detach().clone() for p in module.parameters()]
    config = OptimizerConfig(class_name=name, **SECTIONS[name])
    trainer, logged = fit(module, config)
    assert trainer.global_step == 4
    assert [step for step, _ in logged["lr/default"]] == [0, 1, 2, 3]
    assert isinstance(trainer.optimizers[0], type(trainer.optimizers[0]))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    resolved = resolved_schedule(trainer.optimizers[0])
    if resolved.name != "none":
        f = multiplier(resolved)
        assert [lr for _, lr in logged["lr/default"]] == pytest.approx(
            [config.learning_rate * f(s) for s in range(4)])


def test_sparse_adam_with_dense_gradients_is_a_clear_error():
    module = tiny_module(L.LightningModule, sparse=False)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients, please consider Adam instead"):
        fit(module, OptimizerConfig(class_name="sparse_adam", learning_rate=1e-2))


def test_plateau_in_lightning_monitors_val_loss():
    module = tiny_module(L.LightningModule)
    config = OptimizerConfig(class_name="sgd", learning_rate=1e-6, learning_rate_decay=0.5, learning_rate_decay_start=0)
    trainer, logged = fit(module, config, max_steps=-1, max_epochs=4)
    config_entry = trainer.lr_scheduler_configs[0]
    assert (config_entry.interval, config_entry.monitor) == ("epoch", "val_loss")
    # an LR of 1e-6 cannot improve val_loss: the first epoch sets the best value, then with
    # patience 0 the LR halves after every epoch
    per_epoch = [lr for step, lr in logged["lr/default"] if step % 4 == 0]
    assert per_epoch == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7], rel=1e-9, abs=0)


def test_training_steps_come_from_the_trainer_with_accumulation():
    module = tiny_module(L.LightningModule)
    config = OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=0.25)
    trainer, logged = fit(module, config, max_steps=-1, max_epochs=3, accumulate=2)
    # 4 batches per epoch, 2 per optimizer step, 3 epochs: 6 optimizer steps
    resolved = resolved_schedule(trainer.optimizers[0])
    assert resolved.training_steps == 6 == trainer.global_step
    assert resolved.warmup_steps == 2
    assert [s for s, _ in logged["lr/default"]] == list(range(6))
    assert [s for s, _ in logged["train_loss"]] == list(range(6))


def test_pytorch_lightning_flavor_trains_with_its_own_trainer():
    module = tiny_module(PL.LightningModule)
    assert flavor_of(module) is PL
    trainer, logged = fit(module, OptimizerConfig(class_name="noam", learning_rate=1.0, warmup_steps=2))
    assert isinstance(trainer, PL.Trainer) and trainer.global_step == 4
    assert len(logged["lr/default"]) == 4 and logged["momentum/default"] == [(0, 0.9)]  # Adam's beta1, once


def test_module_without_configure_optimizers_gets_ours():
    class Plain(PL.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch, _):
            return self.layer(batch[0].float()).sum()

    module = Plain()
    assert not attach_config(module, OptimizerConfig(class_name="sgd", learning_rate=0.1))  # nothing replaced
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_a_module_with_its_own_configure_optimizers_gets_ours_as_lightningcli_does():
    from lightning.pytorch.demos.boring_classes import BoringModel

    module = BoringModel()
    assert attach_config(module, OptimizerConfig(class_name="adam", learning_rate=0.003))
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.003


def test_flavor_of_rejects_plain_modules():
    with pytest.raises(TypeError, match=r"torch.nn.modules.linear.Linear is not a LightningModule"):
        flavor_of(nn.Linear(2, 2))


def test_a_row_and_a_dict_logged_at_one_step_keep_the_first_value_of_each_key(tmp_path):
    """The LR observer hands our logger rows; Lightning hands it the module's ``self.log`` dicts.
    A key both log at one step (a module that logs ``train_loss`` itself) is journaled once."""
    journal = Journal(tmp_path / "journal")
    log = kiwi_logger(L, journal=journal, flush_interval_s=1e9)
    log.log_row(("lr/default", "train_loss"), [0.1, torch.tensor(2.0)], step=0)
    log.log_metrics({"train_loss": 9.0, "train_acc": 0.5}, step=0)
    log.log_metrics({"lr/default": 0.2}, step=1)
    log.log_row(("lr/default", "train_loss"), [9.0, torch.tensor(3.0)], step=1)
    log.log_row(("lr/default",), [9.0], step=1)
    log.persist()
    assert sorted(curves(journal).items()) == [("lr/default", [(0, 0.1), (1, 0.2)]), ("train_acc", [(0, 0.5)]),
                                               ("train_loss", [(0, 2.0), (1, 3.0)])]
