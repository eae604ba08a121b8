"""MLflow glue: one run per stage execution, fed in batches from the journal of logged values.

A synchronous ``log_metric`` on a sqlite store costs milliseconds (several SQL statements and
commits), more than a small model's optimizer step. ``log_batch`` amortises that: measured here,
~100 µs per value in batches of 70 but ~45 µs in batches of 700, since each batch also pays a few
milliseconds of queries and a commit. Even so, sending in the training process cost the 8-group
benchmark model a quarter of its steps (MLflow's ORM work for every value), and a sender thread
did not help (the GIL). So the stage sends from a second process (:mod:`.sender`) that follows
the journal; :class:`MlflowRun` sends synchronously only without one (``kiwi-optim``'s own
uses, a sender that died).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, Problem
from .journal import Journal
from .store import check_reachable, client_for, is_remote, retrying

logger = logging.getLogger("kiwi_pipe_optim")

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table
SERVER_DOWN_STATUS = 3  # the sender process's exit status when a tracking server did not answer


class MetricSender:
    """Sends what a journal holds past its ``sent`` marker to one run, in batches of up to
    :data:`MAX_METRICS_PER_BATCH`, marking each batch sent; in the training process or in the
    sender process. ``skip``: the ``(key, step)`` a resumed run logs again that MLflow holds."""

    def __init__(self, uri: str, run_id: str, journal: Journal, skip: set[tuple[str, int]], client: Any = None):
        self.uri = uri
        self.run_id = run_id
        self.journal = journal
        self.skip = skip
        self._client = client
        self.down_since: float | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def send_metrics(self) -> None:
        from mlflow.entities import Metric

        for offset, values in self.journal.values(self.journal.sent, chunk=MAX_METRICS_PER_BATCH):
            batch = [Metric(*v) for v in values if (v[0], v[3]) not in self.skip]
            if batch:
                retrying(self.client.log_batch, self.run_id, metrics=batch)
            self.journal.mark_sent(offset)

    def server_down(self, error: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            logger.warning("cannot send to MLflow at %s (%s); training goes on, values are kept in %s and sent "
                           "when the server is back", self.uri, reason, self.journal.path)

    def server_back(self) -> None:
        if self.down_since is not None:
            logger.warning("MLflow at %s is back; every spooled value has been sent", self.uri)
            self.down_since = None


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
            run = retrying(self.client.create_run, self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self._owns_journal = journal is None
        self.journal = journal or Journal(Path(tempfile.mkdtemp(prefix="kiwi-journal-")) / f"{self.run_id}.journal")
        self._buffer: list[Any] = []
        self._pending_params: dict[str, str] = {}
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.spool_path = (spool_dir or Path(".kiwi-pipe-optim") / "spool") / f"{self.run_id}.jsonl"
        self._metrics = MetricSender(uri, self.run_id, self.journal, self._stored, client=self.client)
        self._sender: Any = None
        self._lock_fd: int | None = None
        self.sender_tried = False

    @property
    def _down_since(self) -> float | None:
        return self._metrics.down_since

    @_down_since.setter
    def _down_since(self, value: float | None) -> None:
        self._metrics.down_since = value

    @property
    def background(self) -> bool:
        """Whether a sender process sends the metrics (see :mod:`.sender`)."""
        return self._sender is not None

    def hold_lock(self, fd: int) -> None:
        """Keep the journal's lock (see :func:`.sender.lock_journal`) until the end of the run, or
        pass it to the sender process when one starts."""
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def start_sender(self) -> None:
        """Send metrics from a second process from now on, which takes over the journal's lock.
        Once per run: where it cannot start, or dies, this process goes on sending."""
        from .sender import Sender

        if not self.sender_tried:
            self.sender_tried = True
            try:
                self._sender = Sender(self.journal, self.uri, self.run_id, self._stored, self._lock_fd)
            except OSError as e:
                logger.warning("no MLflow sender process (%s); values are sent from the training process", e)
                return
            self._release_lock()  # the sender's copy holds it until it has sent the journal

    def _stop_sender(self) -> int:
        """Wait for the sender to send what is journaled; its exit status."""
        status, self._sender = self._sender.stop(), None
        if status == SERVER_DOWN_STATUS:
            if self._down_since is None:  # it has said so
                self._down_since = time.monotonic()
        elif status != 0:
            logger.warning("the MLflow sender process exited with status %s; the training process sends from now on",
                           status)
        return status

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if "mlflow.experimentKind" not in found.tags:
                retrying(self.client.set_experiment_tag, found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
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
            run = retrying(self.client.get_run, run_id)
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
        retrying(self.client.update_run, run_id, status="RUNNING")
        self.set_tags(tags, run_id)
        return run

    def close_interrupted(self, run_id: str) -> None:
        """End a run an interrupted process left RUNNING: KILLED, tagged with this run."""
        try:
            run = retrying(self.client.get_run, run_id)
            if run.info.status == "RUNNING":
                retrying(self.client.set_tag, run_id, "kiwi.replaced_by", self.run_id)
                retrying(self.client.set_terminated, run_id, "KILLED")
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
                retrying(self.client.log_batch, self.run_id, params=[Param(k, v) for k, v in chunk.items()])
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
            retrying(self.client.log_batch, run_id or self.run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])

    def add(self, key: str, value: Any, step: int, timestamp: int | None = None) -> None:
        """Buffer one value (a float, or a tensor moved at the next flush)."""
        self._buffer.append((key, value, int(time.time() * 1000) if timestamp is None else timestamp, int(step)))

    def flush(self, force: bool = True) -> None:
        """Journal the buffered values and send; unless ``force``, only if ``flush_interval_s`` has passed."""
        if not force and time.monotonic() - self._last_flush < self.flush_interval_s:
            return
        self.journal.append(self._buffer)
        self._buffer.clear()
        self.send()

    def send(self) -> None:
        """Send what the journal holds past what MLflow has (with a sender process: wake it); a
        server that does not answer keeps it there for the next send."""
        self._last_flush = time.monotonic()
        self._send_params()
        if self._sender is not None:
            if self._sender.wake():
                return
            self._stop_sender()
        try:
            self._metrics.send_metrics()
        except Exception as e:
            if not is_remote(self.uri):
                raise
            self._server_down(e)
            return
        if self._down_since is not None and not self._pending_params:
            logger.warning("MLflow at %s is back; every spooled value has been sent", self.uri)
            self._down_since = None

    def _server_down(self, error: Exception) -> None:
        self._metrics.server_down(error)

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
            self.journal.append(self._buffer)
            self._buffer.clear()
            if self._sender is None or self._stop_sender() != SERVER_DOWN_STATUS:
                self.send()
        finally:
            self._release_lock()
            if self._down_since is None:
                try:
                    retrying(self.client.set_terminated, self.run_id, status)
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
