"""Declare optimizers and LR schedules in ``params.yaml``; build them for PyTorch and Lightning.

Importing the package is cheap: names that need torch load on first use, and nothing here ever
imports Lightning or MLflow (those live in ``kiwi_pipe_optim.integrations``).

Example:
    >>> import torch
    >>> from kiwi_pipe_optim import OptimizerConfig, from_config
    >>> cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3)
    >>> opt = from_config(cfg, torch.nn.Linear(4, 2).parameters())
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .config import OptimizerConfig, load_config
from .errors import ConfigError, Problem
from .params_file import read_params
from .resolved import ResolvedSchedule
from .schedules import list_schedules
from .specs import list_optimizers

__version__ = "0.1.0"

logger = logging.getLogger("kiwi_pipe_optim")

_LAZY = {
    "OPTIMIZERS_MAPPING": "optimizers",
    "optimizer_class": "optimizers",
    "optimizer_name": "optimizers",
    "from_config": "optimizers",
    "get_noam_decay_schedule": "schedules",
    "save_state": "state",
    "load_state": "state",
    "named_groups": "param_groups",
}

__all__ = [
    "OptimizerConfig",
    "ResolvedSchedule",
    "ConfigError",
    "Problem",
    "OPTIMIZERS_MAPPING",
    "optimizer_class",
    "optimizer_name",
    "from_config",
    "get_noam_decay_schedule",
    "save_state",
    "load_state",
    "named_groups",
    "load_config",
    "read_params",
    "list_optimizers",
    "list_schedules",
    "logger",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kiwi_pipe_optim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
