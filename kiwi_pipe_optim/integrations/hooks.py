"""The stage's LR recorder and checkpointer, handed to Lightning as one callback.

Lightning calls every hook of every callback at every step, overridden or not, each through a
profiler context and a few property lookups: six hooks a step, a few µs each in a training
loop's cold caches. For the 8-group benchmark model a second callback cost ~1% of its steps.

In the checkpoint the state is the checkpointer's (under its ``state_key`` ``Checkpointer``, as
the two callbacks wrote it), with the recorder's under ``recorder``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


class _StageCallback:
    """Dispatches to the recorder (:class:`.lightning._StepRecorder`) and the checkpointer
    (:class:`.checkpoint._Checkpointer`), the recorder first, as their order was."""

    def __init__(self, recorder: Any, checkpointer: Any):
        super().__init__()
        self.recorder = recorder
        self.checkpointer = checkpointer

    def state_dict(self) -> dict[str, Any]:
        return {**self.checkpointer.state_dict(), "recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checkpointer.load_state_dict(state)
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_train_start(trainer, pl_module)
        self.checkpointer.on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.checkpointer.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.recorder.on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.checkpointer.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_train_end(trainer, pl_module)


def stage_callback(flavor: ModuleType, recorder: Any, checkpointer: Any) -> Any:
    """A :class:`_StageCallback` that is a ``Callback`` of the given Lightning flavor."""
    cls = type("Checkpointer", (_StageCallback, flavor.Callback), {"__module__": __name__})
    return cls(recorder, checkpointer)
