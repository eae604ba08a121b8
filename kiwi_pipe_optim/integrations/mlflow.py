"""MLflow glue: one run per stage execution, fed in batches from the journal of logged values.

A synchronous ``log_metric`` on a sqlite store costs milliseconds (several SQL statements and
commits), more than a small model's optimizer step. ``log_batch`` amortises that: measured here,
~100 µs per value in batches of 70 but ~45 µs in batches of 700, since each batch also pays a few
milliseconds of queries and a commit. Sending it from a thread or a process does not help on a
small CPU machine: it competes with torch's own threads for the cores. So values are journaled
and sent synchronously, in few large batches, at most every ``flush_interval_s`` seconds, and
always at the end of training and on failure.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from ..errors import ConfigError, Problem
from .journal import Journal, materialize

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


def is_lock_error(error: BaseException) -> bool:
    """Whether a store call lost a race for sqlite's write lock (MLflow wraps sqlalchemy's
    ``OperationalError``, which wraps sqlite3's, in an ``MlflowException``)."""
    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "orig", None) if not isinstance(seen, sqlite3.OperationalError) else seen
        if isinstance(cause, sqlite3.OperationalError):
            return "locked" in str(cause) or "busy" in str(cause)
        seen = seen.__cause__ or seen.__context__
    return False


LOCK_ATTEMPTS = 8


def _retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Retry a store call that lost a race for the sqlite write lock; anything else is raised."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if not is_lock_error(e) or attempt == LOCK_ATTEMPTS - 1:
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
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock")):
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


def check_reachable(uri: str, field: str, timeout: float = 5.0,
                    fix: str = "or unset it to log to sqlite:///mlflow.db") -> None:
    """Fail fast, before any training, when a tracking server cannot be reached.

    Raises:
        ConfigError: naming ``field`` (where the URI came from), the URI and the reason.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answered: authentication and the like are MLflow's to report
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(Problem(field, f"cannot reach the MLflow server at {uri} ({reason}); start it (e.g. "
                                  f"`mlflow server --host 127.0.0.1 --port 5000`), {fix}")) from None


def is_remote(uri: str) -> bool:
    """A tracking server (rather than a store this process writes itself), which may go away."""
    return uri.startswith(("http://", "https://", "databricks"))


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table


class MlflowRun:
    """One MLflow run fed from a :class:`~.journal.Journal`: what is in the journal and not yet
    in MLflow is sent in batches; ``add`` and ``flush`` journal and send values directly.

    With a tracking server, a failed send does not stop training: the values wait in the
    journal and go out with the next successful send, at the latest at the end. If the server
    never comes back, what it lacks is written to a spool file (``spool_dir/<run id>.jsonl``)
    that ``kiwi-optim send-spool FILE`` sends later.
    """

    def __init__(self, uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str],
                 artifact_root: Path | None = None, flush_interval_s: float = 5.0, spool_dir: Path | None = None,
                 resume_run_id: str | None = None, journal: Journal | None = None,
                 already_sent: set[tuple[str, int]] | None = None):
        self.uri = uri
        self.client = client_for(uri)
        self.experiment_id = self._experiment(experiment, artifact_root)
        # Values a resumed run sent after its checkpoint, which it logs again: not sent twice.
        self._stored: set[tuple[str, int]] = set(already_sent or ())
        self._stored_params: dict[str, str] = {}
        run = self._reopen(resume_run_id, tags) if resume_run_id else None
        if run is None:
            run = _retrying(self.client.create_run, self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self._owns_journal = journal is None
        self.journal = journal or Journal(Path(tempfile.mkdtemp(prefix="kiwi-journal-")) / f"{self.run_id}.journal")
        self._buffer: list[Any] = []
        self._pending_params: dict[str, str] = {}
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.spool_path = (spool_dir or Path(".kiwi-pipe-optim") / "spool") / f"{self.run_id}.jsonl"
        self._down_since: float | None = None

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if "mlflow.experimentKind" not in found.tags:
                _retrying(self.client.set_experiment_tag, found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            return found.experiment_id
        location = None if artifact_root is None else (artifact_root / name).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _reopen(self, run_id: str, tags: Mapping[str, str]) -> Any:
        """The crashed run to go on logging into; None only if it is truly gone from the store.

        Any other failure (a locked or broken store, credentials, the network) is refused: a
        resumed run logged into a new MLflow run would silently split one run's curves in two.
        """
        try:
            run = _retrying(self.client.get_run, run_id)
        except Exception as e:
            if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise ConfigError(Problem("checkpoint", f"cannot reopen the MLflow run {run_id} the checkpoint logs to, "
                                          f"in {self.uri} ({reason}); fix the store or its access and run again, or "
                                          f"set checkpoint.resume: false to start afresh")) from e
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            logger.warning("the MLflow run %s of the checkpoint is not in %s (deleted?); logging to a new run",
                           run_id, self.uri)
            return None
        self._stored_params = dict(run.data.params)
        _retrying(self.client.update_run, run_id, status="RUNNING")
        self.set_tags(tags, run_id)
        return run

    def close_interrupted(self, run_id: str) -> None:
        """End a run an interrupted process left RUNNING: KILLED, tagged with this run."""
        try:
            run = _retrying(self.client.get_run, run_id)
            if run.info.status == "RUNNING":
                _retrying(self.client.set_tag, run_id, "kiwi.replaced_by", self.run_id)
                _retrying(self.client.set_terminated, run_id, "KILLED")
                logger.info("the interrupted MLflow run %s is marked KILLED; this run replaces it", run_id)
        except Exception as e:  # gone, or on another server: nothing left to close here
            logger.info("the interrupted MLflow run %s could not be closed (%s)", run_id, str(e).splitlines()[0][:120])

    def log_params(self, params: Mapping[str, str]) -> None:
        for key in [k for k in params if k in self._stored_params]:
            if self._stored_params[key] != params[key]:  # MLflow refuses to change a param
                logger.warning("param %s of the resumed run stays %r (now %r)", key, self._stored_params[key], params[key])
        self._pending_params.update({k: v for k, v in params.items() if k not in self._stored_params})
        self._send_params()

    def _send_params(self) -> None:
        from mlflow.entities import Param

        while self._pending_params:
            chunk = dict(list(self._pending_params.items())[:MAX_PARAMS_PER_BATCH])
            try:
                _retrying(self.client.log_batch, self.run_id, params=[Param(k, v) for k, v in chunk.items()])
            except Exception as e:
                if not is_remote(self.uri):
                    raise
                self._server_down(e)
                return
            for key in chunk:
                del self._pending_params[key]

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = None) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            _retrying(self.client.log_batch, run_id or self.run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])

    def add(self, key: str, value: Any, step: int, timestamp: int | None = None) -> None:
        """Buffer one value (a float, or a tensor moved at the next flush)."""
        self._buffer.append((key, value, int(time.time() * 1000) if timestamp is None else timestamp, int(step)))

    def flush(self, force: bool = True) -> None:
        """Journal the buffered values and send; unless ``force``, only if ``flush_interval_s`` has passed."""
        if not force and time.monotonic() - self._last_flush < self.flush_interval_s:
            return
        self.journal.append(materialize(self._buffer))
        self._buffer.clear()
        self.send()

    def send(self) -> None:
        """Send what the journal holds past what MLflow has; a server that does not answer keeps
        it there for the next send."""
        from mlflow.entities import Metric

        self._last_flush = time.monotonic()
        self._send_params()
        try:
            for offset, values in self.journal.values(self.journal.sent, chunk=MAX_METRICS_PER_BATCH):
                batch = [Metric(*v) for v in values if (v[0], v[3]) not in self._stored]
                if batch:
                    _retrying(self.client.log_batch, self.run_id, metrics=batch)
                self.journal.mark_sent(offset)
        except Exception as e:
            if not is_remote(self.uri):
                raise
            self._server_down(e)
            return
        if self._down_since is not None and not self._pending_params:
            logger.warning("MLflow at %s is back; every spooled value has been sent", self.uri)
            self._down_since = None

    def _server_down(self, error: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            logger.warning("cannot send to MLflow at %s (%s); training goes on, values are kept in %s and sent "
                           "when the server is back", self.uri, reason, self.journal.path)

    def log_text(self, text: str, artifact_file: str) -> None:
        try:
            self.client.log_text(self.run_id, text, artifact_file)
        except Exception:
            if not is_remote(self.uri):
                raise
            logger.warning("could not store the artifact %s of run %s: the MLflow server is unreachable",
                           artifact_file, self.run_id)

    def end(self, status: str) -> None:
        """Send what is left and close the run; if the server is gone, write what it lacks to the spool."""
        try:
            self.flush()
        finally:
            if self._down_since is None:
                try:
                    _retrying(self.client.set_terminated, self.run_id, status)
                    if self._owns_journal:
                        self.journal.delete()
                        self.journal.path.parent.rmdir()
                    return
                except Exception as e:
                    if not is_remote(self.uri):
                        raise
                    self._server_down(e)
            self._write_spool(status)

    def _write_spool(self, status: str) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with open(self.spool_path, "w") as f:
            f.write(json.dumps({"run_id": self.run_id, "uri": self.uri}) + "\n")
            for _, values in self.journal.values(self.journal.sent, chunk=MAX_METRICS_PER_BATCH):
                rows = [list(v) for v in values if (v[0], v[3]) not in self._stored]
                count += len(rows)
                f.write(json.dumps({"metrics": rows}) + "\n")
            if self._pending_params:
                f.write(json.dumps({"params": self._pending_params}) + "\n")
            f.write(json.dumps({"status": status}) + "\n")
        logger.error("MLflow at %s is unreachable: the end of run %s (status %s) and %d values are in %s; "
                     "send them with `kiwi-optim send-spool %s` once it is back", self.uri, self.run_id, status,
                     count, self.spool_path, self.spool_path.resolve())


def send_spool(path: str | Path, uri: str | None = None) -> tuple[str, int]:
    """Send a spool file written while a tracking server was unreachable; delete it when done.

    Returns:
        The run id and the number of metric values sent.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    header, records = read_spool(path)
    check_reachable(uri or header["uri"], "--tracking-uri" if uri else f"{path}:1: uri",
                    fix="or give the server's URI with --tracking-uri")
    uri = uri or header["uri"]
    client = MlflowClient(tracking_uri=uri)
    run_id = header["run_id"]
    metrics = [Metric(*row) for r in records for row in r.get("metrics", [])]
    params = {k: v for r in records for k, v in r.get("params", {}).items()}
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
    statuses = [r["status"] for r in records if "status" in r]
    if statuses:
        client.set_terminated(run_id, statuses[-1])
    Path(path).unlink()
    return run_id, len(metrics)


def read_spool(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header (run id, tracking URI) and the records of a spool file, checked line by line.

    Raises:
        ConfigError: the file is missing, or a line is not what the stage writes.
    """
    fix = "give a file the stage wrote to .kiwi-pipe-optim/spool/"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(Problem("", f"{path}: cannot read it ({type(e).__name__}); {fix}")) from None
    lines: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or (not lines and not {"run_id", "uri"} <= set(record)):
            raise ConfigError(Problem("", f"{path}:{number}: not a spool record ({line[:60]!r}); {fix}"))
        lines.append(record)
    if not lines:
        raise ConfigError(Problem("", f"{path}: the file is empty; {fix}"))
    return lines[0], lines[1:]
