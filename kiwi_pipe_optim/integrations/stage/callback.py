"""The stage's one Lightning callback: the LR and loss recorder, the checkpointer and the record
of what was resolved, called in the order they must act.

One callback rather than three: Lightning calls every hook of every callback at every step,
each through a profiler context and a few property lookups.

In the checkpoint the state is the checkpointer's, with the recorder's under ``recorder``.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Any

from ...config import OptimizerConfig
from ...param_groups import Assignment
from ..lightning import StepRecorder, resolved_schedule
from .checkpoint import Checkpointer
from .preemption import Preempted, StopRequest
from .tags import log_resolved


class StageHooks:
    """What the stage does at Lightning's hooks; :func:`stage_callback` makes it a ``Callback``.

    ``tracker``: the MLflow run the resolved schedule is logged to at the start of training
    (``None`` with MLflow off, and on every rank but 0). ``trial``: the sweep's trial this run
    is (:class:`..study.trial.TrialLink`), told the metric at every validation.
    """

    def __init__(self, recorder: StepRecorder, checkpointer: Checkpointer, config: OptimizerConfig,
                 assignment: list[Assignment], tracker: Any = None, trial: Any = None):
        super().__init__()
        self.recorder = recorder
        self.checkpointer = checkpointer
        self.config = config
        self.assignment = assignment
        self.tracker = tracker
        self.trial = trial
        self.stop = StopRequest()
        self._stop_at: int | None = None  # the step saved for a stop, ended at the next batch's start

    def state_dict(self) -> dict[str, Any]:
        return {**self.checkpointer.state_dict(), "recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checkpointer.load_state_dict(state)
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.checkpointer.on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.checkpointer.on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None and trainer.is_global_zero:
            optimizers = list(trainer.optimizers)
            resolved = resolved_schedule(optimizers[0]) if optimizers else None
            log_resolved(self.tracker, self.config, self.assignment, resolved, optimizers)
        self.recorder.on_train_start(trainer, pl_module)
        self.checkpointer.on_train_start(trainer, pl_module)
        if trainer.world_size == 1:  # after Lightning's own handlers are in place (see .preemption)
            self.stop.install()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.checkpointer.on_train_batch_start(trainer, pl_module, batch, batch_idx)  # journals the step's values
        if self._stop_at is not None:
            raise Preempted(self.stop.signum or 0, self._stop_at)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.trial is not None and not trainer.sanity_checking and self.trial.after_validation(trainer):
            trainer.should_stop = True  # pruned: the fit ends as at its last step, and the outputs are written

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.recorder.on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.recorder.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.checkpointer.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.stop.signum is not None:
            last = batch_idx + 1 >= trainer.num_training_batches
            if not last and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # else: at the next boundary
                self._stop(trainer, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.checkpointer.on_train_epoch_end(trainer, pl_module)
        if self.stop.signum is not None and trainer.current_epoch + 1 != trainer.max_epochs:
            self._stop(trainer, math.inf)

    def _stop(self, trainer: Any, consumed: float) -> None:
        """Save this step (unless just saved); the fit ends at the next batch's start, once
        Lightning has logged what the module logged for this step (a run at its last step
        finishes instead)."""
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        if self._stop_at is not None or last_step:
            return
        if self.checkpointer.saved_step != trainer.global_step:
            self.checkpointer.save(trainer, consumed)
        self._stop_at = trainer.global_step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.stop.restore()
        self.recorder.on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.stop.restore()


@functools.cache
def callback_class(flavor: ModuleType) -> type:
    """:class:`StageHooks` as a ``Callback`` of the given Lightning package."""

    class StageCallback(StageHooks, flavor.Callback):
        """The stage's hooks, as a callback of this Lightning package."""

    return StageCallback


def stage_callback(flavor: ModuleType, recorder: StepRecorder, checkpointer: Checkpointer, config: OptimizerConfig,
                   assignment: list[Assignment], tracker: Any = None, trial: Any = None) -> Any:
    return callback_class(flavor)(recorder, checkpointer, config, assignment, tracker, trial)
