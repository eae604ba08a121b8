"""From a config and what the run knows to concrete numbers: step counts, warm-up, model size.

One place decides them, so ``from_config``, ``kiwi-optim preview``, the stage and the resume
check always agree on the curve. Importing this module does not import torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, Problem, show
from .params_file import SECTION

if TYPE_CHECKING:
    from .config import OptimizerConfig


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with every step count known: what the run will do, and what gets logged."""

    name: str
    interval: str
    warmup_steps: int
    training_steps: int | None
    model_size: int | None
    power: float = 1.0
    final_lr_ratio: float = 0.0
    factor: float = 1.0
    patience: int = 2
    monitor: str = "val_loss"
    mode: str = "min"
    timescale: int | None = None


def resolve(config: "OptimizerConfig", training_steps: int | None = None,
            model_size: int | None = None) -> ResolvedSchedule:
    """Turn the config into concrete step counts, given what the run knows.

    ``training_steps`` here is the run's own count (what the trainer will step); the config's
    ``training_steps`` wins when set. Fractions of warm-up are rounded to whole steps. A schedule
    that does not use warm-up ignores ``warmup_steps`` (lint says so).

    Raises:
        ConfigError: a value the schedule needs is unknown, or warm-up exceeds training.
    """
    schedule, spec = config.schedule_name, config.schedule_spec
    total = config.training_steps if config.training_steps is not None else training_steps
    problems: list[Problem] = []
    if total is not None and (isinstance(total, bool) or int(total) != total or total < 1):
        problems.append(Problem("training_steps", f"{show(total)} from the run is not a step count; "
                                                  f"pass a whole number >= 1"))
        total = None
    total = None if total is None else int(total)
    warmup = 0
    if spec.uses_warmup and isinstance(config.warmup_steps, float):
        if total is None:
            problems.append(Problem("warmup_steps", f"{show(config.warmup_steps)} is a fraction of training_steps, "
                                    f"which is unknown; set optimizer.training_steps or give warm-up in steps"))
        else:
            warmup = int(round(config.warmup_steps * total))
    elif spec.uses_warmup and isinstance(config.warmup_steps, int):
        warmup = config.warmup_steps
        if total is not None and warmup > total:
            problems.append(warmup_too_long(warmup, total))
    if spec.needs_training_steps and total is None:
        problems.append(Problem("training_steps", f"required by the {schedule} schedule and not known; set "
                                f"optimizer.training_steps, or pass the run's step count (training_data_size)"))
    if spec.needs_warmup and warmup < 1 and not problems:
        problems.append(Problem("warmup_steps", f"{show(config.warmup_steps)} gives {warmup} steps; the {schedule} "
                                f"schedule needs at least 1 step of warm-up"))
    if spec.needs_model_size and (model_size is None or model_size < 1):
        problems.append(Problem("model_size", f"{show(model_size)} is not a model size; the {schedule} schedule needs "
                                f"the model's hidden size (an integer >= 1)"))
    if problems:
        raise ConfigError([Problem(f"{SECTION}.{p.path}", p.message) for p in problems])
    return ResolvedSchedule(
        name=schedule, interval=spec.interval, warmup_steps=warmup, training_steps=total,
        model_size=model_size if spec.needs_model_size else None,
        power=1.0 if config.power is None else config.power,
        final_lr_ratio=0.0 if config.final_lr_ratio is None else config.final_lr_ratio,
        factor=config.learning_rate_decay, patience=config.learning_rate_decay_start,
        monitor=config.monitor, mode=config.mode, timescale=config.timescale,
    )


def warmup_too_long(warmup: int, total: int) -> Problem:
    return Problem("warmup_steps", f"{warmup} steps is longer than training_steps ({total}); use at most {total} "
                                   f"steps, or a fraction in [0, 1]")


def model_size_of(source: Any) -> int | None:
    """The hidden size a schedule scales with (noam's d_model).

    A module's own ``model_size`` attribute when it has one; otherwise OpenKiwi's fallback, the
    most common last dimension of the parameters. ``source`` is a module, or a list of tensors or
    of param-group dicts.
    """
    declared = getattr(source, "model_size", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    if hasattr(source, "parameters") and callable(source.parameters):
        tensors = list(source.parameters())
    else:
        tensors = []
        for item in source:
            params = item["params"] if isinstance(item, dict) else [item]
            tensors.extend([params] if hasattr(params, "shape") else params)
    dims = Counter(int(t.shape[-1]) for t in tensors if len(t.shape) > 0)
    return dims.most_common(1)[0][0] if dims else None


def resolve_for(config: "OptimizerConfig", parameters: Any, training_data_size: int | None = None,
                model_size: int | None = None) -> ResolvedSchedule:
    """What ``from_config`` resolves for these parameters, without building anything."""
    if model_size is None and config.schedule_spec.needs_model_size:
        model_size = model_size_of(parameters)
    return resolve(config, training_data_size, model_size)
