"""The optimizer registry and ``from_config``, the factory Lightning's ``configure_optimizers`` returns.

``from_config`` only reads its config: runtime facts (the trainer's step count, the model size)
come in as arguments, and what it derives from them is returned in the scheduler, never written
back (OpenKiwi's version mutated ``training_steps`` and ``warmup_steps`` in place).
"""

from __future__ import annotations

import logging
from collections import Counter
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Union

import torch

from .config import OptimizerConfig, ResolvedSchedule
from .errors import ConfigError, Problem, choices, did_you_mean
from .param_groups import DEFAULT_GROUP, ENCODER_GROUP, named_groups
from .schedules import SCHEDULER_BUILDERS
from .specs import OPTIMIZER_SPECS
from .state import load_state

logger = logging.getLogger("kiwi_pipe_optim")

OPTIMIZERS_MAPPING: Mapping[str, type[torch.optim.Optimizer]] = MappingProxyType(
    {name: getattr(torch.optim, spec.torch_class) for name, spec in OPTIMIZER_SPECS.items()}
)

FromConfigResult = Union[torch.optim.Optimizer, tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch class registered under ``name``.

    Example:
        >>> optimizer_class("adamw").__name__
        'AdamW'

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return OPTIMIZERS_MAPPING[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS_MAPPING)}; "
            f"choose one of: {choices(OPTIMIZERS_MAPPING)}"
        ) from None


def optimizer_name(cls: type) -> str:
    """The registry name of a torch optimizer class (Adam is ``adam``, not its ``noam`` alias).

    Example:
        >>> optimizer_name(torch.optim.ASGD)
        'averaged_sgd'

    Raises:
        ValueError: the class is not registered; the message lists the registered classes.
    """
    for name, registered in OPTIMIZERS_MAPPING.items():
        if registered is cls and name != "noam":
            return name
    known = sorted({c.__name__ for c in OPTIMIZERS_MAPPING.values()})
    raise ValueError(f"{getattr(cls, '__name__', cls)!r} is not a registered optimizer class; "
                     f"registered: {', '.join(known)}")


def from_config(
    config: OptimizerConfig,
    parameters: Union[torch.nn.Module, Iterable[torch.Tensor], Iterable[dict[str, Any]]],
    model_size: int | None = None,
    training_data_size: int | None = None,
) -> FromConfigResult:
    """Build the optimizer and LR scheduler a config describes, in a shape Lightning accepts.

    Args:
        config: the validated ``optimizer`` section; it is never modified.
        parameters: a module (param groups are then named, with the encoder LR applied), an
            iterable (a generator too) of tensors, or of param-group dicts, each of which may
            carry its own ``lr`` and ``name``. Tensors that do not require grad are left out.
        model_size: d_model for the noam schedule; by default the most common last dimension of
            the parameters.
        training_data_size: the number of optimizer steps the run will take, used when the config
            has no ``training_steps``. Pass what the trainer will actually step
            (``trainer.estimated_stepping_batches``), not the number of examples.

    Returns:
        The optimizer alone when there is no schedule, else ``([optimizer], [scheduler_config])``
        where ``scheduler_config`` carries ``scheduler``, ``interval``, ``frequency``, ``name``
        and, for reduce-on-plateau, ``monitor``. :func:`resolve_for` tells the step counts used.

    Example:
        >>> model = torch.nn.Linear(8, 2)
        >>> cfg = OptimizerConfig(class_name="adamw", learning_rate=1e-3, warmup_steps=0.1)
        >>> [opt], [sched] = from_config(cfg, model, training_data_size=1000)
        >>> sched["interval"], resolve_for(cfg, model, training_data_size=1000).warmup_steps
        ('step', 100)

    Raises:
        ConfigError: the config cannot be resolved for this run (e.g. no step count is known
            for a decaying schedule), or ``load`` holds no usable state.
    """
    groups, all_params = _groups(config, parameters)
    if model_size is None and config.schedule_name == "noam":
        model_size = _most_common_last_dim(all_params)
    resolved = config.resolve(training_steps=training_data_size, model_size=model_size)
    optimizer = _build(config, groups)
    builder = SCHEDULER_BUILDERS.get(resolved.name)
    scheduler = None if builder is None else builder(optimizer, resolved)
    if config.load is not None:
        load_state(config.load, optimizer, scheduler, class_name=config.class_name)
    if scheduler is None:
        return optimizer
    scheduler_config: dict[str, Any] = {
        "scheduler": scheduler,
        "interval": resolved.interval,
        "frequency": 1,
        "name": resolved.name,
    }
    if resolved.name == "plateau":
        scheduler_config["monitor"] = resolved.monitor
        scheduler_config["strict"] = True
    return [optimizer], [scheduler_config]


def resolve_for(config: OptimizerConfig, parameters: Any, training_data_size: int | None = None,
                model_size: int | None = None) -> ResolvedSchedule:
    """What ``from_config`` would resolve, without building anything (for logging and previews)."""
    if model_size is None and config.schedule_name == "noam":
        _, all_params = _groups(config, parameters)
        model_size = _most_common_last_dim(all_params)
    return config.resolve(training_steps=training_data_size, model_size=model_size)


def _groups(config: OptimizerConfig, parameters: Any) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Param groups (copies, trainable tensors only, each named) and every tensor seen."""
    if isinstance(parameters, torch.nn.Module):
        return named_groups(parameters, config), list(parameters.parameters())
    items = list(parameters)  # read a generator exactly once
    if not items:
        raise ValueError("from_config: parameters is empty; pass model.parameters() or param groups")
    if all(isinstance(item, dict) for item in items):
        groups, seen = [], []
        for i, item in enumerate(items):
            if "params" not in item:
                raise ValueError(f"from_config: param group {i} has no 'params' key; give {{'params': [...], ...}}")
            params = item["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            seen.extend(params)
            group = dict(item, params=[p for p in params if p.requires_grad])
            group.setdefault("name", DEFAULT_GROUP if len(items) == 1 else f"group{i}")
            if group["params"]:
                groups.append(group)
        names = [g["name"] for g in groups]
        if config.encoder_learning_rate is not None and ENCODER_GROUP not in names and not any("lr" in g for g in groups):
            logger.warning(
                "optimizer.encoder_learning_rate is set but no param group is named 'encoder' or carries "
                "its own 'lr'; pass the model (or an 'encoder' group) to from_config to use it"
            )
    elif any(isinstance(item, dict) for item in items):
        raise ValueError("from_config: parameters mixes tensors and param-group dicts; pass one kind")
    else:
        seen = items
        groups = [{"name": DEFAULT_GROUP, "params": [p for p in items if p.requires_grad]}]
        if config.encoder_learning_rate is not None:
            logger.warning(
                "optimizer.encoder_learning_rate is set but from_config got a flat parameter list; "
                "pass the model (or an 'encoder' param group) to use it"
            )
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("from_config: no parameter requires grad; nothing to optimize")
    return groups, seen


def _most_common_last_dim(params: list[torch.Tensor]) -> int | None:
    """OpenKiwi's fallback for the noam model size: the mode of the parameters' last dimension."""
    dims = Counter(int(p.shape[-1]) for p in params if p.dim() > 0)
    return dims.most_common(1)[0][0] if dims else None


def _build(config: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls = OPTIMIZERS_MAPPING[config.class_name]
    kwargs = config.optimizer_kwargs()
    impl = config.implementation
    if impl == "loop" and config.optimizer_spec.foreach:
        kwargs["foreach"] = False
    elif impl == "foreach":
        kwargs["foreach"] = True
    elif impl == "fused":
        kwargs["fused"] = True
    elif impl == "auto" and config.optimizer_spec.fused:
        # The fused kernels step several times faster than torch's default per-tensor loop on CPU
        # and CUDA; where a parameter's device or dtype has none, torch refuses at construction.
        try:
            return cls(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError):
            pass
    try:
        return cls(groups, **kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(Problem(
            "optimizer.class_name", f"{config.class_name} cannot optimize these parameters: {str(e).splitlines()[0]}"
        )) from None
