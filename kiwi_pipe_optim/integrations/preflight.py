"""Everything the stage checks before it builds anything that costs or lasts: the params of
every group, the user's classes and their arguments, Lightning's Trainer, the files the params
name (``optimizer.load``, the checkpoint to resume). ``kiwi-optim validate`` runs the same
checks, and the pipeline's ``check`` stage runs ``validate``, so that a params mistake stops
``dvc repro`` before DVC deletes the previous outputs.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Problem, did_you_mean
from . import lightning as kl
from .checkpoint import CHECKPOINT_FILE, ResumePoint, check_same_params, read_resume_point
from .classes import check_init_args, import_class
from .params import StageParams, load_stage_params


@dataclass(frozen=True)
class Checked:
    """What the checks found, for the stage to go on with."""

    params: StageParams
    model_cls: type
    data_cls: type
    flavor: Any
    point: ResumePoint | None


def preflight(params_path: str | Path, section: str = "optimizer", out_dir: str | Path = ".") -> Checked:
    """Every check that needs no model built, all problems at once.

    Raises:
        ConfigError: every problem found, each with its dotted key.
    """
    params = load_stage_params(params_path, section)
    out_dir = Path(out_dir)
    model_cls = import_class(params.model, "model")
    data_cls = import_class(params.data, "data")
    try:
        flavor = kl.flavor_of(model_cls)
    except TypeError as e:
        raise ConfigError(Problem("model.class_path", str(e))) from None
    problems = []
    checks = [lambda: trainer_kwargs(flavor, params, []), lambda: check_init_args(model_cls, params.model, "model"),
              lambda: check_init_args(data_cls, params.data, "data"), lambda: check_kernels(params)]
    if params.optimizer.load is not None:
        from ..state import read_state

        checks.append(lambda: read_state(params.optimizer.load))  # refuses a file that would run code
    for check in checks:
        try:
            check()
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    point = None
    if params.checkpoint.resume and checkpoint_path.exists():
        point = read_resume_point(checkpoint_path)  # refuses a file that would run code
        check_same_params(point, params.raw)
    return Checked(params, model_cls, data_cls, flavor, point)


def trainer_kwargs(flavor: Any, params: StageParams, callbacks: list[Any], logger: Any = False) -> dict[str, Any]:
    given = params.trainer.trainer_kwargs()
    accepted = inspect.signature(flavor.Trainer.__init__).parameters
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ConfigError([
            Problem(f"trainer.{k}", f"not an argument of {flavor.__name__}.Trainer{did_you_mean(k, accepted)}")
            for k in unknown
        ])
    kwargs = {"deterministic": True, **given}
    kwargs.update(logger=logger, enable_checkpointing=False, callbacks=callbacks)
    return kwargs


def check_kernels(params: StageParams) -> None:
    """``implementation: fused`` with clipping under mixed precision, refused before DVC deletes
    anything (``auto`` picks foreach there instead: :func:`.lightning.configure_optimizers`)."""
    if params.optimizer.implementation == "fused" and kl.clips_under_mixed_precision(params.trainer.trainer_kwargs()):
        raise ConfigError(Problem("optimizer.implementation", "fused with trainer.gradient_clip_val under "
                                  f"trainer.precision {params.trainer.trainer_kwargs()['precision']!s}: Lightning "
                                  "does not clip the gradients of a fused optimizer under mixed precision; use "
                                  "implementation: auto (foreach there) or foreach, or remove gradient_clip_val"))


def check_trainer(flavor: Any, params: StageParams) -> None:
    """Build the Trainer once without logger or callbacks, before any MLflow run exists, so that
    its refusals (``devices: -1``, ``precision: bogus``) stop the stage with the key named.

    Raises:
        ConfigError: ``trainer.<key>: <value> is refused by Lightning: <its message>``.
    """
    kwargs = trainer_kwargs(flavor, params, [])
    given = params.trainer.trainer_kwargs()
    quiet = logging.getLogger(flavor.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its banner (GPU available, ...) once per probe would be noise
    try:
        if _refusal(flavor, kwargs) is None:
            return
        base = {k: v for k, v in kwargs.items() if k not in given}
        refused = {key: _refusal(flavor, {**base, key: given[key]}) for key in given}
    finally:
        quiet.setLevel(level)
    problems = [Problem(f"trainer.{key}", f"{given[key]!r} is refused by Lightning: {message}")
                for key, message in refused.items() if message is not None]
    raise ConfigError(problems or [Problem("trainer", f"Lightning refused these arguments together: "
                                                      f"{_refusal(flavor, kwargs)}")])


def _refusal(flavor: Any, kwargs: dict[str, Any]) -> str | None:
    try:
        flavor.Trainer(**kwargs)
    except Exception as e:  # MisconfigurationException, ValueError, TypeError, ...
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def check_all(params_path: str | Path, section: str = "optimizer", out_dir: str | Path = ".") -> tuple[Any, list]:
    """What the train stage checks before it trains, without training: :func:`preflight`, then
    the user's constructors run (the model on the meta device), its param groups formed and
    Lightning's Trainer built. Returns the optimizer config and the warnings found.

    Raises:
        ConfigError: every problem found, each with its dotted key.
    """
    from ..lint import lint
    from ..param_groups import assign
    from .classes import instantiate, model_on_meta
    from .model_lint import lint_model

    from ..optimizers import build_optimizer

    checked = preflight(params_path, section, out_dir)
    params = checked.params
    instantiate(checked.data_cls, params.data, "data")
    model = model_on_meta(params)
    assign(model, params.optimizer)
    # built as train will build it, on the meta device: whatever its constructor refuses stops here
    build_optimizer(params.optimizer.model_copy(update={"implementation": "loop"}), model)
    check_trainer(checked.flavor, params)
    return params.optimizer, lint(params.optimizer) + lint_model(params.optimizer, checked.model_cls)
