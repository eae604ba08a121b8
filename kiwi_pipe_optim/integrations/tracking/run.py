"""One MLflow run, fed from the journal of logged values, with MLflow's lifecycle: RUNNING while
it is open, then FINISHED, FAILED or KILLED, never left RUNNING (a context manager).

Who sends: the training process synchronously, in batches (:mod:`.transport`), or a second
process (:mod:`.sender`) that follows the journal. Sending in the training process cost the
8-group benchmark model a quarter of its steps (MLflow's ORM work for every value), and a sender
thread did not help (the GIL); the logger decides when the process pays for its start
(:mod:`kiwi_pipe_optim.integrations.lightning.logger`).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from ...errors import ConfigError, Problem
from .journal import RECORD, Journal
from .spool import write_spool
from .names import NameMap
from .store import MAX_PARAM_LENGTH, client_for, retrying
from .transport import MAX_PARAMS_PER_BATCH, SERVER_DOWN_STATUS, MetricSender, tolerating_down

logger = logging.getLogger("kiwi_pipe_optim")

# MLflow's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT: a UI without the GenAI / Model training switch opens such an
# experiment on its runs table; one with it (3.17) follows the switch alone, which `kiwi-optim ui` sets.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
CLI_NAME = "kiwi-optim"
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag's value


def source_name(argv: list[str] | None = None) -> str:
    """What MLflow's "Source" column names: ``kiwi-optim <command>``, a script's path (relative to
    the working directory when inside it, as ``stages/train.py``), ``python -m <package>``, or a
    console script's name."""
    argv = sys.argv if argv is None else argv
    first = argv[0] if argv else ""
    path = Path(first)
    if path.name == CLI_NAME or path.parts[-3:] == ("kiwi_pipe_optim", "cli", "__main__.py"):
        return " ".join([CLI_NAME, *argv[1:2]])
    if first in ("", "-c"):
        return "python"
    if path.name == "__main__.py":
        return f"python -m {path.parent.name}"
    if path.suffix == ".py":
        try:
            return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            return path.name
    return path.name


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no login name and no passwd entry (containers)
        return os.environ.get("USER") or "unknown"


def source_tags(name: str | None = None) -> dict[str, str]:
    """MLflow's own tags of where a run came from, which its UI shows as "Source" and "Created by"
    and which MLflow's fluent API would set (we create runs through the client, which does not).
    Resolved here rather than by MLflow's context registry, whose default names the script by its
    absolute path and whose git lookup imports GitPython."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    tags = {MLFLOW_SOURCE_NAME: name or source_name(), MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: _user()}
    commit = git_commit(Path.cwd())
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


class TrackingError(RuntimeError):
    """MLflow refused what a run sent; the message says where the values are kept."""


def ensure_experiment(client: Any, uri: str, name: str, artifact_root: Path | None) -> str:
    """The id of the MLflow experiment ``name``, created (with its artifacts under
    ``artifact_root`` for a local store) if need be, and marked as model development, not GenAI.

    Raises:
        ConfigError: the experiment is deleted.
    """
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(Problem("mlflow.experiment_name", f"the MLflow experiment {name!r} (id "
                                  f"{found.experiment_id}) is deleted in {uri}; restore it (in the UI, or "
                                  f"`mlflow experiments restore --experiment-id {found.experiment_id}`) or name "
                                  f"another experiment"))
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():
            if found.tags.get(key) != value:  # untagged, or marked GenAI (by hand, or an older UI's guess)
                retrying(client.set_experiment_tag, found.experiment_id, key, value)
        return found.experiment_id
    location = None if artifact_root is None else (artifact_root / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowRun:
    """One MLflow run fed from a :class:`~.journal.Journal`: what is in the journal and not yet
    in MLflow is sent in batches.

    With a tracking server, a failed send does not stop training: the values wait in the
    journal and go out with the next successful send, at the latest at the end. If the server
    never comes back, what it lacks is written to a spool file (``spool_dir/<run id>.jsonl``)
    that ``kiwi-optim send-spool FILE`` sends later.

    ``lock_fd``: the journal's lock (:func:`.sender.lock_journal`), held by the caller for the
    whole run; a sender process gets a copy, so the lock stays held until it has sent everything.
    """

    def __init__(self, uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str],
                 artifact_root: Path | None = None, spool_dir: Path | None = None,
                 resume_run_id: str | None = None, journal: Journal | None = None,
                 already_sent: set[tuple[str, int]] | None = frozenset(), lock_fd: int | None = None):
        self.uri = uri
        self._param_names, self._tag_names = NameMap("param"), NameMap("tag")  # one refused name refuses a batch
        self.client = client_for(uri)
        self.experiment_id = self._experiment(experiment, artifact_root)
        # Values a resumed run sent after its checkpoint, which it logs again: not sent twice.
        self._stored: set[tuple[str, int]] = set(already_sent or ())
        self._stored_params: dict[str, str] = {}
        run = self._reopen(resume_run_id, tags) if resume_run_id else None
        if run is None:
            run = retrying(self.client.create_run, self.experiment_id, run_name=run_name,
                           tags={self._tag_names(k): str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()})
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self._owns_journal = journal is None
        self.journal = journal or Journal(Path(tempfile.mkdtemp(prefix="kiwi-journal-")) / f"{self.run_id}.journal")
        self._settle_sent(run, resume_run_id, already_sent is None)
        self._pending_params: dict[str, str] = {}
        self.spool_path = (spool_dir or Path(".kiwi-pipe-optim") / "spool") / f"{self.run_id}.jsonl"
        self._metrics = MetricSender(uri, self.run_id, self.journal, self._stored, client=self.client)
        self._lock_fd = lock_fd
        self._sender: Any = None
        self.sender_tried = False

    def __enter__(self) -> MlflowRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.end("FINISHED")
        elif issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self.end("KILLED")
        else:
            first = str(error).splitlines()[0] if str(error) else ""
            try:
                self.set_tags({"kiwi.error": f"{kind.__name__}: {first}"[:5000]})
            except Exception as e:  # the run's end, and the error itself, matter more than the tag
                logger.warning("could not tag run %s with its error (%s)", self.run_id, type(e).__name__)
            self.end("FAILED")

    @property
    def background(self) -> bool:
        """Whether a sender process sends the metrics (see :mod:`.sender`)."""
        return self._sender is not None

    def start_sender(self) -> None:
        """Send metrics from a second process from now on. Once per run: where it cannot start,
        or dies, this process goes on sending."""
        from .sender import Sender

        if self.sender_tried:
            return
        self.sender_tried = True
        try:
            self._sender = Sender(self.journal, self.uri, self.run_id, self._stored, self._lock_fd)
        except OSError as e:
            logger.warning("no MLflow sender process (%s); values are sent from the training process", e)

    def _stop_sender(self) -> int:
        """Wait for the sender to send what is journaled; its exit status."""
        status, self._sender = self._sender.stop(), None
        if status == SERVER_DOWN_STATUS:
            if self._metrics.down_since is None:  # it has said so
                self._metrics.down_since = time.monotonic()
        elif status != 0:
            logger.warning("the MLflow sender process exited with status %s; the training process sends from now on",
                           status)
        return status

    def _settle_sent(self, run: Any, resume_run_id: str | None, unknown: bool) -> None:
        """Make the journal's sent marker true for this run. A run that replaces a gone one gets
        the whole journal; a resumed run whose marker cannot say gets what MLflow lacks."""
        journal = self.journal
        journal.run_id = self.run_id
        if resume_run_id is not None and resume_run_id != self.run_id:
            self._stored = set()
            journal.mark_sent(0)
            self._end_gone(resume_run_id)
            logger.warning("the MLflow run %s of the checkpoint is gone from %s (deleted, or another store); the "
                           "whole run, %d values from its journal, is logged to the new run %s", resume_run_id,
                           self.uri, journal.size // RECORD.itemsize, self.run_id)
        elif resume_run_id is not None and (unknown or journal.sent_known() is None):
            self._stored = self._held(run)
            journal.mark_sent(0)
            logger.warning("the journal's record of what MLflow holds is missing or damaged; MLflow holds %d "
                           "values of run %s, and only the rest is sent", len(self._stored), self.run_id)
        elif journal.sent_known() is None:
            journal.mark_sent(0)

    def _held(self, run: Any) -> set[tuple[str, int]]:
        """Every ``(key, step)`` MLflow holds for ``run``: what the journal need not send."""
        held: set[tuple[str, int]] = set()
        for key in run.data.metrics:
            held.update((key, m.step) for m in retrying(self.client.get_metric_history, run.info.run_id, key))
        return held

    def _end_gone(self, run_id: str) -> None:
        """A run deleted in the UI keeps its RUNNING status, which MLflow will not change while
        it is deleted: restored for a moment, marked KILLED and replaced, then deleted again."""
        try:
            old = retrying(self.client.get_run, run_id)
        except Exception:  # not in this store at all
            return
        if old.info.status != "RUNNING":
            return
        deleted = old.info.lifecycle_stage == "deleted"
        try:
            if deleted:
                retrying(self.client.restore_run, run_id)
            retrying(self.client.set_tag, run_id, "kiwi.replaced_by", self.run_id)
            retrying(self.client.set_terminated, run_id, "KILLED")
        except Exception as e:
            logger.info("the MLflow run %s could not be marked KILLED (%s)", run_id, str(e).splitlines()[0][:120])
        finally:
            if deleted:
                with contextlib.suppress(Exception):
                    retrying(self.client.delete_run, run_id)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        return ensure_experiment(self.client, self.uri, name, artifact_root)

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
        params = {self._param_names(k): v[:MAX_PARAM_LENGTH] for k, v in params.items()}
        for key in [k for k in params if k in self._stored_params]:
            if self._stored_params[key] != params[key]:  # MLflow refuses to change a param
                logger.warning("param %s of the resumed run stays %r (now %r)", key, self._stored_params[key], params[key])
        self._pending_params.update({k: v for k, v in params.items() if k not in self._stored_params})
        self._send_params()

    def _send_params(self) -> None:
        from mlflow.entities import Param

        while self._pending_params:
            chunk = dict(list(self._pending_params.items())[:MAX_PARAMS_PER_BATCH])
            if not tolerating_down(self.uri, self._metrics.server_down, retrying, self.client.log_batch, self.run_id,
                                   params=[Param(k, v) for k, v in chunk.items()]):
                return
            for key in chunk:
                del self._pending_params[key]

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = None) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(self._tag_names(k), str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            retrying(self.client.log_batch, run_id or self.run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])

    def send(self) -> None:
        """Send what the journal holds past what MLflow has (with a sender process: wake it); a
        server that does not answer keeps it there for the next send."""
        self._send_params()
        if self._sender is not None:
            if self._sender.wake():
                return
            self._stop_sender()
        sent = tolerating_down(self.uri, self._metrics.server_down, self._metrics.send_metrics)
        if sent and not self._pending_params:
            self._metrics.server_back()

    def log_text(self, text: str, artifact_file: str) -> None:
        def unstored(error: Exception) -> None:
            logger.warning("could not store the artifact %s of run %s: the MLflow server is unreachable",
                           artifact_file, self.run_id)

        tolerating_down(self.uri, unstored, self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        """Store a file (a checkpoint, a config) under ``artifact_dir``; with the server gone, a
        warning, as for a text artifact: the run's values matter more than a copy of a local file."""
        def unstored(error: Exception) -> None:
            logger.warning("could not store %s as an artifact of run %s: the MLflow server is unreachable",
                           path, self.run_id)

        tolerating_down(self.uri, unstored, self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def end(self, status: str) -> None:
        """Send what is left and close the run; if the server is gone, write what it lacks to the
        spool. A send MLflow refuses ends the run FAILED, its values kept in the journal and the
        spool, and raises :class:`TrackingError`: never FINISHED with less than the journal holds."""
        refused: Exception | None = None
        try:
            if self._sender is None or self._stop_sender() != SERVER_DOWN_STATUS:
                self.send()
        except Exception as e:  # a server that is down is tolerated inside send: this is a refusal
            refused = e
        finally:
            self._close(status, refused)
        if refused is not None:
            reason = str(refused).strip().splitlines()[0][:300] if str(refused).strip() else type(refused).__name__
            raise TrackingError(f"MLflow refused values of run {self.run_id} ({reason}); the run is marked FAILED and "
                                f"every value is kept in {self.spool_path}: send it with `kiwi-optim send-spool "
                                f"{self.spool_path}` once the cause is fixed")

    def _close(self, status: str, refused: Exception | None) -> None:
        if refused is None and self._metrics.down_since is None and tolerating_down(
                self.uri, self._metrics.server_down, retrying, self.client.set_terminated, self.run_id, status):
            if self._owns_journal:
                self.journal.delete()
                self.journal.path.parent.rmdir()
            return
        if refused is not None:  # FAILED until the spool is sent; the spool ends it as it should have ended
            try:
                retrying(self.client.set_terminated, self.run_id, "FAILED")
            except Exception as e:  # the spool below still keeps everything
                logger.warning("could not mark run %s FAILED (%s)", self.run_id, type(e).__name__)
        write_spool(self.spool_path, self.run_id, self.uri, self.journal, self._stored, self._pending_params, status)
