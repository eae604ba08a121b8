"""From a config and what the run knows to concrete numbers: step counts, warm-up, model size.

One place decides them, so ``from_config``, ``kiwi-optim preview``, the stage and the resume
check always agree on the curve. Importing this module does not import torch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, Sequence

from .errors import ConfigError, Problem, show
from .fields import milestone_problems, steps_of
from .multipliers import DEFAULT_DECAY_SHAPE
from .params_file import SECTION
from .phases import Phase
# ResolvedSchedule is re-exported: it was defined here before the modules naming it needed a leaf.
from .resolved import ResolvedPhase, ResolvedSchedule  # noqa: F401
from .schedule_fields import ScheduleFields
from .schedules import ScheduleSpec

# wsd's decay when decay_steps is absent, a fraction of training_steps.
DEFAULT_DECAY = 0.1


class Section(Protocol):
    """What every schedule of a section resolves with: ``OptimizerConfig`` as this module sees it
    (the config imports this module, so this module names the config only by what it reads)."""

    learning_rate: float
    learning_rate_decay: float
    learning_rate_decay_start: int
    monitor: str
    mode: str
    training_steps: int | None
    phases: Sequence[Phase] | None

    @property
    def schedule_spec(self) -> ScheduleSpec: ...


def resolve(config: Section, training_steps: int | None = None,
            model_size: int | None = None) -> ResolvedSchedule:
    """Turn the config into concrete step counts, given what the run knows.

    ``training_steps`` here is the run's own count (what the trainer will step); the config's
    ``training_steps`` wins when set. Fractions (of warm-up, decay, milestones, phases) are
    rounded to whole steps. A schedule that does not use warm-up ignores ``warmup_steps`` (lint
    says so).

    Raises:
        ConfigError: a value the schedule needs is unknown, or warm-up exceeds training.
    """
    total = config.training_steps if config.training_steps is not None else training_steps
    problems: list[Problem] = []
    if total is not None and (isinstance(total, bool) or int(total) != total or total < 1):
        problems.append(Problem("training_steps", f"{show(total)} from the run is not a step count; "
                                                  f"pass a whole number >= 1"))
        total = None
    total = None if total is None else int(total)
    resolved, found = resolve_schedule(config, config, total, model_size)
    problems.extend(found)
    if problems or resolved is None:
        raise ConfigError([Problem(f"{SECTION}.{p.path}", p.message) for p in problems])
    return resolved


def resolve_schedule(source: ScheduleFields, config: Section, total: int | None, model_size: int | None,
                     length: str = "training_steps") -> tuple[ResolvedSchedule | None, list[Problem]]:
    """The schedule ``source`` describes (the section, or one of its phases) over ``total`` steps.

    ``config`` gives what a phase shares with the section: the base LR that absolute LRs are
    fractions of, the decay factor when the phase has none, plateau's settings. Problems have
    paths relative to ``source``.
    """
    schedule, spec = source.schedule_name, source.schedule_spec
    problems: list[Problem] = []
    warmup = 0
    given = source.warmup_steps if source.warmup_steps is not None else spec.default_warmup
    if spec.uses_warmup and isinstance(given, float):
        if total is not None or given == 0:  # no warm-up is 0 steps of any run
            warmup = int(round(given * (total or 0)))
        elif source.warmup_steps is not None:  # a default fraction: needs_training_steps says what is missing
            problems.append(Problem("warmup_steps", f"{show(given)} is a fraction of training_steps, which is unknown; "
                                    f"set optimizer.training_steps or give warm-up in steps"))
    elif spec.uses_warmup and isinstance(given, int):
        warmup = given
        if total is not None and warmup > total:
            problems.append(warmup_too_long(warmup, total, length))
    if spec.needs_training_steps and total is None:
        problems.append(Problem("training_steps", f"required by the {schedule} schedule and not known; set "
                                f"optimizer.training_steps, or pass the run's step count (training_data_size)"))
    if spec.needs_warmup and warmup < 1 and not problems:
        problems.append(Problem("warmup_steps", f"{show(source.warmup_steps)} gives {warmup} steps; the {schedule} "
                                f"schedule needs at least 1 step of warm-up"))
    if spec.needs_model_size and (model_size is None or model_size < 1):
        problems.append(Problem("model_size", f"{show(model_size)} is not a model size; the {schedule} schedule needs "
                                f"the model's hidden size (an integer >= 1)"))
    decay = None
    if "decay_steps" in spec.options and total is not None:
        given_decay = DEFAULT_DECAY if source.decay_steps is None else source.decay_steps
        decay = max(min(steps_of(given_decay, total), total - warmup), 0)  # lint says when it is cut
    milestones: tuple[int, ...] = ()
    if "milestones" in spec.options and source.milestones is not None:
        unknown = [i for i, m in enumerate(source.milestones) if isinstance(m, float) and total is None]
        problems.extend(Problem(f"milestones.{i}", f"{show(source.milestones[i])} is a fraction of training_steps, "
                                f"which is unknown; set optimizer.training_steps or give milestones in steps")
                        for i in unknown)
        if not unknown:
            milestones = tuple(steps_of(m, total or 0) for m in source.milestones)
            problems.extend(Problem(f"milestones.{p.path}", p.message)
                            for p in milestone_problems(source.milestones, total))
    phases: tuple[ResolvedPhase, ...] = ()
    if "phases" in spec.options and source.phases:
        phases, found = resolve_phases(source.phases, config, total)
        problems.extend(found)
    if problems:
        return None, problems
    lr = config.learning_rate
    start = spec.start_ratio if source.warmup_start_lr is None else source.warmup_start_lr / lr
    if source.final_lr_ratio is not None:
        final = source.final_lr_ratio
    elif source.min_lr is not None:
        final = source.min_lr / lr
    else:
        final = 0.0 if spec.end_over_start is None else start * spec.end_over_start
    factor = getattr(source, "learning_rate_decay", None)
    return ResolvedSchedule(
        name=schedule, interval=spec.interval, warmup_steps=warmup, training_steps=total,
        model_size=model_size if spec.needs_model_size else None,
        power=1.0 if source.power is None else source.power, final_lr_ratio=final,
        factor=config.learning_rate_decay if factor is None else factor, patience=config.learning_rate_decay_start,
        monitor=config.monitor, mode=config.mode, timescale=source.timescale, warmup_start=start,
        decay_steps=decay, decay_shape=source.decay_shape or DEFAULT_DECAY_SHAPE, cycle_steps=source.cycle_steps,
        cycle_mult=1.0 if source.cycle_mult is None else source.cycle_mult,
        step_size=source.step_size or 1, milestones=milestones, phases=phases,
    ), []


def resolve_phases(phases: Sequence[Phase], config: Section,
                   total: int | None) -> tuple[tuple[ResolvedPhase, ...], list[Problem]]:
    """Each phase's start, length and schedule; problems have paths from the section."""
    resolved: list[ResolvedPhase] = []
    problems: list[Problem] = []
    start = 0
    for i, phase in enumerate(phases):
        where = f"phases.{i}."
        if phase.steps is None:  # the last phase: the rest of the run
            length = None if total is None else total - start
            if length is not None and length < 1:
                problems.append(Problem(where + "steps", f"nothing is left for this phase: the phases before it take "
                                        f"{start} steps and the run has {total}; give it steps, or shorten them"))
                continue
        elif isinstance(phase.steps, float) and total is None:
            problems.append(Problem(where + "steps", f"{show(phase.steps)} is a fraction of training_steps, which is "
                                    f"unknown; set optimizer.training_steps or give the phase's steps as a count"))
            continue
        else:
            length = steps_of(phase.steps, total or 0)
            if length < 1:
                problems.append(Problem(where + "steps", f"{show(phase.steps)} of {total} steps rounds to 0 steps; "
                                        f"use a larger fraction or a step count"))
                continue
        schedule, found = resolve_schedule(phase, config, length, None, length="the phase's steps")
        problems.extend(_in_phase(where, phase, p) for p in found)
        if schedule is not None:
            resolved.append(ResolvedPhase(start, length, schedule))
        start += length or 0
    return tuple(resolved), problems


def _in_phase(where: str, phase: Phase, problem: Problem) -> Problem:
    if problem.path == "training_steps":  # a phase's training_steps is its length
        return Problem(where + "steps", f"the {phase.scheduler} phase needs its length: give steps, or set "
                                        f"optimizer.training_steps so that the last phase runs to the end of the run")
    return Problem(where + problem.path, problem.message)


def warmup_too_long(warmup: int, total: int, length: str = "training_steps") -> Problem:
    return Problem("warmup_steps", f"{warmup} steps is longer than {length} ({total}); use at most {total} "
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


def resolve_for(config: Section, parameters: Any, training_data_size: int | None = None,
                model_size: int | None = None) -> ResolvedSchedule:
    """What ``from_config`` resolves for these parameters, without building anything."""
    if model_size is None and config.schedule_spec.needs_model_size:
        model_size = model_size_of(parameters)
    return resolve(config, training_data_size, model_size)
