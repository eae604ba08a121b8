"""The training stage: params.yaml in; a Lightning fit, an MLflow run and DVC outputs out.

Order matters for "nothing lost": everything is prepared (:mod:`.prepare`) before MLflow or
training starts, outputs are written only when training has finished, each by a rename, and the
MLflow run always ends FINISHED, FAILED or KILLED, never left RUNNING. Each resource (the
journal's lock, the MLflow run, Python's generator while MLflow names the run) is held by one
context manager, in one ``ExitStack``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ...errors import ConfigError, Problem
from ...files import write_atomically, write_failure
from ...lint import report
from ...logs import log_to_stderr
from .. import lightning as kl
from ..lightning.logger import kiwi_logger
from ..lightning.quiet import quiet_lightning
from ..study.trial import TrialLink
from ..tracking.journal import Journal, JournalDamaged, journal_lock, rewind
from ..tracking.run import TrackingError
from ..tracking.store import check_reachable, flatten, is_remote, repository_root, tracking_uri
from .callback import stage_callback
from .checkpoint import CHECKPOINT_FILE, Checkpointer, ResumePoint, discard, restore_loader, run_defining
from .outputs import FINISHED_DIR, discard_finished, restore_finished, write_outputs
from .parent import dvc_process, is_gone
from .params import StageParams, load_stage_params
from .preemption import Preempted
from .preflight import WorkspaceError, check_outputs
from .prepare import Prepared, prepare
from .shown import already_shown
from .tags import params_sha256, run_tags

logger = logging.getLogger("kiwi_pipe_optim")

JOURNAL_FILE = Path(".kiwi-pipe-optim") / "journal" / "train.journal"
RUN_MARKER = Path(".kiwi-pipe-optim") / "checkpoints" / "train.run"  # the MLflow run in progress


def is_rank_zero() -> bool:
    """Whether this process is the first of a distributed run (or the only process).

    Lightning's DDP launcher re-runs this script once per extra device with ``LOCAL_RANK`` set;
    torchrun and SLURM set ``RANK`` / ``SLURM_PROCID``. Only rank 0 talks to MLflow and writes
    outputs, so a run is logged once, whatever the number of processes.
    """
    return all(int(os.environ.get(key) or 0) == 0 for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def run(params_path: str | Path = "params.yaml", out_dir: str | Path = ".", section: str = "optimizer") -> dict[str, Any]:
    """Train once as ``params_path`` says, log to MLflow, write the DVC outputs; return the metrics.

    Raises:
        ConfigError: anything wrong in the params, found before MLflow or training starts
            (or, for step counts only the trainer knows, when it configures the optimizer);
            every line names the file, the line where known, and the dotted field.
    """
    quiet_lightning()
    dvc = dvc_process()
    params = load_stage_params(params_path, section)
    try:
        metrics = _execute(params, Path(params_path), Path(out_dir))
    except ConfigError as e:
        if e.source or isinstance(e, WorkspaceError):
            raise
        raise e.with_source(str(params_path), params.lines) from None
    if not is_rank_zero():
        return metrics
    if is_gone(dvc):
        logger.warning("DVC, which ran this stage, has stopped, so it cannot record these outputs in dvc.lock; "
                       "they are kept in %s, and the next `dvc repro` restores them instead of training again",
                       Path(out_dir) / FINISHED_DIR)
    else:  # final: the record that would stand in for a run killed in the last milliseconds of its exit
        discard_finished(Path(out_dir))
    return metrics


def _execute(params: StageParams, params_path: Path, out_dir: Path) -> dict[str, Any]:
    prepared = prepare(params, out_dir)
    params.optimizer._reported.update(already_shown(params_path))  # printed by the check stage already
    report(params.optimizer, prepared.findings,
           emit=lambda finding: logger.warning("%s", finding.located(str(params_path), params.lines)))
    rank_zero = is_rank_zero()
    if rank_zero:
        digest = _run_digest(prepared)
        finished = restore_finished(out_dir, digest)
        if finished is not None:
            return _close_finished(finished, params, out_dir)
    if kl.attach_config(prepared.model, params.optimizer, prepared.plan):
        logger.warning("%s.configure_optimizers is replaced by the params' optimizer section (as LightningCLI does); "
                       "to refine ours instead, derive from kiwi_pipe_optim.integrations.lightning.KiwiOptimizers",
                       prepared.model_cls.__name__)
    if not rank_zero:
        return _train(prepared, out_dir, Journaled(None, set()), None, "")
    uri = tracking_uri(params.mlflow.tracking_uri, repository_root())
    check_outputs(out_dir, prepared.model, None if is_remote(uri) or not params.mlflow.enabled
                  else repository_root() / "mlartifacts")
    with contextlib.ExitStack() as stack:
        journaled = stack.enter_context(_opened_journal(out_dir, prepared.point))
        tracker = _open_tracker(stack, prepared, journaled, out_dir) if params.mlflow.enabled else None
        metrics = _train(prepared, out_dir, journaled, tracker, digest)
    journaled.journal.delete()  # FINISHED: MLflow holds every value, the outputs are written
    return metrics


@dataclass(frozen=True)
class Journaled:
    """The run's journal, what MLflow already holds past a resumed run's cut, and the fd of the
    journal's lock (held while the run lasts)."""

    journal: Journal | None
    already_sent: set[tuple[str, int]] | None  # None: the sent marker cannot say; MLflow is asked
    lock_fd: int | None = None


@contextlib.contextmanager
def _opened_journal(out_dir: Path, point: ResumePoint | None) -> Iterator[Journaled]:
    """The run's journal: new, or cut back to the checkpoint a resumed run starts from. Its lock
    is taken first, so that the sender process of a killed run has sent what it journaled and
    sends nothing more.

    Raises:
        ConfigError: the checkpoint's journal is gone (the values before it could not be sent
            or plotted), or the sender of a killed run does not finish.
    """
    path = out_dir / JOURNAL_FILE
    with contextlib.ExitStack() as held:
        try:
            lock_fd = held.enter_context(journal_lock(path))
        except TimeoutError as e:
            raise WorkspaceError(Problem("", f"{e}; wait for it, or stop that process, and run again")) from None
        if point is None:
            Journal.remove(path)
            yield Journaled(Journal(path), set(), lock_fd)
            return
        fresh = f"delete '{point.path}' (or set checkpoint.resume: false) to start afresh"
        try:
            journal = Journal(path, point.run_id)  # its keys as the killed run's sender left them
            journal.check()
        except JournalDamaged as e:
            raise ConfigError(Problem("checkpoint", f"{e}; the values before the checkpoint cannot be sent or "
                                      f"plotted: {fresh}")) from None
        if journal.size < point.journal_offset:
            raise ConfigError(Problem("checkpoint", f"'{journal.path}' holds less than '{point.path}' expects (the "
                                      f"values logged before the crash); {fresh}"))
        yield Journaled(journal, rewind(journal, point.journal_offset, point.step), lock_fd)


@contextlib.contextmanager
def _python_rng(state: Any) -> Iterator[None]:
    """Python's generator at ``state`` for the block, then back where it was: MLflow draws run
    names from it, and the seeded sequence of the run must not be what it draws from."""
    kept = random.getstate()
    random.setstate(state)
    try:
        yield
    finally:
        random.setstate(kept)


def _open_tracker(stack: contextlib.ExitStack, prepared: Prepared, journaled: Journaled, out_dir: Path) -> Any:
    """The MLflow run (a new one, or the one a checkpoint logs to), entered into ``stack``, which
    ends it FINISHED, FAILED or KILLED."""
    from ..tracking.run import MlflowRun

    params, point = prepared.params, prepared.point
    root = repository_root()
    uri = tracking_uri(params.mlflow.tracking_uri, root)
    field = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.tracking_uri"
    check_reachable(uri, field)
    interrupted = read_run_marker(out_dir / RUN_MARKER)
    # A server that goes away mid-run must cost seconds of retries, not minutes (MLflow's default).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        with _python_rng(prepared.unseeded):
            tracker = MlflowRun(uri, params.mlflow.experiment_name, os.environ.get("DVC_EXP_NAME") or None,
                                run_tags(params.raw, prepared.flavor),
                                artifact_root=None if is_remote(uri) else root / "mlartifacts",
                                spool_dir=root / ".kiwi-pipe-optim" / "spool",
                                resume_run_id=point.run_id if point else None, journal=journaled.journal,
                                already_sent=journaled.already_sent, lock_fd=journaled.lock_fd)
    except ConfigError:
        raise
    except Exception as e:  # a store it cannot write, a server that is no MLflow, refused credentials
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(Problem(field, f"cannot open an MLflow run at {uri} ({type(e).__name__}: {reason}); "
                                  f"fix the store or server (and MLFLOW_TRACKING_USERNAME / _PASSWORD where it "
                                  f"asks for them), or unset it to log to sqlite:///mlflow.db")) from None
    stack.enter_context(tracker)
    logger.info("MLflow run %s (%s) in %s", tracker.run_name, tracker.run_id, uri)
    _replace_interrupted(out_dir / RUN_MARKER, interrupted, tracker)
    if point is not None:
        tracker.set_tags({"kiwi.resumed_at_step": str(point.step)})
    tracker.log_params(flatten(params.raw))
    return tracker


def read_run_marker(marker: Path) -> str | None:
    """The MLflow run a killed process left in progress, if any.

    Raises:
        ConfigError: the marker is damaged: the run it named cannot be closed.
    """
    try:
        text = marker.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        text = f"<{type(e).__name__}>"
    if re.fullmatch(r"[0-9a-f]{32}", text) is None:
        raise ConfigError(Problem("checkpoint", f"'{marker}' is damaged (it holds {text[:40]!r}, not the id of the "
                                  f"MLflow run in progress); delete it and run again (end that run in the MLflow UI "
                                  f"if it shows RUNNING)"))
    return text


def _replace_interrupted(marker: Path, interrupted: str | None, tracker: Any) -> None:
    """Close the MLflow run a killed process left RUNNING (killed before its first checkpoint,
    or not resumed), tagged with the run that replaces it; then mark this run as in progress."""
    if interrupted and interrupted != tracker.run_id:
        tracker.close_interrupted(interrupted)
    write_atomically(marker, tracker.run_id)


def _run_digest(prepared: Prepared) -> str:
    """What a finished record stands for: the run-defining params and the source of the user's
    model and data classes, so that a module changed since then trains again."""
    digest = hashlib.sha256(params_sha256(run_defining(prepared.params.raw)).encode())
    for cls in (prepared.model_cls, type(prepared.data)):
        with contextlib.suppress(TypeError, OSError):  # a class without a source file
            digest.update(Path(inspect.getsourcefile(cls) or "").read_bytes())
    return digest.hexdigest()


def _train(prepared: Prepared, out_dir: Path, journaled: Journaled, tracker: Any, digest: str) -> dict[str, Any]:
    """Fit, then write the outputs (rank 0); the logger's buffer is journaled whatever happens."""
    params, trainer, point = prepared.params, prepared.trainer, prepared.point
    if point is not None:
        logger.info("resuming from step %d of %s", point.step, point.path)
    recorder = kl.StepRecorder()
    trial = TrialLink.from_env(is_rank_zero())
    if trial is not None and tracker is not None:
        trial.link_run(tracker.run_id)
    run_logger = kiwi_logger(prepared.flavor, journal=journaled.journal, tracker=tracker,
                             flush_interval_s=params.mlflow.flush_interval_s, sender=params.mlflow.sender)
    saver = Checkpointer(out_dir / CHECKPOINT_FILE, params.checkpoint.every_n_steps, run_defining(params.raw),
                         params.optimizer, run_id=tracker.run_id if tracker else None, modes=recorder.modes)
    trainer.loggers = [run_logger]
    trainer.callbacks.append(stage_callback(prepared.flavor, recorder, saver, params.optimizer,
                                            prepared.plan.assignment, tracker, trial))
    try:
        _fit(trainer, prepared, point)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted")
        if not is_rank_zero():
            return {"steps": trainer.global_step}
        run_logger.persist()
        record = {"params": digest, "run_id": tracker.run_id if tracker else None}
        metrics = write_outputs(out_dir, journaled.journal, trainer.global_step, trainer.current_epoch,
                                recorder.seconds, params.plots.max_points, record)
        discard(out_dir / CHECKPOINT_FILE)  # finished: the next run starts afresh
        (out_dir / RUN_MARKER).unlink(missing_ok=True)
        return metrics
    finally:
        run_logger.persist()


def _close_finished(record: dict[str, Any], params: StageParams, out_dir: Path) -> dict[str, Any]:
    """A run of these params that finished, but that DVC did not record (killed on its way out,
    or DVC stopped meanwhile): its outputs are back; end its MLflow run."""
    logger.info("the last run of these params finished, but DVC did not record it; its outputs are restored and "
                "nothing trains again")
    if params.mlflow.enabled and record.get("run_id"):
        from ..tracking.run import MlflowRun

        uri = tracking_uri(params.mlflow.tracking_uri, repository_root())
        path = out_dir / JOURNAL_FILE
        try:
            with journal_lock(path) as lock_fd:  # once its sender, if still sending, is done
                try:
                    journal: Journal | None = Journal(path)  # what it had not sent yet, if anything
                except JournalDamaged as e:
                    logger.warning("%s; the values it had not sent yet, if any, are not sent", e)
                    journal = None
                MlflowRun(uri, params.mlflow.experiment_name, None, {}, resume_run_id=record["run_id"],
                          journal=journal, lock_fd=lock_fd).end("FINISHED")
                Journal.remove(path)
        except TimeoutError as e:
            raise WorkspaceError(Problem("", f"{e}; wait for it, or stop that process, and run again")) from None
    discard(out_dir / CHECKPOINT_FILE)
    (out_dir / RUN_MARKER).unlink(missing_ok=True)
    return record["metrics"]


def _fit(trainer: Any, prepared: Prepared, point: ResumePoint | None) -> None:
    model, data = prepared.model, prepared.data
    resume: dict[str, Any] = {}
    if point is not None:
        resume["ckpt_path"] = str(point.path)
        if "weights_only" in inspect.signature(trainer.fit).parameters:
            resume["weights_only"] = True  # already checked by read_resume_point; never unpickle code
    if isinstance(data, prepared.flavor.LightningDataModule):
        trainer.fit(model, datamodule=data, **resume)
        return
    if hasattr(data, "setup"):
        data.setup("fit")
    val = data.val_dataloader() if hasattr(data, "val_dataloader") else None
    train = data.train_dataloader()
    restore_loader(train, point)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val, **resume)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``kiwi-optim train [--params params.yaml] [--out-dir .]``; exit 2 on bad params."""
    parser = argparse.ArgumentParser(prog=prog, description="Train with the optimizer declared in params.yaml.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--section", default="optimizer", help="where the optimizer section is, dotted "
                        "(OpenKiwi's files: system.optimizer)")
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        metrics = run(args.params, args.out_dir, args.section)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except TrackingError as e:
        print(str(e), file=sys.stderr)
        return 1
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return int(e.code)
    except KeyboardInterrupt:
        print("interrupted; the MLflow run is marked KILLED and no output was written", file=sys.stderr)
        return 130
    except Exception as e:
        failure = write_failure(e)
        if failure is None:
            raise
        print(f"the run stopped: {failure}; its MLflow run is marked FAILED and its journal kept: make room (or "
              f"make it writable) and run again to resume from its last checkpoint", file=sys.stderr)
        return 1
    except SystemExit as e:
        if type(e).__name__ != "SIGTERMException":  # Lightning's, where it stops the fit itself (DDP)
            raise
        print("stopped by SIGTERM; the MLflow run is marked KILLED: run again to resume from its last checkpoint",
              file=sys.stderr)
        return 143
    if is_rank_zero():
        print(json.dumps(metrics, sort_keys=True))
    return 0
