"""MLflow glue: one run per stage execution, metrics buffered and sent in batches.

A synchronous ``log_metric`` on a sqlite store costs milliseconds (several SQL statements and
commits), more than a small model's optimizer step. ``log_batch`` amortises that: measured here,
~100 µs per value in batches of 70 but ~45 µs in batches of 700, since each batch also pays a few
milliseconds of queries and a commit. Sending it from a thread or a process does not help on a
small CPU machine: it competes with torch's own threads for the cores. So values are buffered and
sent synchronously, in few large batches: at an epoch end once ``flush_interval_s`` has passed
since the last send, and always at the end of training and on failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

logger = logging.getLogger("kiwi_pipe_optim")

DEFAULT_DB = "mlflow.db"
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


def tracking_uri(configured: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the params' ``mlflow.tracking_uri``, else a sqlite
    store ``mlflow.db`` at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(urlparse(uri).path if uri.startswith("sqlite:////") else uri[len("sqlite:///"):])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _retrying(call: Any, *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Retry a store call that lost a race for the sqlite write lock."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as e:  # MlflowException wraps sqlalchemy's OperationalError
            if "locked" not in str(e).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2 ** attempt * (1 + random.random()))


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` whose store exists: a new sqlite store is created and migrated once,
    under a file lock, because concurrent first-time migrations corrupt it."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        client = MlflowClient(tracking_uri=uri)
        _retrying(client.search_experiments, max_results=1)
        return client
    with _file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=uri)
        _retrying(client.search_experiments, max_results=1)
    return client


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as DVC names them (``optimizer.learning_rate``), values as MLflow strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


class MlflowRun:
    """One MLflow run with a metric buffer; ``add`` is cheap, ``flush`` sends in batches."""

    def __init__(self, uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str],
                 artifact_root: Path | None = None, flush_interval_s: float = 5.0):
        from mlflow.entities import Metric

        self._metric = Metric
        self.uri = uri
        self.client = client_for(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = None if artifact_root is None else (artifact_root / experiment).resolve().as_uri()
            try:
                experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # another process created it first
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        self.experiment_id = experiment_id
        run = _retrying(self.client.create_run, experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self._buffer: list[Any] = []
        self.sent = 0
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            _retrying(self.client.log_batch, self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            _retrying(self.client.log_batch, self.run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])

    def add(self, key: str, value: float, step: int) -> None:
        self._buffer.append(self._metric(key, float(value), int(time.time() * 1000), int(step)))

    def flush(self, force: bool = True) -> None:
        """Send the buffered values; unless ``force``, only if ``flush_interval_s`` has passed."""
        if not force and time.monotonic() - self._last_flush < self.flush_interval_s:
            return
        self._last_flush = time.monotonic()
        while self._buffer:
            batch = self._buffer[:MAX_METRICS_PER_BATCH]
            _retrying(self.client.log_batch, self.run_id, metrics=batch)
            del self._buffer[:len(batch)]
            self.sent += len(batch)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str) -> None:
        try:
            self.flush()
        finally:
            _retrying(self.client.set_terminated, self.run_id, status)
