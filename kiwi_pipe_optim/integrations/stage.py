"""The training stage: params.yaml in; a Lightning fit, an MLflow run and DVC outputs out.

Order matters for "nothing lost": every params group is validated (and every class imported)
before MLflow or training starts, outputs are written only when training has finished, each by
a rename, and the MLflow run always ends FINISHED, FAILED or KILLED, never left RUNNING.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Problem
from ..lint import lint, report
from ..param_groups import assign, table
from ..params_file import read_params
from ..resolve import ResolvedSchedule
from . import lightning as kl
from .checkpoint import CHECKPOINT_FILE, ResumePoint, checkpointer, restore_loader, run_defining
from .classes import instantiate
from .hooks import stage_callback
from .journal import Journal, rewind
from .logger import kiwi_logger
from .sender import lock_journal
from .shown import already_shown
from .model_lint import lint_model
from .outputs import discard_finished, restore_finished, write_outputs
from .params import StageParams
from .preflight import check_trainer, preflight, trainer_kwargs

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


def repository_root() -> Path:
    """The DVC repository the stage belongs to. Queued experiments run in a temporary copy,
    but DVC points ``DVC_ROOT`` at the original, where the MLflow store lives."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def params_sha256(raw: dict[str, Any]) -> str:
    """A digest of the params' values, independent of the file's formatting and key order."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_tags(params: StageParams, flavor: Any) -> dict[str, str]:
    tags = {
        "mlflow.source.name": "stages/train.py",
        "params.sha256": params_sha256(params.raw),
        "kiwi.lightning_flavor": flavor.__name__,
        "version.torch": _version("torch"),
        "version.lightning": getattr(flavor, "__version__", _version("lightning")),
        "version.mlflow": _version("mlflow"),
        "version.kiwi_pipe_optim": _version("kiwi-pipe-optim"),
    }
    commit = _git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def resolved_params(resolved: ResolvedSchedule, optimizer_class: str, implementation: str) -> dict[str, str]:
    values = {
        "resolved.schedule": resolved.name,
        "resolved.interval": resolved.interval,
        "resolved.warmup_steps": resolved.warmup_steps,
        "resolved.training_steps": resolved.training_steps,
        "resolved.model_size": resolved.model_size,
        "resolved.optimizer_class": optimizer_class,
        "resolved.implementation": implementation,
    }
    return {k: str(v) for k, v in values.items()}


def run(params_path: str | Path = "params.yaml", out_dir: str | Path = ".", section: str = "optimizer") -> dict[str, Any]:
    """Train once as ``params_path`` says, log to MLflow, write the DVC outputs; return the metrics.

    Raises:
        ConfigError: anything wrong in the params, found before MLflow or training starts
            (or, for step counts only the trainer knows, when it configures the optimizer);
            every line names the file, the line where known, and the dotted field.
    """
    try:
        metrics = _run(params_path, out_dir, section)
        # Everything is final: the record that would stand in for a run killed in the last
        # milliseconds of its exit is no longer needed.
        if is_rank_zero():
            discard_finished(Path(out_dir))
        return metrics
    except ConfigError as e:
        if e.source:
            raise
        _, lines = read_params(params_path)
        raise e.with_source(str(params_path), lines) from None


def _run(params_path: str | Path, out_dir: str | Path, section: str) -> dict[str, Any]:
    out_dir = Path(out_dir)
    checked = preflight(params_path, section, out_dir)
    params, model_cls, data_cls, flavor, point = (checked.params, checked.model_cls, checked.data_cls,
                                                  checked.flavor, checked.point)
    _, lines = read_params(params_path)
    params.optimizer._reported.update(already_shown(params_path))  # printed by the check stage already
    report(params.optimizer, lint(params.optimizer) + lint_model(params.optimizer, model_cls),
           emit=lambda finding: logger.warning("%s", finding.located(str(params_path), lines)))
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if is_rank_zero():
        finished = restore_finished(out_dir, params_sha256(run_defining(params.raw)))
        if finished is not None:
            return _close_finished(finished, params, out_dir)
    # The user's classes are built before any MLflow run exists, so that a constructor's refusal or
    # a param-group rule that fits no parameter stops the stage with nothing to clean up. Seeded
    # here; Python's generator is set aside while MLflow names the run (it draws from it).
    unseeded = random.getstate()
    flavor.seed_everything(params.trainer.seed, workers=True, verbose=False)
    data = instantiate(data_cls, params.data, "data")
    model = instantiate(model_cls, params.model, "model")
    assign(model, params.optimizer)  # raises for a rule that matches nothing, an encoder LR without encoder
    if kl.attach_config(model, params.optimizer):
        logger.warning("%s.configure_optimizers is replaced by the params' optimizer section (as LightningCLI does); "
                       "to refine ours instead, derive from kiwi_pipe_optim.integrations.lightning.KiwiOptimizers",
                       model_cls.__name__)
    check_trainer(flavor, params)
    seeded = random.getstate()
    random.setstate(unseeded)
    rank_zero = is_rank_zero()
    journal, already_sent, journal_lock = _open_journal(out_dir, point) if rank_zero else (None, set(), None)
    tracker = None
    try:
        if params.mlflow.enabled and rank_zero:
            from .mlflow import MlflowRun
            from .store import check_reachable, is_remote, tracking_uri

            root = repository_root()
            uri = tracking_uri(params.mlflow.tracking_uri, root)
            field = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "mlflow.tracking_uri"
            check_reachable(uri, field)
            # A server that goes away mid-run must cost seconds of retries, not minutes (MLflow's default).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            try:
                tracker = MlflowRun(uri, params.mlflow.experiment_name, os.environ.get("DVC_EXP_NAME") or None,
                                    run_tags(params, flavor), artifact_root=None if is_remote(uri) else root / "mlartifacts",
                                    flush_interval_s=params.mlflow.flush_interval_s,
                                    spool_dir=root / ".kiwi-pipe-optim" / "spool",
                                    resume_run_id=point.run_id if point else None, journal=journal,
                                    already_sent=already_sent)
            except ConfigError:
                raise
            except Exception as e:  # a store it cannot write, a server that is no MLflow, refused credentials
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise ConfigError(Problem(field, f"cannot open an MLflow run at {uri} ({type(e).__name__}: {reason}); "
                                          f"fix the store or server (and MLFLOW_TRACKING_USERNAME / _PASSWORD where it "
                                          f"asks for them), or unset it to log to sqlite:///mlflow.db")) from None
            logger.info("MLflow run %s (%s) in %s", tracker.run_name, tracker.run_id, uri)
            _replace_interrupted(out_dir / RUN_MARKER, tracker)
            tracker.hold_lock(journal_lock)  # until the run ends, or its sender process takes it
            journal_lock = None
    finally:
        if journal_lock is not None:
            os.close(journal_lock)
    random.setstate(seeded)
    if point is not None:
        logger.info("resuming from step %d of %s", point.step, point.path)
        if tracker is not None:
            tracker.set_tags({"kiwi.resumed_at_step": str(point.step)})

    def on_resolved(resolved: ResolvedSchedule, optimizers: list[Any]) -> None:
        if tracker is None:
            return
        from ..optimizers import implementation_of

        values = resolved_params(resolved, params.optimizer.optimizer_spec.torch_class,
                                 implementation_of(optimizers[0]) if optimizers else "none")
        tracker.log_params(values)
        import yaml

        document = {"optimizer": params.optimizer.model_dump(mode="json"),
                    "resolved": {k.split(".", 1)[1]: v for k, v in values.items()}}
        tracker.log_text(yaml.safe_dump(document, sort_keys=False), "config/optimizer.yaml")
        tracker.log_text(table(assign(model, params.optimizer)), "config/param_groups.txt")

    recorder = kl.step_recorder(flavor, on_resolved=on_resolved)
    run_logger = kiwi_logger(flavor, journal=journal, tracker=tracker, flush_interval_s=params.mlflow.flush_interval_s,
                              sender=params.mlflow.sender)
    saver = checkpointer(flavor, path=checkpoint_path, every_n_steps=params.checkpoint.every_n_steps,
                         params=run_defining(params.raw), config=params.optimizer,
                         run_id=tracker.run_id if tracker else None, modes=recorder.modes)
    status = "FAILED"
    try:
        if tracker is not None:
            from .store import flatten

            tracker.log_params(flatten(params.raw))
        trainer = flavor.Trainer(**trainer_kwargs(flavor, params, [stage_callback(flavor, recorder, saver)], run_logger))
        _fit(trainer, model, data, flavor, point)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted")
        metrics = {"steps": trainer.global_step}
        if rank_zero:
            run_logger.persist()
            record = {"params": params_sha256(run_defining(params.raw)), "run_id": tracker.run_id if tracker else None}
            metrics = write_outputs(out_dir, journal, trainer.global_step, trainer.current_epoch, recorder.seconds,
                                    params.plots.max_points, record)
            checkpoint_path.unlink(missing_ok=True)  # finished: the next run starts afresh
            (out_dir / RUN_MARKER).unlink(missing_ok=True)
        status = "FINISHED"
        return metrics
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except Exception as e:
        if tracker is not None:
            tracker.set_tags({"kiwi.error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:5000]})
        raise
    finally:
        run_logger.persist()
        if tracker is not None:
            tracker.end(status)
        if status == "FINISHED" and journal is not None:
            journal.delete()


def _replace_interrupted(marker: Path, tracker: Any) -> None:
    """Close the MLflow run a killed process left RUNNING (killed before its first checkpoint,
    or not resumed), tagged with the run that replaces it; then mark this run as in progress."""
    interrupted = marker.read_text().strip() if marker.is_file() else ""
    if interrupted and interrupted != tracker.run_id:
        tracker.close_interrupted(interrupted)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(tracker.run_id)
    os.replace(tmp, marker)


def _close_finished(record: dict[str, Any], params: StageParams, out_dir: Path) -> dict[str, Any]:
    """A run that finished, killed on its way out: its outputs are back; end its MLflow run."""
    logger.info("the last run finished but was killed before it could exit; its outputs are restored and "
                "nothing trains again")
    if params.mlflow.enabled and record.get("run_id"):
        from .mlflow import MlflowRun
        from .store import tracking_uri

        uri = tracking_uri(params.mlflow.tracking_uri, repository_root())
        journal = Journal(out_dir / JOURNAL_FILE)  # what it had not sent yet, if anything
        lock = lock_journal(journal)  # once its sender, if still sending, is done
        try:
            journal.reload_keys()
            MlflowRun(uri, params.mlflow.experiment_name, None, {}, resume_run_id=record["run_id"],
                      journal=journal).end("FINISHED")
            journal.delete()
        finally:
            os.close(lock)
    for leftover in (CHECKPOINT_FILE, RUN_MARKER):
        (out_dir / leftover).unlink(missing_ok=True)
    return record["metrics"]


def _open_journal(out_dir: Path, point: ResumePoint | None) -> tuple[Journal, set[tuple[str, int]], int]:
    """The run's journal: new, or cut back to the checkpoint a resumed run starts from; the
    values MLflow holds past the cut; the fd holding the journal's lock, taken first, so that
    the sender process of a killed run has sent what it journaled and sends nothing more.

    Raises:
        ConfigError: the checkpoint's journal is gone (the values before it could not be sent
            or plotted), or the sender of a killed run does not finish.
    """
    journal = Journal(out_dir / JOURNAL_FILE)
    try:
        lock = lock_journal(journal)
    except TimeoutError as e:
        raise ConfigError(Problem("checkpoint", f"{e}; stop that process and run again")) from None
    try:
        journal.reload_keys()  # as that sender left them
        if point is None:
            journal.delete()
            return Journal(out_dir / JOURNAL_FILE), set(), lock
        if journal.size < point.journal_offset:
            raise ConfigError(Problem("checkpoint", f"'{journal.path}' holds less than '{point.path}' expects (the "
                                      f"values logged before the crash); delete '{point.path}' (or set "
                                      f"checkpoint.resume: false) to start afresh"))
        return journal, rewind(journal, point.journal_offset, point.step), lock
    except BaseException:
        os.close(lock)
        raise


def _fit(trainer: Any, model: Any, data: Any, flavor: Any, point: ResumePoint | None = None) -> None:
    resume: dict[str, Any] = {}
    if point is not None:
        resume["ckpt_path"] = str(point.path)
        if "weights_only" in inspect.signature(trainer.fit).parameters:
            resume["weights_only"] = True  # already checked by read_resume_point; never unpickle code
    if isinstance(data, flavor.LightningDataModule):
        trainer.fit(model, datamodule=data, **resume)
        return
    if hasattr(data, "setup"):
        data.setup("fit")
    val = data.val_dataloader() if hasattr(data, "val_dataloader") else None
    train = data.train_dataloader()
    restore_loader(train, point)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val, **resume)


def main(argv: list[str] | None = None) -> int:
    """``python stages/train.py [--params params.yaml] [--out-dir .]``; exit 2 on bad params."""
    parser = argparse.ArgumentParser(description="Train with the optimizer declared in params.yaml.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--section", default="optimizer", help="where the optimizer section is, dotted "
                        "(OpenKiwi's files: system.optimizer)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kiwi-pipe-optim: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        metrics = run(args.params, args.out_dir, args.section)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the MLflow run is marked KILLED and no output was written", file=sys.stderr)
        return 130
    if is_rank_zero():
        print(json.dumps(metrics, sort_keys=True))
    return 0
