"""Preemption: SIGTERM (what SLURM and Kubernetes send before they kill), SLURM's SIGUSR1 or a first Ctrl-C stops
the run at the next optimizer step boundary, with a checkpoint of that step.

The stop is taken where the stage's periodic checkpoints are saved (the end of a training batch
that stepped, or the end of an epoch, after its validation), so a preempted run resumes as
exactly as one killed after a periodic save. Lightning's own SIGTERM handling stops at the end of
the batch instead, after the LR schedulers have stepped, and saves nothing; it is replaced while
this process trains alone. Under DDP, where the ranks must agree on the step, Lightning's stays:
the run ends KILLED there too, resuming from its last periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

# SIGUSR1: what SLURM sends ahead of a pre-emption or time limit (`--signal=USR1@90`); the handler
# installed before ours (Lightning's SLURM requeue) is still called for it.
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGUSR1: "SIGUSR1"}


class Preempted(SystemExit):
    """The run stopped on a signal at a step boundary, its checkpoint saved. A ``SystemExit``:
    Lightning tears the fit down and lets it through, and the MLflow run ends KILLED."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        name = NAMES.get(self.signum, f"signal {self.signum}")
        return (f"stopped by {name} at step {self.step}, checkpoint saved; the MLflow run is marked KILLED: "
                f"run again to resume from step {self.step}")


class StopRequest:
    """Catches the signals while installed; :attr:`signum` is the first one caught. A second
    Ctrl-C stops at once (Python's ``KeyboardInterrupt``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        for signum in NAMES:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._caught)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR1 and callable(previous):
            previous(signum, frame)
