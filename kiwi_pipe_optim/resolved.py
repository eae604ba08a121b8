"""What resolving a config gives: the schedule with every step count known.

Plain data that imports nothing of the package, so that the modules which resolve a schedule,
build its multiplier or check it can all name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResolvedPhase:
    """One phase of a composed schedule: its first step, its length (None: to the end) and schedule."""

    start: int
    steps: int | None
    schedule: "ResolvedSchedule"


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with every step count known: what the run will do, and what gets logged.

    LRs given as absolute values (``warmup_start_lr``, ``min_lr``) are here fractions of
    ``learning_rate``: ``warmup_start`` and ``final_lr_ratio``. For step, multistep and exponential
    ``final_lr_ratio`` is the floor.
    """

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
    warmup_start: float = 0.0
    decay_steps: int | None = None  # wsd, cut to what warm-up leaves
    decay_shape: str = "1-sqrt"
    cycle_steps: int | None = None
    cycle_mult: float = 1.0
    step_size: int = 1
    milestones: tuple[int, ...] = ()
    phases: tuple[ResolvedPhase, ...] = ()


def phase_schedules(resolved: ResolvedSchedule) -> list[tuple[str, ResolvedSchedule]]:
    """``(path prefix, schedule)`` for the schedule and each of its phases: what lint looks into."""
    return [("", resolved)] + [(f"phases.{i}.", p.schedule) for i, p in enumerate(resolved.phases)]
