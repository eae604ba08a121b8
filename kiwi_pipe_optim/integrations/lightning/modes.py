"""Optimizers with a train and an eval mode (the schedule-free family), switched as Lightning
has no hook to (Lightning #20441).

Schedule-free optimizers (Defazio et al. 2024, "The Road Less Scheduled", arXiv:2405.15682)
step on one sequence of weights and evaluate on another, their average: ``optimizer.train()``
before training steps, ``optimizer.eval()`` before validation and before the weights are saved.
Meta's ``schedulefree`` refuses to step in eval mode; ``pytorch_optimizer``'s steps silently on
the wrong weights. Lightning calls neither, so validation metrics and checkpoints would be of the
interpolated weights.

The switch back to train mode is made at the next training batch's start, not at validation's
end: a ``ModelCheckpoint`` saving after validation then saves the averaged weights too.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ModalOptimizer(Protocol):
    """An optimizer with modes: ``train()`` before stepping, ``eval()`` before evaluating or saving."""

    def train(self) -> Any: ...

    def eval(self) -> Any: ...


class OptimizerModes:
    """Keeps the trainer's modal optimizers in the mode of what runs next (none: does nothing).

    Both switches are idempotent in the packages that have them, so a module with our mixin in a
    Trainer with our callback switches twice at no harm.
    """

    def __init__(self) -> None:
        self._optimizers: list[ModalOptimizer] = []
        self.train_due = False

    def start(self, trainer: Any) -> None:
        """Training begins (or resumes, from weights saved in eval mode): train mode at the first batch."""
        self._optimizers = [o for o in trainer.optimizers if isinstance(o, ModalOptimizer)]
        self.train_due = bool(self._optimizers)

    def to_train(self) -> None:
        if self.train_due:
            for optimizer in self._optimizers:
                optimizer.train()
            self.train_due = False

    def to_eval(self, trainer: Any | None = None) -> None:
        if trainer is not None and not self._optimizers:  # a sanity check runs before training starts
            self._optimizers = [o for o in trainer.optimizers if isinstance(o, ModalOptimizer)]
        for optimizer in self._optimizers:
            optimizer.eval()
        self.train_due = bool(self._optimizers)
