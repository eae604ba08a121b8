"""From a params file to everything a run needs, before anything that costs or lasts exists: the
params of every group, the user's classes and their arguments, the model and data built, the
param groups formed, the schedule resolved, the findings, Lightning's Trainer.

``kiwi-optim validate`` (the pipeline's ``check`` stage) and the ``train`` stage both prepare
with this one function, so that what ``check`` accepts is what ``train`` runs, and a params
mistake stops ``dvc repro`` before DVC deletes the previous outputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import ConfigError, Finding, Problem
from ...lint import lint
from ...optimizers import OptimizerPlan, build_optimizer, plan_for
from .. import lightning as kl
from .checkpoint import CHECKPOINT_FILE, ResumePoint, check_same_params, read_resume_point
from .classes import check_init_args, import_class, instantiate, model_on_meta
from .model_lint import lint_model
from .params import StageParams, load_stage_params
from .preflight import check_files, check_kernels, check_step_count, check_trainer, check_trainer_keys
from .steps import run_steps_from_params


@dataclass(frozen=True)
class Prepared:
    """What a run is made of, each part worked out once."""

    params: StageParams
    flavor: ModuleType
    model_cls: type
    model: Any
    data: Any
    plan: OptimizerPlan  # param groups, the resolved schedule, the step count it was resolved for
    findings: list[Finding]
    trainer: Any  # built without logger or callbacks; the stage adds its own
    point: ResumePoint | None
    unseeded: Any  # Python's generator before seeding: MLflow names runs from it


def prepare(params: StageParams, out_dir: Path, for_training: bool = True) -> Prepared:
    """Check and build everything the params name. ``for_training``: seeded, and the model built
    for real; otherwise on the meta device (its shapes without their memory) and the optimizer
    built on it, so that whatever its constructor refuses is found without training.

    Raises:
        ConfigError: every problem found, each with its dotted key.
    """
    flavor, model_cls, data_cls = _classes(params)
    point = _resume_point(params, out_dir)
    unseeded = random.getstate()
    if for_training:
        flavor.seed_everything(params.trainer.seed, workers=True, verbose=False)
    data = instantiate(data_cls, params.data, "data")
    model = (instantiate(model_cls, params.model, "model") if for_training
             else model_on_meta(model_cls, params.model))
    steps, _ = run_steps_from_params(params, data=data)
    check_step_count(params, steps)
    plan = plan_for(params.optimizer, model, steps)  # a rule that matches nothing, a schedule that cannot resolve
    if not for_training:
        build_optimizer(params.optimizer.model_copy(update={"implementation": "loop"}), model, plan.assignment)
    trainer = check_trainer(flavor, params)
    findings = lint(params.optimizer, steps, resolved=plan.resolved) + lint_model(params.optimizer, model_cls)
    return Prepared(params, flavor, model_cls, model, data, plan, findings, trainer, point, unseeded)


def _classes(params: StageParams) -> tuple[ModuleType, type, type]:
    """The Lightning flavor and the user's classes, every argument problem at once."""
    model_cls = import_class(params.model, "model")
    data_cls = import_class(params.data, "data")
    try:
        flavor = kl.flavor_of(model_cls)
    except TypeError as e:
        raise ConfigError(Problem("model.class_path", str(e))) from None
    problems = []
    for check in (lambda: check_trainer_keys(flavor, params), lambda: check_init_args(model_cls, params.model, "model"),
                  lambda: check_init_args(data_cls, params.data, "data"), lambda: check_kernels(params),
                  lambda: check_files(params)):
        try:
            check()
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return flavor, model_cls, data_cls


def _resume_point(params: StageParams, out_dir: Path) -> ResumePoint | None:
    path = out_dir / CHECKPOINT_FILE
    if not (params.checkpoint.resume and path.exists()):
        return None
    point = read_resume_point(path)  # refuses a file that would run code
    check_same_params(point, params.raw)
    return point


def check(params_path: str | Path, section: str = "optimizer", out_dir: str | Path = ".") -> tuple[Any, list[Finding]]:
    """What the train stage checks before it trains, without training (``kiwi-optim validate``):
    the optimizer config and the findings.

    Raises:
        ConfigError: every problem found, each with its dotted key.
    """
    params = load_stage_params(params_path, section)
    return params.optimizer, prepare(params, Path(out_dir), for_training=False).findings
