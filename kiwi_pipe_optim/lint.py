"""Warnings and errors about a schedule that is valid but probably not what was meant.

Each finding names the field and says what to change. Checks that need the run's step count or
the model class run only when those are known.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .config import OptimizerConfig, show
from .errors import ConfigError
from .specs import SCHEDULE_SPECS

_LOGGED = re.compile(r"""\.log\(\s*["']([^"']+)["']""")
_LOGGED_DICT_KEY = re.compile(r"""["']([A-Za-z_][\w/.-]*)["']\s*:""")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"


def _source_of(model_cls: type) -> str:
    texts = []
    for cls in model_cls.__mro__:
        module = cls.__module__ or ""
        if module.startswith(("lightning", "pytorch_lightning", "torch", "builtins", "typing")):
            continue
        try:
            texts.append(inspect.getsource(cls))
        except (OSError, TypeError):
            pass
    return "\n".join(texts)


def logged_metrics(model_cls: type) -> set[str]:
    """Metric names a LightningModule logs with a literal name (``self.log("val_loss", ...)``)."""
    source = _source_of(model_cls)
    names = set(_LOGGED.findall(source))
    for call in re.findall(r"log_dict\((.*?)\)", source, flags=re.S):
        names.update(_LOGGED_DICT_KEY.findall(call))
    return names


def lint(config: OptimizerConfig, raw: Mapping[str, Any] | None = None, run_steps: int | None = None,
         model_cls: type | None = None) -> list[Finding]:
    """Everything suspicious about ``config``; errors first.

    Args:
        config: the validated section.
        raw: the section as written (to tell ``warmup_steps: 1`` from ``1.0``).
        run_steps: optimizer steps the trainer will run, if known.
        model_cls: the LightningModule class, if known.
    """
    found: list[Finding] = []
    raw = raw or {}
    spec = config.optimizer_spec
    schedule = config.schedule_name
    sspec = SCHEDULE_SPECS[schedule]
    warmup = config.warmup_steps

    if sspec.uses_warmup and raw.get("warmup_steps") == 1 and not isinstance(raw.get("warmup_steps"), (bool, float)):
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
    decays = sspec.needs_training_steps and not config.final_lr_ratio
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
    if model_cls is not None:
        if schedule == "plateau":
            logged = logged_metrics(model_cls)
            if logged and config.monitor not in logged:
                found.append(Finding("warning", "optimizer.monitor",
                                     f"plateau monitors {show(config.monitor)} but {model_cls.__name__} never logs it "
                                     f"(it logs: {', '.join(sorted(logged))}); set optimizer.monitor to one of them"))
        wants_encoder = config.encoder_learning_rate is not None
        if wants_encoder and not re.search(r"self\.encoder\s*[:=]", _source_of(model_cls)):
            found.append(Finding("warning", "optimizer.encoder_learning_rate",
                                 f"{show(config.encoder_learning_rate)} is set but {model_cls.__name__} has no "
                                 f"'encoder' submodule, so no group gets it; remove it, or use param_groups rules"))
    return sorted(found, key=lambda f: f.level != "error")


def resolve_errors(config: OptimizerConfig, run_steps: int | None, model_size: int | None) -> list[Finding]:
    """Resolution problems (unknown step count, warm-up too long) as error findings."""
    try:
        config.resolve(training_steps=run_steps, model_size=model_size)
    except ConfigError as e:
        return [Finding("error", p.path, p.message) for p in e.problems]
    return []
