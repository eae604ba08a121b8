"""Named parameter groups, so every group's LR can be logged (and charted) under a stable name."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .config import OptimizerConfig
from .errors import ConfigError, Problem

DEFAULT_GROUP = "default"
ENCODER_GROUP = "encoder"


def named_groups(module: torch.nn.Module, config: OptimizerConfig, encoder: str = "encoder") -> list[dict[str, Any]]:
    """Split a model's trainable parameters into named groups.

    With ``encoder_learning_rate`` set, the parameters of the submodule ``encoder`` form the group
    ``encoder`` with that LR and the rest form ``default``; otherwise there is one group,
    ``default``.

    Example:
        >>> model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "head": torch.nn.Linear(4, 2)})
        >>> cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3, encoder_learning_rate=1e-5)
        >>> [(g["name"], g["lr"], len(g["params"])) for g in named_groups(model, cfg)]
        [('encoder', 1e-05, 2), ('default', 0.001, 2)]

    Raises:
        ConfigError: ``encoder_learning_rate`` is set but the model has no such submodule.
    """
    if config.encoder_learning_rate is None:
        return [_group(DEFAULT_GROUP, module.parameters(), config.learning_rate)]
    sub = getattr(module, encoder, None)
    if not isinstance(sub, torch.nn.Module):
        raise ConfigError(Problem(
            "optimizer.encoder_learning_rate",
            f"{config.encoder_learning_rate!r} is set, but {type(module).__name__} has no '{encoder}' "
            f"submodule; remove encoder_learning_rate or give the model an '{encoder}' attribute",
        ))
    encoder_ids = {id(p) for p in sub.parameters()}
    rest = (p for p in module.parameters() if id(p) not in encoder_ids)
    groups = [
        _group(ENCODER_GROUP, sub.parameters(), config.encoder_learning_rate),
        _group(DEFAULT_GROUP, rest, config.learning_rate),
    ]
    return [g for g in groups if g["params"]]


def _group(name: str, params: Iterable[torch.Tensor], lr: float) -> dict[str, Any]:
    return {"name": name, "params": [p for p in params if p.requires_grad], "lr": lr}


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every param group (``group<i>`` where a group has none)."""
    return [str(g.get("name", f"group{i}")) for i, g in enumerate(optimizer.param_groups)]
