"""``scheduler: phases``: schedules run one after the other, each on its own steps.

The composition of optax's ``join_schedules`` and of mmengine's list of parameter schedulers,
written as data: each phase is a mapping with ``scheduler``, ``steps`` and that schedule's own
keys, and runs on ``step - its start`` with ``training_steps`` = its length, so a phase reads
exactly as the same schedule would alone. The multiplier that joins them is
:func:`kiwi_pipe_optim.multipliers.phased`; being one ``LambdaLR`` multiplier, a composed curve
previews, steps and resumes like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Mapping, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .errors import Problem, choices, did_you_mean, show
from .fields import (DECAY_SHAPES, AbsoluteLR, CycleMult, DecayShape, Milestones, OptionalDecayFactor, Power,
                     Problems, Ratio, StepCount, Steps, Timescale, steps_of)
from .resolve import ResolvedPhase, ResolvedSchedule, resolve_schedule
from .schedules import SCHEDULE_SPECS, ScheduleSpec

if TYPE_CHECKING:
    from .config import OptimizerConfig

PHASE_SCHEDULES = tuple(sorted(n for n, s in SCHEDULE_SPECS.items() if s.in_phases))
_EXAMPLE = "[{scheduler: constant, steps: 1000, warmup_steps: 1000}, {scheduler: cosine}]"


def _phase_schedule(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str) and value in SCHEDULE_SPECS and value not in PHASE_SCHEDULES:
        raise ValueError(f"{show(value)} cannot be a phase (a phase's curve must follow from its own steps: no nested "
                         f"phases, plateau or noam); choose one of: {choices(PHASE_SCHEDULES)}")
    if not isinstance(value, str) or value not in SCHEDULE_SPECS:
        close = did_you_mean(value, PHASE_SCHEDULES) if isinstance(value, str) else ""
        raise ValueError(f"unknown schedule {show(value)}{close}; choose one of: {choices(PHASE_SCHEDULES)}")
    return value


class Phase(BaseModel):
    """One phase of ``scheduler: phases``: a schedule, its length, and that schedule's own keys,
    which mean what they mean in the section, with ``training_steps`` = this phase's steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: Annotated[Optional[str], BeforeValidator(_phase_schedule)] = Field(
        None, description="This phase's schedule (any but phases, plateau and noam).",
        json_schema_extra={"enum": list(PHASE_SCHEDULES)})
    steps: Steps = Field(None, description="This phase's length: whole steps, or a fraction in [0, 1] of "
                         "training_steps; the last phase may omit it (the rest of the run).")
    warmup_steps: Steps = Field(None, description="Warm-up: whole steps, or a fraction in [0, 1] of this phase's "
                                "steps.")
    warmup_start_lr: AbsoluteLR = Field(None, description="As optimizer.warmup_start_lr, for this phase.")
    final_lr_ratio: Ratio = Field(None, description="End of this phase's decay, a fraction of learning_rate.")
    min_lr: AbsoluteLR = Field(None, description="As optimizer.min_lr, for this phase.")
    power: Power = Field(None, description="polynomial: the exponent (default 1).")
    timescale: Timescale = Field(None, description="inverse_sqrt: as optimizer.timescale.")
    decay_steps: Steps = Field(None, description="wsd: the decay's length, steps or a fraction of this phase.")
    decay_shape: DecayShape = Field(None, description="wsd: 1-sqrt (default), linear or cosine.",
                                    json_schema_extra={"enum": list(DECAY_SHAPES)})
    cycle_steps: StepCount = Field(None, description="cosine_restarts: the first cycle's length in steps.")
    cycle_mult: CycleMult = Field(None, description="cosine_restarts: growth of each cycle (default 1).")
    step_size: StepCount = Field(None, description="step / exponential: steps per reduction.")
    milestones: Milestones = Field(None, description="multistep: steps (from this phase's start) or fractions of "
                                   "this phase's steps.")
    learning_rate_decay: OptionalDecayFactor = Field(
        None, description="step / multistep / exponential: the factor; default: optimizer.learning_rate_decay.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = list(cls.model_fields)
            unknown = [Problem(str(k), f"unknown key{did_you_mean(k, fields)}; a phase's keys: {', '.join(fields)}")
                       for k in data if k not in cls.model_fields]
            if unknown:
                raise Problems(unknown)
        return data

    @property
    def schedule_name(self) -> str:
        return self.scheduler or ""

    @property
    def schedule_spec(self) -> ScheduleSpec:
        return SCHEDULE_SPECS[self.schedule_name]


def _phase_list(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{show(value)} is not a list of phases; use a list such as {_EXAMPLE}")
    if not value:
        raise ValueError(f"[] has no phase; use a list such as {_EXAMPLE}, or choose another scheduler")
    bad = [Problem(str(i), f"{show(item)} is not a phase; write each as a mapping such as {{scheduler: cosine, "
                           f"steps: 1000}}") for i, item in enumerate(value) if not isinstance(item, (Mapping, Phase))]
    if bad:
        raise Problems(bad)
    return list(value)


Phases = Annotated[Optional[list[Phase]], BeforeValidator(_phase_list), Field(
    description="scheduler phases: schedules run one after the other, each a mapping {scheduler, steps, ...its own "
    "keys} counted from its own start; the last may omit steps (the rest of the run), after it its last LR holds.")]


def resolve_phases(phases: list[Phase], config: "OptimizerConfig",
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


def phase_schedules(resolved: ResolvedSchedule) -> list[tuple[str, ResolvedSchedule]]:
    """``(path prefix, schedule)`` for the schedule and each of its phases: what lint looks into."""
    return [("", resolved)] + [(f"phases.{i}.", p.schedule) for i, p in enumerate(resolved.phases)]
