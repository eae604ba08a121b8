"""What a run logs is what happened: ``train_loss`` as the user computes it (any accumulation),
a module's own ``train_loss`` kept, schedule-free optimizers switched between their modes, the
adapted step size of Prodigy logged, with a real ``Trainer.fit``."""

import copy

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from kiwi_pipe_optim import OptimizerConfig
from kiwi_pipe_optim.integrations.lightning import KiwiOptimizers, attach_config, step_recorder
from tests.test_lightning import fit, loader

pytest.importorskip("schedulefree")
pytest.importorskip("pytorch_optimizer")


class Recording(KiwiOptimizers, L.LightningModule):
    """Returns ``ce + 100 * l2`` and remembers every returned loss with the step it belongs to;
    ``own`` says what it logs under ``train_loss`` itself."""

    def __init__(self, own=None):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 2)
        self.own = own
        self.returned = []  # (optimizer step, loss)

    def training_step(self, batch, _):
        x, y = batch
        ce = nn.functional.cross_entropy(self.head(self.encoder(x).mean(1)), y)
        loss = ce + 100 * sum((p ** 2).sum() for p in self.head.parameters())
        self.returned.append((self.global_step, loss.item()))
        if self.own == "step":
            self.log("train_loss", ce)
        elif self.own == "epoch":
            self.log("train_loss", ce, on_step=False, on_epoch=True)
        return loss


def by_step(pairs):
    out = {}
    for step, value in pairs:
        out.setdefault(step, []).append(value)
    return {step: sum(values) / len(values) for step, values in out.items()}


@pytest.mark.parametrize("accumulate", [1, 3])
def test_train_loss_is_the_mean_of_the_returned_losses_of_each_step(accumulate):
    module = Recording()
    trainer, logged = fit(module, OptimizerConfig(class_name="sgd", learning_rate=0.01), max_steps=-1,
                          max_epochs=3, accumulate=accumulate)
    expected = by_step(module.returned)  # 4 batches an epoch: with 3, every epoch's last step has one batch
    assert len(expected) == trainer.global_step == (12 if accumulate == 1 else 6)
    assert [s for s, _ in logged["train_loss"]] == sorted(expected)
    assert [v for _, v in logged["train_loss"]] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-6)
    assert "kiwi/train_loss" not in logged


def test_a_module_that_logs_train_loss_keeps_its_values_and_ours_moves_aside():
    module = Recording(own="step")
    _, logged = fit(module, OptimizerConfig(class_name="sgd", learning_rate=0.01), max_steps=6)
    returned = by_step(module.returned)
    # the module's ce, not the returned loss that carries 100 * l2
    assert len(logged["train_loss"]) == 6 and all(v < 5 for _, v in logged["train_loss"])
    assert [v for _, v in logged["kiwi/train_loss"]] == pytest.approx([returned[s] for s in range(6)], rel=1e-6)
    assert all(ours > theirs for (_, ours), (_, theirs) in zip(logged["kiwi/train_loss"], logged["train_loss"]))


def test_an_on_epoch_only_train_loss_keeps_its_epoch_means():
    module = Recording(own="epoch")
    trainer, logged = fit(module, OptimizerConfig(class_name="sgd", learning_rate=0.01), max_steps=-1, max_epochs=3)
    assert len(logged["train_loss"]) == 3  # one per epoch, as Lightning logs it
    assert len(logged["kiwi/train_loss"]) == trainer.global_step == 12


class Tiny(L.LightningModule):
    """No dropout, no norm: only the optimizer's modes change what validation sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


class TinyWithMixin(KiwiOptimizers, Tiny):
    pass


def hand_loop(cls, epochs, switch=True, **options):
    """The loop the packages' READMEs describe: ``train()`` before training, ``eval()`` before
    evaluating; the mean validation loss of every epoch."""
    model = Tiny()
    optimizer = cls(model.parameters(), lr=0.01, weight_decay=0.0, **options)
    val = []
    optimizer.train()  # unswitched: train mode throughout (Meta's refuses to step otherwise)
    for _ in range(epochs):
        if switch:
            optimizer.train()
        for x, y in loader():
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        if switch:
            optimizer.eval()
        with torch.no_grad():
            losses = [nn.functional.cross_entropy(model(x), y).item() for x, y in loader()]
        val.append(sum(losses) / len(losses))
    return model, val


SCHEDULE_FREE = ["schedulefree:AdamWScheduleFree", "pytorch_optimizer:ScheduleFreeAdamW"]


@pytest.mark.parametrize("how", ["callback", "mixin"])
@pytest.mark.parametrize("class_name", SCHEDULE_FREE)
def test_schedule_free_optimizers_validate_and_end_on_their_averaged_weights(class_name, how):
    import importlib

    module_name, _, name = class_name.partition(":")
    cls = getattr(importlib.import_module(module_name), name)
    expected_model, expected = hand_loop(cls, epochs=3)
    _, unswitched = hand_loop(cls, epochs=3, switch=False)
    assert expected != pytest.approx(unswitched, rel=1e-6)  # the modes matter here

    config = OptimizerConfig(class_name=class_name, learning_rate=0.01, weight_decay=0.0)
    module = TinyWithMixin() if how == "mixin" else Tiny()
    flavor = L
    attach_config(module, config)
    trainer = flavor.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=2,
                             callbacks=[step_recorder(flavor)] if how == "callback" else [])
    seen = []

    class Watch(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                seen.append(float(trainer.callback_metrics["val_loss"]))

    trainer.callbacks.append(Watch())
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert seen == pytest.approx(expected, rel=1e-5)
    for mine, theirs in zip(module.parameters(), expected_model.parameters()):  # left on the average
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_prodigy_logs_the_step_size_it_adapts_beside_its_constant_lr():
    module = Recording()
    _, logged = fit(copy.deepcopy(module), OptimizerConfig(class_name="pytorch_optimizer:Prodigy",
                                                           learning_rate=1.0), max_steps=6)
    assert [v for _, v in logged["lr/default"]] == [1.0] * 6
    effective = [v for _, v in logged["lr_effective/default"]]
    assert len(effective) == 6 and effective[0] == pytest.approx(1e-6) and effective[-1] > effective[0]


PACKAGE_OPTIMIZERS = {"Lion": 1e-4, "Prodigy": 1.0, "SOAP": 3e-3, "ADOPT": 1e-3, "ScheduleFreeAdamW": 2.5e-3}
PARAMS = """
data: {class_path: kiwi_pipe_optim.examples.digits_data:DigitsDataModule, init_args: {limit: 200}}
model: {class_path: kiwi_pipe_optim.examples.digits:DigitsMLP, init_args: {hidden: 16}}
trainer: {max_epochs: 1}
optimizer: {class_name: "pytorch_optimizer:%s", learning_rate: %r, weight_decay: 0.01}
"""


@pytest.mark.parametrize("name", sorted(PACKAGE_OPTIMIZERS))
def test_pytorch_optimizer_classes_validate_and_train(name, tmp_path, monkeypatch, capsys):
    from kiwi_pipe_optim.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS % (name, PACKAGE_OPTIMIZERS[name]))
    assert main(["validate", "params.yaml"]) == 0
    assert "warning" not in capsys.readouterr().err  # their LR scale is known: no "far above the usual range"
    module = Recording()
    before = [p.detach().clone() for p in module.parameters()]
    config = OptimizerConfig(class_name=f"pytorch_optimizer:{name}", learning_rate=PACKAGE_OPTIMIZERS[name])
    trainer, logged = fit(module, config, max_steps=4)
    assert trainer.global_step == 4 and len(logged["lr/default"]) == 4
    assert type(trainer.optimizers[0]).__name__ == name
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("options, named", [({"betaz": [0.9, 0.99]}, "optimizer.options.betaz: not an option of "
                                             "pytorch_optimizer:Lion (did you mean 'betas'?)"),
                                            ({"betas": 0.9}, "optimizer.options.betas: 0.9 is refused by "
                                             "pytorch_optimizer:Lion: TypeError: 'float' object is not subscriptable")])
def test_validate_builds_the_optimizer_and_names_the_option_it_refuses(options, named, tmp_path, monkeypatch, capsys):
    import yaml

    from kiwi_pipe_optim.cli import main

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(PARAMS % ("Lion", 1e-4))
    params["optimizer"]["options"] = options
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["validate", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
