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

Outside the stage, :func:`mlflow_logger_class` gives ``KiwiMLflowLogger``, which owns its run: a
class LightningCLI can name, that opens the run at its first use, so that building a Trainer or a
CLI that fails leaves no run at all, and ends it at ``finalize``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import random
import time
from argparse import Namespace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Mapping

from ...errors import ConfigError
from ..tracking.journal import Journal, Row
from ..tracking.names import NameMap
from .named import named

logger = logging.getLogger("kiwi_pipe_optim")

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
        self._named = NameMap()  # what MLflow refuses is mapped before it is journaled
        self._row_names: dict[tuple[str, ...], tuple[str, ...]] = {}
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
        last, keys, values, named = self._last_step, [], [], self._named
        for key, value in metrics.items():
            key = named(key)
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
        keys = self._row_names.get(keys) or self._row_names.setdefault(keys, tuple(map(self._named, keys)))
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


LOG_CHECKPOINTS = ("none", "last", "best", "all")
LOCAL_DIR = Path(".kiwi-pipe-optim") / "lightning"  # under the working directory; one folder a run


class _RunLogger(_KiwiLogger):
    """An MLflow logger that owns its run, for a plain ``Trainer`` or LightningCLI.

    It sends the values logged with ``self.log``, the LR and loss of ``KiwiLRMonitor``, the
    hyperparameters, the CLI's ``config.yaml`` and, on request, checkpoints (see the module's
    docstring for how values travel).

    The run is opened at its first use (the run id, the log directory, the first values): a
    Trainer or CLI that fails while being built leaves no run. ``finalize`` ends it, FINISHED or
    FAILED; a later ``trainer.test`` reopens the same run and ends it again.

    ``log_dir`` (``save_dir``) is ``<local_dir>/<run id>``, a folder of its own for each run, where
    LightningCLI's ``SaveConfigCallback`` writes ``config.yaml``; the YAML files there are
    stored as artifacts under ``config/``. ``ModelCheckpoint`` without a ``dirpath`` saves under
    ``<log_dir>/<experiment_name>/<run id>/checkpoints``.

    Args:
        tracking_uri: the MLflow store or server; default ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db`` in the working directory.
        experiment_name: the MLflow experiment, created if missing.
        run_name: the run's name; default, one MLflow makes up.
        tags: more tags for the run, next to MLflow's ``mlflow.source.name``, ``mlflow.source.type``,
            ``mlflow.user`` and ``mlflow.source.git.commit``.
        flush_interval_s: values are in MLflow at most this many seconds after they were logged.
        log_checkpoints: which ``ModelCheckpoint`` files to store as artifacts (``checkpoints/``):
            ``none``, ``last`` (the newest, at the end), ``best`` (``best_model_path``, at the end)
            or ``all`` (each as it is saved).
        local_dir: where each run's ``log_dir`` is made; default ``.kiwi-pipe-optim/lightning``.

    Example:
        >>> trainer = L.Trainer(logger=KiwiMLflowLogger("sqlite:///mlflow.db"),  # doctest: +SKIP
        ...                     callbacks=[KiwiLRMonitor()])
    """

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "kiwi-pipe-optim",
                 run_name: str | None = None, tags: dict[str, str] | None = None, flush_interval_s: float = 5.0,
                 log_checkpoints: Literal["none", "last", "best", "all"] = "none", local_dir: str | None = None):
        from ..tracking.store import tracking_uri as default_uri

        if log_checkpoints not in LOG_CHECKPOINTS:
            raise ValueError(f"log_checkpoints: {log_checkpoints!r} is none of {', '.join(LOG_CHECKPOINTS)}")
        super().__init__(flush_interval_s=flush_interval_s, owns_run=True)
        self.tracking_uri = tracking_uri or default_uri(None, Path.cwd())
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_checkpoints = log_checkpoints
        self.local_dir = Path(local_dir or LOCAL_DIR).absolute()
        self._ended: Any = None  # the run an earlier finalize ended
        self._open_failed = False
        self._checkpointers: dict[str, Any] = {}  # ModelCheckpoint proxies, by state key
        self._stored: dict[Path, float] = {}  # files stored as artifacts, with the mtime they had

    @staticmethod
    def _rank_zero() -> bool:
        return True  # replaced per flavor

    def _open(self) -> Any:
        """The run, opened now if it is not (again after an earlier ``finalize``); None off rank 0."""
        if self.tracker is not None or not self._rank_zero():
            return self.tracker
        from ..tracking.run import MlflowRun, source_tags
        from ..tracking.store import check_reachable, is_remote, sqlite_path

        uri, db = self.tracking_uri, sqlite_path(self.tracking_uri)
        root = None if is_remote(uri) else (db.parent if db is not None else Path.cwd()) / "mlartifacts"
        kept = random.getstate()
        random.seed()  # MLflow draws run names from Python's generator: not from the user's seeded one
        try:
            check_reachable(uri, "tracking_uri", fix="or pass another tracking_uri")
            tracker = MlflowRun(uri, self.experiment_name, self.run_name, {**source_tags(), **self.tags},
                                artifact_root=root, resume_run_id=self._ended.run_id if self._ended else None)
        except Exception as e:
            self._open_failed = True
            if isinstance(e, ConfigError):  # a server that does not answer: its message says so already
                raise
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"tracking_uri: cannot open an MLflow run at {uri} "
                               f"({type(e).__name__}: {reason})") from e
        finally:
            random.setstate(kept)
        self.tracker, self.journal = tracker, tracker.journal
        logger.info("MLflow run %s (%s) in %s", tracker.run_name, tracker.run_id, uri)
        return tracker

    def _current(self) -> Any:
        """The run that names things (the open one, else the one ended), opening one only if none was."""
        return self.tracker or self._ended or self._open()

    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str:
        run = self._current()
        return run.run_id if run is not None else ""

    @property
    def run_id(self) -> str | None:
        run = self._current()
        return None if run is None else run.run_id

    @property
    def experiment(self) -> Any:
        """The ``MlflowClient`` of the run (``None`` off rank 0)."""
        run = self._current()
        return None if run is None else run.client

    @property
    def save_dir(self) -> str:
        run = self._current()
        return str(self.local_dir / run.run_id) if run is not None else str(self.local_dir)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._open()
        _KiwiLogger.log_hyperparams(self, params, *args, **kwargs)
        self._store_configs()

    def flush(self, final: bool = False) -> None:
        if self.tracker is None and not self._open_failed:
            self._open()
        if self.tracker is not None:
            _KiwiLogger.flush(self, final)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.log_checkpoints not in ("last", "best", "all"):
            return
        self._checkpointers[checkpoint_callback.state_key] = checkpoint_callback
        if self.log_checkpoints == "all":
            self._open()
            self._store([path for _, path in _checkpoint_files(checkpoint_callback)], "checkpoints")

    def _store(self, paths: list[Path], artifact_dir: str) -> None:
        """Store the files not stored yet, or changed since (a checkpoint saved again under its name)."""
        for path in paths:
            mtime = path.stat().st_mtime
            if self._stored.get(path) != mtime:
                self.tracker.log_artifact(path, artifact_dir)
                self._stored[path] = mtime

    def _store_configs(self) -> None:
        """What LightningCLI's ``SaveConfigCallback`` wrote into ``log_dir`` (``config.yaml``; one file
        per config file given, with ``multifile``)."""
        folder = Path(self.save_dir)
        if self.tracker is not None and folder.is_dir():
            self._store(sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()), "config")

    def _store_checkpoints(self) -> None:
        for callback in list(self._checkpointers.values()):
            try:
                files = _checkpoint_files(callback)
                best = Path(callback.best_model_path) if getattr(callback, "best_model_path", "") else None
            except ReferenceError:  # the callback is gone with its trainer
                continue
            if self.log_checkpoints == "all":
                self._store([path for _, path in files], "checkpoints")
            elif self.log_checkpoints == "last" and files:
                self._store([files[-1][1]], "checkpoints")
            elif self.log_checkpoints == "best" and best is not None and best.is_file():
                self._store([best], "checkpoints")
                self.tracker.set_tags({"kiwi.best_checkpoint": f"checkpoints/{best.name}"})

    def finalize(self, status: str) -> None:
        if self.tracker is None and (self._open_failed or not (self._buffer or self._checkpointers)):
            return  # nothing to end, nor anything that would need a run
        tracker = self._open()
        if tracker is None:
            return
        try:
            self._store_configs()
            self._store_checkpoints()
        finally:
            self._checkpointers.clear()
            _KiwiLogger.finalize(self, status)
            self._ended, self.tracker, self.journal = tracker, None, None


def _checkpoint_files(callback: Any) -> list[tuple[float, Path]]:
    """The files a ``ModelCheckpoint`` keeps (its last, its best, its top k), oldest first."""
    paths = {getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""),
             *getattr(callback, "best_k_models", {})}
    found = [Path(p) for p in paths if p and Path(p).is_file()]
    return sorted((p.stat().st_mtime, p) for p in found)


@functools.cache
def mlflow_logger_class(flavor: ModuleType) -> type:
    """``KiwiMLflowLogger`` (:class:`_RunLogger`), a ``Logger`` of the given Lightning package,
    as LightningCLI names it (``kiwi_pipe_optim.integrations.lightning.KiwiMLflowLogger``, or
    ``kiwi_pipe_optim.integrations.pytorch_lightning.KiwiMLflowLogger``); rank 0 logs."""
    rank_zero_only = importlib.import_module(f"{flavor.__name__}.utilities").rank_zero_only

    class KiwiMLflowLogger(_RunLogger, logger_class(flavor)):
        __doc__ = _RunLogger.__doc__
        log_hyperparams = rank_zero_only(_RunLogger.log_hyperparams)
        finalize = rank_zero_only(_RunLogger.finalize)
        after_save_checkpoint = rank_zero_only(_RunLogger.after_save_checkpoint)

        @staticmethod
        def _rank_zero() -> bool:
            return getattr(rank_zero_only, "rank", 0) == 0

    return named(KiwiMLflowLogger, flavor, "KiwiMLflowLogger")


def mlflow_logger(tracking_uri: str | None = None, experiment_name: str = "kiwi-pipe-optim",
                  run_name: str | None = None, flush_interval_s: float = 5.0, flavor: str = "lightning.pytorch",
                  tags: Mapping[str, str] | None = None) -> Any:
    """A ``KiwiMLflowLogger`` of the ``flavor`` package, for a plain ``Trainer`` outside the stage.

    Example:
        >>> trainer = L.Trainer(logger=mlflow_logger("sqlite:///mlflow.db"),  # doctest: +SKIP
        ...                     callbacks=[lr_monitor()])
    """
    return mlflow_logger_class(importlib.import_module(flavor))(
        tracking_uri, experiment_name, run_name, dict(tags or {}), flush_interval_s)
