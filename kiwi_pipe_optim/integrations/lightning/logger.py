"""A Lightning ``Logger`` that journals every value and sends it to MLflow in batches.

Whatever a module logs with ``self.log`` (step and epoch values, under Lightning's own names
such as ``train_acc_step``), the LR of every param group, hyperparameters: all reach the logger
through Lightning, as with any logger, so a plain ``Trainer(logger=...)`` gets the same run as
the stage. ``log_metrics`` only buffers (tensors stay on their device); at any point of an
epoch, the buffer is appended to the journal often enough for its values to be in MLflow
``flush_interval_s`` seconds after they were logged.

Who sends (``sender``): in the training process, synchronously and in batches, every interval;
or a second process (:mod:`..tracking.sender`) that follows the journal, woken twice a second, the
append then being all the training process does. The process costs a few seconds of CPU to
start (it imports MLflow) and is waited for at the end, which a short run pays for and gains
nothing from: measured on the bundled task (~180 steps), 0.95 of Lightning's speed inline
against 0.61 with the process. A long one gains a quarter of its steps (0.68 against 0.94 on
the 200,000-step benchmark), and so does one of a few seconds past its first send: an inline
send of 5 s of the benchmark model's values takes ~1.5 s; its runs of 2,000 steps took 6.3-7.1 s
with the process against 9.1 s inline, of 5,000 steps 15 s against 20 s. So ``auto`` sends
inline until the first send, and starts the process there if the run has more than
:data:`SENDER_AFTER_S` seconds left at its pace so far (or no known end). A sender thread was measured too: no gain, MLflow's store code holds the GIL.

Both import names of Lightning are served: :func:`kiwi_logger` builds the class for one.
"""

from __future__ import annotations

import functools
import importlib
import time
from argparse import Namespace
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from ..tracking.journal import Journal, Row

SENDER_AFTER_S = 3.0  # less left: the process's start and the wait for it cost more
JUDGED_AFTER_S = 1.0  # the pace of a run's first second (its warm-up) says little


class _KiwiLogger:
    """Mixed into the flavor's ``Logger``; see :func:`kiwi_logger`."""

    def __init__(self, journal: Journal | None = None, tracker: Any = None, flush_interval_s: float = 5.0,
                 owns_run: bool = False, sender: str = "auto"):
        super().__init__()
        self.sender = sender
        self._expected_steps: int | None = None
        self._start: tuple[int, float] | None = None  # the first logged step, and when
        self._step = 0
        self.journal = journal if journal is not None else getattr(tracker, "journal", None)
        self.tracker = tracker
        self.flush_interval_s = flush_interval_s
        self.owns_run = owns_run
        self._buffer: list[Row] = []
        self._last_step: dict[str, int] = {}
        if sender == "process" and tracker is not None:
            tracker.start_sender()
        self._next_flush = time.monotonic() + self._period

    @property
    def name(self) -> str:
        return "kiwi-pipe-optim"

    @property
    def version(self) -> str:
        return self.tracker.run_id if self.tracker is not None else "local"

    @property
    def experiment(self) -> Any:
        """The ``MlflowClient`` of the run (``None`` when MLflow is off)."""
        return None if self.tracker is None else self.tracker.client

    @property
    def run_id(self) -> str | None:
        return None if self.tracker is None else self.tracker.run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        step = int(step or 0)
        now = int(time.time() * 1000)
        if self._start is None:
            self._start = (step, time.monotonic())
        self._step = step
        last, keys, values = self._last_step, [], []
        for key, value in metrics.items():
            if last.get(key, -1) < step:  # the first value of a key at a step wins
                last[key] = step
                keys.append(key)
                values.append(value)
        if keys:
            self._buffer.append((tuple(keys), values, now, step))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def log_row(self, keys: tuple[str, ...], values: list[Any], step: int) -> None:
        """``log_metrics`` for a caller that logs the same keys once a step (the LR recorder),
        without building a dict a step."""
        if self._start is None:
            self._start = (step, time.monotonic())
        self._step = step
        last = self._last_step
        if any([last.get(key, -1) >= step for key in keys]):  # the first value of a key at a step wins
            kept = [(key, value) for key, value in zip(keys, values) if last.get(key, -1) < step]
            if not kept:
                return
            keys, values = tuple(key for key, _ in kept), [value for _, value in kept]
        last.update(dict.fromkeys(keys, step))
        self._buffer.append((keys, values, int(time.time() * 1000), step))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self.tracker is None:
            return
        if isinstance(params, Namespace):
            params = vars(params)
        from ..tracking.store import flatten

        self.tracker.log_params(flatten(dict(params or {})))

    def persist(self) -> int:
        """Journal what is buffered; return the journal's length (what a checkpoint records)."""
        if self.journal is None:
            return 0
        size = self.journal.append_rows(self._buffer)
        self._buffer.clear()
        return size

    @property
    def _period(self) -> float:
        # with a sender, the rest of the interval is its own, to send what was just journaled;
        # every half second at most, so that the end of a run waits for little
        background = self.tracker is not None and self.tracker.background
        return min(self.flush_interval_s / 2, 0.5) if background else self.flush_interval_s

    def expect_steps(self, steps: int | None) -> None:
        """The run's optimizer steps, when known (the stage's LR recorder tells at the start)."""
        self._expected_steps = steps

    def _sender_pays(self) -> bool:
        """Whether the run goes on long enough for a sender process (see the module's docstring)."""
        if self.sender != "auto":
            return self.sender == "process"
        if self._start is None:
            return False
        first_step, started = self._start
        elapsed, done = time.monotonic() - started, self._step - first_step
        if elapsed < JUDGED_AFTER_S or done <= 0:
            return False  # asked again at the next send
        if self._expected_steps is None:
            return True
        return (self._expected_steps - self._step) * elapsed / done > SENDER_AFTER_S

    def flush(self, final: bool = False) -> None:
        """Journal the buffer and send what MLflow lacks (with a sender process: wake it)."""
        self.persist()
        if self.tracker is not None:
            if not final and not self.tracker.sender_tried and self._sender_pays():
                self.tracker.start_sender()
            self.tracker.send()
        self._next_flush = time.monotonic() + self._period

    def save(self) -> None:
        """Lightning calls this after every ``log_metrics``: sending waits for the interval."""

    def finalize(self, status: str) -> None:
        self.flush(final=True)
        if self.owns_run and self.tracker is not None:
            self.tracker.end("FINISHED" if status == "success" else "FAILED")


@functools.cache
def logger_class(flavor: ModuleType) -> type:
    """Our logger as a ``Logger`` of the given Lightning package; its hooks run on rank 0 only."""
    base = importlib.import_module(f"{flavor.__name__}.loggers").Logger
    rank_zero_only = importlib.import_module(f"{flavor.__name__}.utilities").rank_zero_only

    class KiwiLogger(_KiwiLogger, base):
        log_metrics = rank_zero_only(_KiwiLogger.log_metrics)
        log_hyperparams = rank_zero_only(_KiwiLogger.log_hyperparams)
        finalize = rank_zero_only(_KiwiLogger.finalize)

    return KiwiLogger


def kiwi_logger(flavor: ModuleType, **kwargs: Any) -> Any:
    """A :class:`_KiwiLogger` that is a ``Logger`` of the given flavor."""
    return logger_class(flavor)(**kwargs)


def mlflow_logger(tracking_uri: str | None = None, experiment_name: str = "kiwi-pipe-optim",
                  run_name: str | None = None, flush_interval_s: float = 5.0, flavor: str = "lightning.pytorch",
                  tags: Mapping[str, str] | None = None) -> Any:
    """A logger that opens its own MLflow run, for a plain ``Trainer`` outside the stage.

    Example:
        >>> trainer = L.Trainer(logger=mlflow_logger("sqlite:///mlflow.db"),  # doctest: +SKIP
        ...                     callbacks=[lr_monitor()])
    """
    from ..tracking.run import MlflowRun
    from ..tracking.store import tracking_uri as default_uri

    tracker = MlflowRun(tracking_uri or default_uri(None, Path.cwd()), experiment_name, run_name, dict(tags or {}))
    return kiwi_logger(importlib.import_module(flavor), tracker=tracker, flush_interval_s=flush_interval_s,
                       owns_run=True)
