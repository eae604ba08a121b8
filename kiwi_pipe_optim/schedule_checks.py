"""The schedule fields that are valid alone but not together, for the section and each phase.

A schedule's :class:`~kiwi_pipe_optim.schedules.ScheduleSpec` says which optional fields it reads
and which it needs; one function checks a field set against it, so ``optimizer.min_lr`` and
``optimizer.phases.2.min_lr`` get the same message.
"""

from __future__ import annotations

from .errors import Problem, choices, show
from .fields import milestone_problems
from .resolve import Section, warmup_too_long
from .schedule_fields import ScheduleFields
from .schedules import SCHEDULE_OPTIONS, SCHEDULE_SPECS

_REQUIRED = {
    "cycle_steps": "use the first cycle's length in steps, such as 1000",
    "step_size": "use the steps between two reductions, such as 1000",
    "milestones": "use ascending steps such as [3000, 6000], or fractions of training_steps such as [0.5, 0.75]",
    "phases": "use a list such as [{scheduler: constant, steps: 1000, warmup_steps: 1000}, {scheduler: cosine}]",
}
_BELOW_PEAK = {"warmup_start_lr": "use a warm-up start below the peak", "min_lr": "use an end LR below the peak"}


def schedule_problems(source: ScheduleFields, learning_rate: float, training_steps: int | None) -> list[Problem]:
    """What is wrong with the schedule fields of ``source`` (the section or a phase), paths relative to it."""
    spec, schedule = source.schedule_spec, source.schedule_name
    problems: list[Problem] = []
    for option in SCHEDULE_OPTIONS:
        if getattr(source, option, None) is not None and option not in spec.options:
            users = [n for n, s in SCHEDULE_SPECS.items() if option in s.options]
            problems.append(Problem(option, f"not used by the {schedule} schedule; it applies to: {choices(users)}"))
    for option in spec.requires:
        if getattr(source, option, None) is None:
            problems.append(Problem(option, f"required by the {schedule} schedule; {_REQUIRED[option]}"))
    for option, fix in _BELOW_PEAK.items():
        value = getattr(source, option)
        if value is not None and option in spec.options and value >= learning_rate:
            problems.append(Problem(option, f"{show(value)} is not below learning_rate ({show(learning_rate)}); {fix}, "
                                            f"such as {learning_rate / 100:g}"))
    if source.min_lr is not None and source.final_lr_ratio is not None and "final_lr_ratio" in spec.options:
        problems.append(Problem("min_lr", f"{show(source.min_lr)} given together with final_lr_ratio "
                                          f"({show(source.final_lr_ratio)}); give one of them (final_lr_ratio = "
                                          f"min_lr / learning_rate)"))
    if source.milestones is not None and training_steps is not None:
        problems.extend(Problem(f"milestones.{p.path}", p.message)
                        for p in milestone_problems(source.milestones, training_steps))
    return problems


def phase_problems(config: Section) -> list[Problem]:
    """What is wrong with each of ``optimizer.phases``, paths from the section."""
    phases = config.phases or ()
    problems: list[Problem] = []
    for i, phase in enumerate(phases):
        where = f"phases.{i}."
        if phase.scheduler is None:
            problems.append(Problem(where + "scheduler", f"required; choose one of: "
                                    f"{choices(n for n, s in SCHEDULE_SPECS.items() if s.in_phases)}"))
            continue
        spec = phase.schedule_spec
        if phase.steps is None and i < len(phases) - 1:
            problems.append(Problem(where + "steps", "required for every phase but the last (which runs to the end); "
                                    "use a step count such as 1000, or a fraction in (0, 1] of training_steps"))
        elif phase.steps == 0:
            problems.append(Problem(where + "steps", "0 is no steps; a phase runs at least 1 step: use a step count "
                                    "such as 1000, or a fraction in (0, 1] of training_steps"))
        if phase.warmup_steps is not None and not spec.uses_warmup:
            users = [n for n, s in SCHEDULE_SPECS.items() if s.uses_warmup and s.in_phases]
            problems.append(Problem(where + "warmup_steps", f"not used by the {phase.scheduler} schedule; it applies "
                                    f"to: {choices(users)}"))
        elif isinstance(phase.warmup_steps, int) and isinstance(phase.steps, int) and phase.warmup_steps > phase.steps:
            too_long = warmup_too_long(phase.warmup_steps, phase.steps, "the phase's steps")
            problems.append(Problem(where + too_long.path, too_long.message))
        factor = config.learning_rate_decay if phase.learning_rate_decay is None else phase.learning_rate_decay
        if phase.learning_rate_decay is not None and not spec.needs_decay_factor:
            users = [n for n, s in SCHEDULE_SPECS.items() if s.needs_decay_factor and s.in_phases]
            problems.append(Problem(where + "learning_rate_decay", f"not used by the {phase.scheduler} schedule; it "
                                    f"applies to: {choices(users)}"))
        elif spec.needs_decay_factor and not 0 < factor < 1:
            problems.append(Problem(where + "learning_rate_decay", f"{show(factor)} does not reduce the LR; the "
                                    f"{phase.scheduler} schedule needs a factor in (0, 1) such as 0.5"))
        length = phase.steps if isinstance(phase.steps, int) else None
        problems.extend(Problem(where + p.path, p.message)
                        for p in schedule_problems(phase, config.learning_rate, length))
    return problems
