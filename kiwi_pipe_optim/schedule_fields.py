"""The schedule's own keys, declared once for the section and for each of ``scheduler: phases``.

A phase's keys mean what the section's mean, with ``training_steps`` = the phase's steps; one
declaration keeps their validation and messages the same, and lets resolving and checking take
either (:func:`kiwi_pipe_optim.resolve.resolve_schedule`,
:func:`kiwi_pipe_optim.schedule_checks.schedule_problems`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .fields import (DECAY_SHAPES, AbsoluteLR, CycleMult, DecayShape, Milestones, Power, Ratio, StepCount, Steps,
                     Timescale)
from .schedules import SCHEDULE_SPECS, ScheduleSpec


class ScheduleFields(BaseModel):
    """The keys a schedule reads besides its name. Descriptions are the section's; a subclass
    may reword them for its JSON Schema (``model_config["json_schema_extra"]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The order users read a model's keys in: "allowed keys" messages, `kiwi-optim validate`, the
    # JSON Schema and the order of validation errors. pydantic would put inherited fields first.
    key_order: ClassVar[tuple[str, ...]] = ()

    warmup_steps: Steps = Field(None, description="Warm-up length: a whole number of optimizer steps, or a "
                                "fraction in [0, 1] of training_steps (1 means the whole run).")
    warmup_start_lr: AbsoluteLR = Field(
        None, description="LR of learning_rate's group at step 0 of warm-up (default 0; one_cycle: learning_rate / "
        "25); warm-up rises linearly from it, other groups from the same fraction of their LR. Below learning_rate.")
    final_lr_ratio: Ratio = Field(
        None, description="LR at the end of the decay (linear, cosine, polynomial, wsd, cosine_restarts, one_cycle), "
        "as a fraction of the peak (default 0); or give min_lr.")
    min_lr: AbsoluteLR = Field(
        None, description="End LR of learning_rate's group: final_lr_ratio = min_lr / learning_rate (other groups end "
        "at the same fraction); for step, multistep and exponential, a floor. Give it or final_lr_ratio. Below "
        "learning_rate.")
    power: Power = Field(None, description="Exponent of the polynomial schedule (default 1).")
    timescale: Timescale = Field(None, description="Steps over which inverse_sqrt decays after warm-up (LR halved "
                                 "after 3 timescales); default: warmup_steps, or 1 without warm-up (transformers: "
                                 "10000).")
    decay_steps: Steps = Field(None, description="wsd: length of the final decay, a whole number of steps or a "
                               "fraction in [0, 1] of training_steps (default 0.1).")
    decay_shape: DecayShape = Field(
        None, description="wsd: shape of the decay: 1-sqrt (default; Hägele et al. 2024 found it best), linear or "
        "cosine.", json_schema_extra={"enum": list(DECAY_SHAPES)})
    cycle_steps: StepCount = Field(None, description="cosine_restarts: length of the first cycle, in steps.")
    cycle_mult: CycleMult = Field(None, description="cosine_restarts: each cycle is this many times longer than the "
                                  "one before (default 1, >= 1).")
    step_size: StepCount = Field(None, description="step: steps between two reductions by learning_rate_decay; "
                                 "exponential: steps per factor of learning_rate_decay (default 1).")
    milestones: Milestones = Field(
        None, description="multistep: steps at which the LR is multiplied by learning_rate_decay, ascending; each a "
        "whole number of steps or a fraction in [0, 1] of training_steps.")

    @property
    def schedule_name(self) -> str:
        """The schedule these keys are for: the section and a phase choose it differently."""
        raise NotImplementedError

    @property
    def schedule_spec(self) -> ScheduleSpec:
        return SCHEDULE_SPECS[self.schedule_name]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = cls.__pydantic_fields__
        unknown = [name for name in cls.key_order if name not in fields]
        if unknown:
            raise TypeError(f"{cls.__name__}.key_order names no field {', '.join(unknown)}")
        ordered = {**{name: fields[name] for name in cls.key_order}, **fields}  # the rest keep their place
        if list(ordered) != list(fields):
            cls.__pydantic_fields__ = ordered
            cls.model_rebuild(force=True)


def reworded(descriptions: dict[str, str]) -> Any:
    """A ``json_schema_extra`` giving these fields other descriptions in a model's JSON Schema."""
    def apply(schema: dict[str, Any]) -> None:
        for name, text in descriptions.items():
            schema["properties"][name]["description"] = text

    return apply
