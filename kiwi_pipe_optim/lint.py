"""What is valid but probably not what was meant, as findings the caller shows once.

Validation raises only for what cannot run; everything here is returned as a
:class:`~kiwi_pipe_optim.errors.Finding`. ``kiwi-optim validate``/``preview`` and the stage print
the findings themselves; :func:`report` logs them from the library, at most once per config, so
a user sees each exactly once whichever way the config travelled. Checks that need the run's
step count run only when it is known; checks that need the model class live with the Lightning
glue (:mod:`kiwi_pipe_optim.integrations.model_lint`).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from .config import OptimizerConfig
from .errors import ConfigError, Finding, choices, show
from .fields import steps_of
from .resolve import DEFAULT_DECAY
from .resolved import ResolvedSchedule, phase_schedules
from .schedules import SCHEDULE_SPECS

logger = logging.getLogger("kiwi_pipe_optim")


def lint(config: OptimizerConfig, run_steps: int | None = None,
         resolved: ResolvedSchedule | None = None) -> list[Finding]:
    """Everything suspicious about ``config`` (and its run's step count, when known); errors first.
    ``resolved``: the schedule already resolved for ``run_steps``, not resolved again."""
    found: list[Finding] = []
    spec, schedule, sspec = config.optimizer_spec, config.schedule_name, config.schedule_spec
    warmup = config.warmup_steps

    if warmup is not None and not sspec.uses_warmup:
        # Safe to ignore, and common after `dvc exp run -S optimizer.class_name=...`.
        found.append(Finding("warning", "optimizer.warmup_steps", f"{show(warmup)} is not used by the {schedule} "
                             f"schedule; remove it or choose a schedule with warm-up: "
                             f"{choices(n for n, s in SCHEDULE_SPECS.items() if s.uses_warmup)}"))
    if sspec.uses_warmup and config.warmup_written_as_one:
        found.append(Finding("warning", "optimizer.warmup_steps",
                             "1 means a fraction of 1.0: warm-up over the whole run, so the LR only reaches its peak "
                             "at the last step; write 1.0 if that is meant, or a step count >= 2"))
    if sspec.uses_warmup and run_steps is not None:
        total = config.training_steps or run_steps
        if isinstance(warmup, int) and warmup > run_steps:
            found.append(Finding("error", "optimizer.warmup_steps",
                                 f"{warmup} steps is longer than the run ({run_steps} optimizer steps); use at most "
                                 f"{run_steps}, or a fraction such as 0.1"))
        if isinstance(warmup, float) and 0 < warmup and round(warmup * total) == 0:
            found.append(Finding("warning", "optimizer.warmup_steps",
                                 f"{show(warmup)} of {total} steps rounds to 0 steps: no warm-up at all; use at least "
                                 f"{1 / total:.2g} or a step count"))
    total = config.training_steps or run_steps
    if sspec.uses_warmup and isinstance(warmup, int) and total is not None and warmup == total:
        found.append(Finding("warning", "optimizer.warmup_steps",
                             f"warm-up of {warmup} steps covers the whole run of {total} steps: the LR never reaches "
                             f"its peak; use fewer steps, such as {max(1, total // 10)}"))
    expected = _direction(config.monitor)
    if sspec.monitored and expected is not None and expected != config.mode:
        found.append(Finding("warning", "optimizer.mode",
                             f"{config.mode} with monitor {show(config.monitor)}: {config.schedule_name} would reduce "
                             f"the LR while {config.monitor} improves; use mode: {expected}"))
    decays = sspec.needs_training_steps and not config.final_lr_ratio and not config.min_lr
    if decays and run_steps is not None and config.training_steps is not None:
        t = config.training_steps
        if t < run_steps:
            found.append(Finding("warning", "optimizer.training_steps",
                                 f"the {schedule} schedule reaches 0 at step {t} but the trainer runs {run_steps} steps: "
                                 f"the last {run_steps - t} steps do not learn; remove training_steps to follow the "
                                 f"trainer, or set it to {run_steps}"))
        elif t > run_steps:
            found.append(Finding("warning", "optimizer.training_steps",
                                 f"the {schedule} schedule decays over {t} steps but the trainer stops after "
                                 f"{run_steps}: it never decays fully (it ends near {1 - run_steps / t:.0%} of the "
                                 f"way up); remove training_steps to follow the trainer, or set it to {run_steps}"))
    low, high = spec.typical_lr
    lr = config.learning_rate
    if lr > high or lr < low:
        side = "above" if lr > high else "below"
        found.append(Finding("warning", "optimizer.learning_rate",
                             f"{show(lr)} is far {side} the usual range of {spec.name} ({low:g} to {high:g}); check the "
                             f"exponent (OpenKiwi's guide: sgd 1, adagrad 0.1, adadelta 1, adam 0.001)"))
    found.extend(_schedule_findings(config, run_steps, resolved))
    return sorted(found, key=lambda f: f.level != "error")


def _schedule_findings(config: OptimizerConfig, run_steps: int | None,
                       resolved: ResolvedSchedule | None) -> list[Finding]:
    """Steps of a schedule (or of one of its phases) that fall outside the run or its phase."""
    if resolved is None:
        try:
            resolved = config.resolve(training_steps=run_steps)
        except ConfigError:  # resolve_errors reports it; what follows needs the resolved steps
            return []
    found: list[Finding] = []
    sources = [config, *(config.phases or ())]
    for source, (prefix, r) in zip(sources, phase_schedules(resolved)):
        found.extend(_steps_findings(f"optimizer.{prefix}", source, r))
    total, ends = resolved.training_steps, [p.start + p.steps for p in resolved.phases if p.steps is not None]
    if total is not None and ends and ends[-1] > total:
        late = next(i for i, p in enumerate(resolved.phases) if p.start + (p.steps or 0) > total)
        found.append(Finding("warning", "optimizer.phases",
                             f"the phases add up to {ends[-1]} steps but the run has {total}: from phases.{late} on "
                             f"they are cut short; shorten them, or let the last phase omit steps (the rest of the "
                             f"run)"))
    return found


def _steps_findings(path: str, source: object, r: ResolvedSchedule) -> list[Finding]:
    found: list[Finding] = []
    total, warmup, spec = r.training_steps, r.warmup_steps, SCHEDULE_SPECS[r.name]
    if getattr(source, "warmup_start_lr", None) is not None and warmup == 0 and spec.default_warmup is None:
        found.append(Finding("warning", f"{path}warmup_start_lr", f"{show(source.warmup_start_lr)} is not used "
                             f"without warm-up; set warmup_steps, or remove it"))
    if total is None:
        return found
    room = total - warmup
    if "decay_steps" in spec.options:
        asked = steps_of(DEFAULT_DECAY if source.decay_steps is None else source.decay_steps, total)
        if asked > room:
            found.append(Finding("warning", f"{path}decay_steps", f"{asked} steps is longer than the {room} steps "
                                 f"after warm-up: the decay starts when warm-up ends and lasts {room} steps; use at "
                                 f"most {room} steps, or a smaller fraction"))
    if r.cycle_steps is not None and r.cycle_steps > room:
        found.append(Finding("warning", f"{path}cycle_steps", f"the first cycle ({r.cycle_steps} steps) is longer "
                             f"than the {room} steps after warm-up: the LR never restarts nor reaches its end value; "
                             f"use at most {room} steps, or the cosine schedule"))
    if "step_size" in spec.requires and r.step_size >= room:
        found.append(Finding("warning", f"{path}step_size", f"the first reduction would be at step "
                             f"{warmup + r.step_size}, at or beyond the end ({total} steps): the LR never decays; use "
                             f"fewer steps, such as {max(1, room // 3)}"))
    for i, milestone in enumerate(r.milestones):
        if milestone >= total:
            found.append(Finding("warning", f"{path}milestones.{i}", f"step {milestone} is at or beyond the end "
                                 f"({total} steps): that reduction never happens; use a step below {total}"))
        elif 0 < warmup and milestone <= warmup:
            found.append(Finding("warning", f"{path}milestones.{i}", f"step {milestone} is within warm-up ({warmup} "
                                 f"steps): the LR is reduced as soon as warm-up ends; use a step after {warmup}"))
    return found


_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae", "rmse", "wer", "cer")
_HIGHER_IS_BETTER = ("acc", "f1", "auc", "precision", "recall", "bleu", "pearson", "spearman", "mcc", "r2", "iou")


def _direction(metric: str) -> str | None:
    """``min`` for a metric named like a loss, ``max`` for one named like a score, else unknown."""
    name = metric.lower()
    if any(word in name for word in _LOWER_IS_BETTER):
        return "min"
    if any(word in name for word in _HIGHER_IS_BETTER):
        return "max"
    return None


def resolve_errors(config: OptimizerConfig, run_steps: int | None, model_size: int | None) -> list[Finding]:
    """Resolution problems (unknown step count, warm-up too long) as error findings."""
    try:
        config.resolve(training_steps=run_steps, model_size=model_size)
    except ConfigError as e:
        return Finding.errors(e.problems)
    return []


def report(config: OptimizerConfig, findings: Iterable[Finding],
           emit: Callable[[Finding], None] | None = None) -> list[Finding]:
    """Show the warnings among ``findings`` not yet shown for this config; return those shown.

    ``emit`` shows one (default: the package logger). The stage reports a config's findings
    before training and ``from_config`` reports them again when it builds the optimizer:
    remembered on the config, each reaches the user once.
    """
    new = [f for f in findings if f.level == "warning" and str(f) not in config._reported]
    for finding in new:
        config._reported.add(str(finding))
        if emit is None:
            logger.warning("%s: %s", finding.path, finding.message)
        else:
            emit(finding)
    return new
