"""The stage's LR recorder and checkpointer, handed to Lightning as one callback.

Lightning calls every hook of every callback at every step, overridden or not, each through a
profiler context and a few property lookups: six hooks a step, a few µs each in a training
loop's cold caches. For the 8-group benchmark model a second callback cost ~1% of its steps;
the per-batch hooks neither part needs are not callable, and so not called at all.

In the checkpoint the state is the checkpointer's (under its ``state_key`` ``Checkpointer``, as
the two callbacks wrote it), with the recorder's under ``recorder``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


class _StageCallback:
    """Dispatches to the recorder (:class:`.lightning._StepRecorder`) and the checkpointer
    (:class:`.checkpoint._Checkpointer`), the recorder first, as their order was."""

    # Per-batch hooks neither needs: Lightning skips a hook that is not callable, so these cost
    # nothing at all rather than a dispatch each at every step.
    on_before_backward = on_after_backward = on_before_zero_grad = None
    on_validation_batch_start = on_validation_batch_end = None
    on_test_batch_start = on_test_batch_end = on_predict_batch_start = on_predict_batch_end = None

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
        self._batch_start_when_due()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.checkpointer.on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.checkpointer.on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_train_start(trainer, pl_module)
        self.checkpointer.on_train_start(trainer, pl_module)
        self._batch_start_when_due()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.checkpointer.on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._batch_start_when_due()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_validation_start(trainer, pl_module)
        self._batch_start_when_due()

    def _batch_start_when_due(self) -> None:
        """The checkpointer has work at a batch's start only after a save or a restore, the
        optimizer modes only after validation or a save: at every other step the hook is not
        callable, and Lightning does not dispatch it."""
        if self.checkpointer.batch_start_due or self.recorder.modes.train_due:
            self.__dict__.pop("on_train_batch_start", None)
        else:
            self.on_train_batch_start = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.recorder.on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.checkpointer.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._batch_start_when_due()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_train_epoch_end(trainer, pl_module)
        self._batch_start_when_due()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_train_end(trainer, pl_module)


def stage_callback(flavor: ModuleType, recorder: Any, checkpointer: Any) -> Any:
    """A :class:`_StageCallback` that is a ``Callback`` of the given Lightning flavor."""
    cls = type("Checkpointer", (_StageCallback, flavor.Callback), {"__module__": __name__})
    return cls(recorder, checkpointer)
