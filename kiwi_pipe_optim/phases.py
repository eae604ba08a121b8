"""``scheduler: phases``: schedules run one after the other, each on its own steps.

The composition of optax's ``join_schedules`` and of mmengine's list of parameter schedulers,
written as data: each phase is a mapping with ``scheduler``, ``steps`` and that schedule's own
keys, and runs on ``step - its start`` with ``training_steps`` = its length, so a phase reads
exactly as the same schedule would alone. The multiplier that joins them is
:func:`kiwi_pipe_optim.multipliers.phased`; being one ``LambdaLR`` multiplier, a composed curve
previews, steps and resumes like any other.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping, Optional

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from .errors import Problem, choices, did_you_mean, show
from .fields import OptionalDecayFactor, Problems, Steps
from .schedule_fields import ScheduleFields, reworded
from .schedules import SCHEDULE_SPECS

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


# A phase's keys in its JSON Schema: what each means within the phase.
_IN_A_PHASE = {
    "warmup_steps": "Warm-up: whole steps, or a fraction in [0, 1] of this phase's steps.",
    "warmup_start_lr": "As optimizer.warmup_start_lr, for this phase.",
    "final_lr_ratio": "End of this phase's decay, a fraction of learning_rate.",
    "min_lr": "As optimizer.min_lr, for this phase.",
    "power": "polynomial: the exponent (default 1).",
    "timescale": "inverse_sqrt: as optimizer.timescale.",
    "decay_steps": "wsd: the decay's length, steps or a fraction of this phase.",
    "decay_shape": "wsd: 1-sqrt (default), linear or cosine.",
    "cycle_steps": "cosine_restarts: the first cycle's length in steps.",
    "cycle_mult": "cosine_restarts: growth of each cycle (default 1).",
    "step_size": "step / exponential: steps per reduction.",
    "milestones": "multistep: steps (from this phase's start) or fractions of this phase's steps.",
}


class Phase(ScheduleFields):
    """One phase of ``scheduler: phases``: a schedule, its length, and that schedule's own keys,
    which mean what they mean in the section, with ``training_steps`` = this phase's steps."""

    model_config = ConfigDict(json_schema_extra=reworded(_IN_A_PHASE))
    key_order = ("scheduler", "steps")

    scheduler: Annotated[Optional[str], BeforeValidator(_phase_schedule)] = Field(
        None, description="This phase's schedule (any but phases, plateau and noam).",
        json_schema_extra={"enum": list(PHASE_SCHEDULES)})
    steps: Steps = Field(None, description="This phase's length: whole steps, or a fraction in [0, 1] of "
                         "training_steps; the last phase may omit it (the rest of the run).")
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
