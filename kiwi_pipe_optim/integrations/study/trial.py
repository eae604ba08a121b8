"""The stage's side of a sweep: the trial it runs as, when ``kiwi-optim sweep`` started it.

The driver hands the trial over through the environment (``dvc exp run`` passes it to the
stage, in the temporary copy too). The stage reports the sweep's metric at every validation,
stops a trial the pruner gives up on, and records its MLflow run in the trial, so that the driver
(or whoever resumes the sweep) can settle both. Only rank 0 talks to the study; under DDP its
decision is broadcast, so every rank stops at the same step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ...errors import ConfigError, Problem

logger = logging.getLogger("kiwi_pipe_optim")

ENV_STORAGE = "KIWI_SWEEP_STORAGE"
ENV_STUDY = "KIWI_SWEEP_STUDY"
ENV_TRIAL_ID = "KIWI_SWEEP_TRIAL_ID"
ENV_TRIAL_NUMBER = "KIWI_SWEEP_TRIAL"
ENV_METRIC = "KIWI_SWEEP_METRIC"
ENV_PARENT_RUN = "KIWI_SWEEP_PARENT_RUN"
ATTR_RUN = "kiwi.mlflow_run_id"
ATTR_PRUNED = "kiwi.pruned_at_step"


def sweep_tags() -> dict[str, str]:
    """The MLflow tags of a trial's run: its parent (the sweep's run, so the UI nests it), its
    study and its trial number."""
    if not os.environ.get(ENV_STUDY):
        return {}
    tags = {"optuna.study": os.environ[ENV_STUDY], "optuna.trial": os.environ.get(ENV_TRIAL_NUMBER, "")}
    if os.environ.get(ENV_PARENT_RUN):
        tags["mlflow.parentRunId"] = os.environ[ENV_PARENT_RUN]
    return tags


class TrialLink:
    """The Optuna trial of this run; opened on rank 0 at its first use."""

    def __init__(self, storage: str, study: str, trial_id: int, metric: str, rank_zero: bool = True):
        self.storage, self.study_name, self.trial_id, self.metric = storage, study, trial_id, metric
        self.rank_zero = rank_zero
        self._trial: Any = None
        self.pruned_at: int | None = None

    @classmethod
    def from_env(cls, rank_zero: bool = True) -> "TrialLink | None":
        if not os.environ.get(ENV_STUDY) or not os.environ.get(ENV_TRIAL_ID):
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL_ID]),
                   os.environ.get(ENV_METRIC, "val_loss"), rank_zero)

    @property
    def trial(self) -> Any:
        if self._trial is None:
            import optuna

            from .storage import open_storage, recorded

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                study = recorded(open_storage(self.storage), self.study_name)
                self._trial = optuna.trial.Trial(study, self.trial_id)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 (said in one line: the study this run belongs to is unreadable)
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise ConfigError(Problem(ENV_STORAGE, f"cannot open trial {self.trial_id} of the study "
                                          f"{self.study_name!r} in {self.storage} ({reason}); this run was started "
                                          f"by kiwi-optim sweep: run the sweep again")) from None
        return self._trial

    def link_run(self, run_id: str) -> None:
        """Record the MLflow run in the trial: the driver tags it with the trial's final state."""
        if self.rank_zero:
            self.trial.set_user_attr(ATTR_RUN, run_id)

    def after_validation(self, trainer: Any) -> bool:
        """Report the metric; whether the pruner stops the trial here (on every rank alike)."""
        prune = False
        if self.rank_zero and self.pruned_at is None:
            value = trainer.callback_metrics.get(self.metric)
            if value is not None:
                step = int(trainer.global_step)
                self.trial.report(float(value), step)
                prune = bool(self.trial.should_prune())
                if prune:
                    self.pruned_at = step
                    self.trial.set_user_attr(ATTR_PRUNED, step)
                    logger.warning("trial %s of %s is pruned at step %d (%s %.6g): training stops here, and its "
                                   "outputs are written", os.environ.get(ENV_TRIAL_NUMBER, "?"), self.study_name,
                                   step, self.metric, float(value))
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        return prune
