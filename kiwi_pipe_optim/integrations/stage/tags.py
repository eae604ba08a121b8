"""What an MLflow run records of where it came from (MLflow's ``mlflow.source.*`` tags, the
versions, the DVC experiment) and of what the stage resolved for it."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from types import ModuleType
from typing import Any, Mapping

import torch

from ...config import OptimizerConfig
from ...optimizers import implementation_of
from ...param_groups import Assignment, table
from ...resolve import ResolvedSchedule
from ..study.trial import sweep_tags
from ..tracking.run import source_tags


def params_sha256(raw: Mapping[str, Any]) -> str:
    """A digest of the params' values, independent of the file's formatting and key order."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_tags(raw: Mapping[str, Any], flavor: ModuleType) -> dict[str, str]:
    """MLflow's source tags (``kiwi-optim train`` or the stage's script, the user, the git
    commit), the versions, the DVC experiment and the sweep's trial, if any."""
    tags = {
        **source_tags(),
        "params.sha256": params_sha256(raw),
        "kiwi.lightning_flavor": flavor.__name__,
        "version.torch": _version("torch"),
        "version.lightning": getattr(flavor, "__version__", _version("lightning")),
        "version.mlflow": _version("mlflow"),
        "version.kiwi_pipe_optim": _version("kiwi-pipe-optim"),
    }
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update(sweep_tags())
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


def log_resolved(tracker: Any, config: OptimizerConfig, assignment: list[Assignment],
                 resolved: ResolvedSchedule | None, optimizers: list[torch.optim.Optimizer]) -> None:
    """The schedule as resolved for the run, as params (``resolved.*``) and as the config
    artifacts (``config/optimizer.yaml``, ``config/param_groups.txt``)."""
    import yaml

    if resolved is None:
        return
    values = resolved_params(resolved, config.optimizer_spec.torch_class,
                             implementation_of(optimizers[0]) if optimizers else "none")
    tracker.log_params(values)
    document = {"optimizer": config.model_dump(mode="json"),
                "resolved": {k.split(".", 1)[1]: v for k, v in values.items()}}
    tracker.log_text(yaml.safe_dump(document, sort_keys=False), "config/optimizer.yaml")
    tracker.log_text(table(assignment), "config/param_groups.txt")
