"""The stage's checkpoint packs optimizer state tensors (fewer objects to pickle at every save):
what resumes from it is bit for bit what was saved, and no other checkpoint is touched."""

import copy
import io
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from kiwi_pipe_optim import OptimizerConfig
from kiwi_pipe_optim.integrations.stage.checkpoint import (
    PACKED,
    Checkpointer,
    pack_optimizer_states,
    unpack_optimizer_states,
)
from kiwi_pipe_optim.integrations.stage.callback import stage_callback
from kiwi_pipe_optim.integrations.lightning import StepRecorder, attach_config


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def stepped(optimizer_class, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].to(torch.float64)  # a second dtype: a second flat tensor
    optimizer = optimizer_class(model.parameters(), **kwargs)
    for _ in range(2):
        optimizer.zero_grad()
        model[1](model[0](torch.randn(5, 3)).double()).sum().backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("optimizer_class, kwargs", [
    (torch.optim.AdamW, {"fused": True}),  # a tensor `step` per parameter
    (torch.optim.AdamW, {"amsgrad": True}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.SGD, {"lr": 0.1}),  # `momentum_buffer: None`, no tensor at all
    (torch.optim.Adafactor, {}),  # factored: 1-d and 2-d tensors of different shapes per parameter
], ids=["adamw-fused", "adamw-amsgrad", "sgd-momentum", "sgd-plain", "adafactor"])
def test_a_packed_state_loads_back_bit_for_bit_through_a_safe_load(optimizer_class, kwargs):
    state = stepped(optimizer_class, **kwargs).state_dict()
    packed = pack_optimizer_states([state])
    tensors = [v for entries in state["state"].values() for v in entries.values() if isinstance(v, torch.Tensor)]
    if tensors:
        assert len(packed[0][PACKED]["tensors"]) == len({t.dtype for t in tensors}) < len(tensors)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    back = unpack_optimizer_states(torch.load(buffer, weights_only=True))[0]
    assert same(back, state)
    assert list(back["state"]) == list(state["state"])
    restored = stepped(optimizer_class, **kwargs)
    restored.load_state_dict(back)
    assert same(restored.state_dict(), state)


def test_what_is_not_an_index_keyed_state_is_left_as_it_is():
    odd = {"state": {"layer.weight": {"exp_avg": torch.ones(2)}}, "param_groups": []}
    assert pack_optimizer_states([odd, "not a dict"]) == [odd, "not a dict"]
    assert unpack_optimizer_states([odd]) == [odd]


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()


def loader():
    return DataLoader(TensorDataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(0))), batch_size=4)


def test_only_the_stage_checkpoint_is_packed_and_a_resume_restores_the_optimizer(tmp_path):
    """A user's ModelCheckpoint in the same run writes what Lightning writes; the stage's own
    checkpoint resumes a Trainer to the optimizer state it saved."""
    config = OptimizerConfig(class_name="adamw", learning_rate=0.01)
    ours = tmp_path / "train.ckpt"

    def trainer(max_steps, callbacks):
        saver = Checkpointer(ours, every_n_steps=3, params={}, config=config)
        hooks = stage_callback(L, StepRecorder(), saver, config, assignment=[])
        return L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", callbacks=[hooks, *callbacks])

    module = Tiny()
    attach_config(module, config)
    users = ModelCheckpoint(dirpath=tmp_path / "user", every_n_train_steps=3, save_top_k=-1)
    first = trainer(7, [users])
    first.fit(module, train_dataloaders=loader())

    saved = torch.load(ours, weights_only=True)
    assert PACKED in saved["optimizer_states"][0] and saved["global_step"] == 6
    user_file = sorted(Path(tmp_path / "user").glob("*step=6.ckpt"))[0]
    plain = torch.load(user_file, weights_only=True)["optimizer_states"][0]
    assert PACKED not in plain and all(isinstance(v, torch.Tensor) for v in plain["state"][0].values())

    resumed_module = Tiny()
    attach_config(resumed_module, config)
    captured = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module):
            captured["state"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # before step 7 changes it

    trainer(7, [Capture()]).fit(resumed_module, train_dataloaders=loader(), ckpt_path=ours)
    assert same(captured["state"], plain)  # the same step's state, as Lightning wrote it unpacked
