"""Findings that need the user's LightningModule class: what it logs.

Read from the class's source, without training: a plateau ``monitor`` the module never logs
would otherwise only surface at the end of the first epoch. (Param groups are checked on the
model itself: :func:`kiwi_pipe_optim.param_groups.assign`.)
"""

from __future__ import annotations

import inspect
import re

from ...config import OptimizerConfig
from ...errors import Finding, show

_LOGGED = re.compile(r"""\.log\(\s*["']([^"']+)["']""")
_LOGGED_DICT_KEY = re.compile(r"""["']([A-Za-z_][\w/.-]*)["']\s*:""")
_FRAMEWORKS = ("lightning", "pytorch_lightning", "torch", "builtins", "typing")


def _source_of(model_cls: type) -> str:
    texts = []
    for cls in model_cls.__mro__:
        if (cls.__module__ or "").startswith(_FRAMEWORKS):
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


def lint_model(config: OptimizerConfig, model_cls: type) -> list[Finding]:
    """Warnings about ``config`` that only the model class can tell."""
    found: list[Finding] = []
    if config.schedule_spec.monitored:
        logged = logged_metrics(model_cls)
        if not logged:
            found.append(Finding("warning", "optimizer.monitor",
                                 f"{config.schedule_name} monitors {show(config.monitor)} but {model_cls.__name__} "
                                 f"has no self.log call with a literal name; unless it logs {show(config.monitor)} "
                                 f"some other way, training stops at the first epoch end: log it, or choose a "
                                 f"step schedule"))
        elif config.monitor not in logged:
            found.append(Finding("warning", "optimizer.monitor",
                                 f"{config.schedule_name} monitors {show(config.monitor)} but {model_cls.__name__} "
                                 f"never logs it (it logs: {', '.join(sorted(logged))}); set optimizer.monitor to "
                                 f"one of them"))
    return found
