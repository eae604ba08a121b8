"""The optimizer registry and ``from_config``, the factory Lightning's ``configure_optimizers`` returns.

``from_config`` only reads its config: runtime facts (the trainer's step count, the model size)
come in as arguments, and what it derives from them is returned in the scheduler, never written
back (OpenKiwi's version mutated ``training_steps`` and ``warmup_steps`` in place).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Union

import torch

from .config import OptimizerConfig
from .errors import ConfigError, Problem, choices, did_you_mean, show
from .lint import lint, report
from .param_groups import DEFAULT_GROUP, ENCODER_GROUP, Assignment, assign, named_groups
from .resolve import resolve_for
from .resolved import ResolvedSchedule
from .schedules import build_scheduler
from .specs import OPTIMIZER_SPECS, is_import_path, optimizer_spec
from .state import load_state

logger = logging.getLogger("kiwi_pipe_optim")

OPTIMIZERS_MAPPING: Mapping[str, type[torch.optim.Optimizer]] = MappingProxyType(
    {name: spec.load_class() for name, spec in OPTIMIZER_SPECS.items()}
)

FromConfigResult = Union[torch.optim.Optimizer, tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch class registered under ``name``, or named by ``package.module:ClassName``.

    Example:
        >>> optimizer_class("adamw").__name__
        'AdamW'
        >>> optimizer_class("torch.optim:SGD").__name__
        'SGD'

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if is_import_path(name):
        return optimizer_spec(name).load_class()
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
        if registered is cls and not OPTIMIZER_SPECS[name].alias:
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
    source = parameters if isinstance(parameters, torch.nn.Module) else all_params
    resolved = resolve_for(config, source, training_data_size, model_size)
    report(config, lint(config, training_data_size, resolved=resolved))
    return _assembled(config, groups, resolved)


@dataclass(frozen=True)
class OptimizerPlan:
    """What building a module's optimizer needs worked out, each part once: which parameter goes
    to which group (:func:`~kiwi_pipe_optim.param_groups.assign`) and the schedule resolved for
    ``run_steps``. A caller that checks a run before it starts (the DVC stage) keeps the plan
    and builds from it, rather than forming the groups and resolving again."""

    config: OptimizerConfig
    assignment: list[Assignment]
    resolved: ResolvedSchedule
    run_steps: int | None


def plan_for(config: OptimizerConfig, module: torch.nn.Module, run_steps: int | None = None,
             model_size: int | None = None, encoder: str = "encoder") -> OptimizerPlan:
    """The groups and schedule :func:`from_config` would use for ``module``, without building.

    Raises:
        ConfigError: a group rule matches no parameter, or the schedule cannot be resolved.
    """
    assignment = assign(module, config, encoder)
    return OptimizerPlan(config, assignment, resolve_for(config, module, run_steps, model_size), run_steps)


def from_plan(plan: OptimizerPlan, module: torch.nn.Module) -> FromConfigResult:
    """:func:`from_config` for a planned module: built from the plan's groups and schedule; its
    findings were the planner's to show."""
    return _assembled(plan.config, named_groups(module, plan.config, assignment=plan.assignment), plan.resolved)


def _assembled(config: OptimizerConfig, groups: list[dict[str, Any]], resolved: ResolvedSchedule) -> FromConfigResult:
    optimizer = _build(config, groups)
    scheduler = build_scheduler(optimizer, resolved)
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
    if config.schedule_spec.monitored:
        scheduler_config["monitor"] = resolved.monitor
        scheduler_config["strict"] = True
    return [optimizer], [scheduler_config]


def build_optimizer(config: OptimizerConfig, module: torch.nn.Module,
                    assignment: list[Assignment] | None = None) -> torch.optim.Optimizer:
    """The optimizer alone, with ``from_config``'s groups and checks, no schedule (so no step count
    needed): ``validate`` builds it on a model on the meta device.

    Raises:
        ConfigError: what the constructor refuses, naming ``optimizer.options.<key>`` where one
            option is at fault, or an option a ``**kwargs`` class would ignore.
    """
    return _build(config, named_groups(module, config, assignment=assignment))


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


def _build(config: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls = optimizer_class(config.class_name)
    if config.optimizer_spec.single_group and len(groups) > 1:
        raise ConfigError(Problem(
            "optimizer.class_name", f"{config.class_name} takes one param group, and these parameters form "
            f"{len(groups)} ({', '.join(str(g.get('name')) for g in groups)}); remove param_groups, "
            f"encoder_learning_rate and weight decay, or choose another optimizer"))
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
            return _checked(config, cls(_probe(groups), **kwargs, fused=True), cls, groups, kwargs)
        except (RuntimeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            logger.info("optimizer.implementation: auto: no fused %s for these parameters (%s); using torch's "
                        "default", config.class_name, str(e).splitlines()[0][:160])
    try:
        optimizer = cls(_probe(groups), **kwargs)
    except Exception as e:  # noqa: BLE001 - a package's class refuses with whatever it likes
        raise _refusal(config, cls, groups, kwargs, e) from None
    return _checked(config, optimizer, cls, groups, kwargs)


def _checked(config: OptimizerConfig, optimizer: torch.optim.Optimizer, cls: type,
             groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """A class that takes ``**kwargs`` (all of pytorch-optimizer's) accepts any name, and some copy
    them into ``defaults`` unread: an option is real if the signature names it, or if the class
    keeps it in its ``defaults`` when it is not given."""
    spec = config.optimizer_spec
    unnamed = [key for key in config.options if key not in spec.options]
    if spec.open_options and unnamed:
        bare = cls(_probe(groups), **{k: v for k, v in kwargs.items() if k not in unnamed})
        accepted = sorted({*spec.options, *bare.defaults} - {"params", "lr", "weight_decay"})
        ignored = [key for key in unnamed if key not in accepted]
        if ignored:
            raise ConfigError([Problem(f"optimizer.options.{key}", f"not an option of {config.class_name}"
                                       f"{did_you_mean(key, accepted)} (it takes **kwargs and would ignore it); "
                                       f"{config.class_name} accepts: {', '.join(accepted)}") for key in ignored])
    return optimizer


def _refusal(config: OptimizerConfig, cls: type, groups: list[dict[str, Any]], kwargs: dict[str, Any],
             error: Exception) -> ConfigError:
    """The constructor's refusal in one line, naming the option at fault where one is: the class is
    built again without the user's options, then with each alone."""
    def refuses(options: dict[str, Any]) -> bool:
        try:
            cls(_probe(groups), **options)
        except Exception:  # noqa: BLE001
            return True
        return False

    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}" if str(error) else type(error).__name__
    base = {k: v for k, v in kwargs.items() if k not in config.options}
    if config.options and not refuses(base):
        culprits = [key for key in config.options if refuses({**base, key: kwargs[key]})]
        if culprits:
            return ConfigError([Problem(f"optimizer.options.{key}", f"{show(config.options[key])} is refused by "
                                        f"{config.class_name}: {reason}") for key in culprits])
    return ConfigError(Problem("optimizer.class_name",
                               f"{config.class_name} cannot optimize these parameters: {reason}"))


def _probe(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fresh copy of the groups for each construction: torch's ``add_param_group`` writes the
    class's defaults into the dicts it is given (a refused fused attempt would leave ``fused``)."""
    return [dict(g, params=list(g["params"])) for g in groups]


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """The kernel an optimizer steps with: ``fused``, ``foreach`` or ``loop`` (logged with the run)."""
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    foreach = defaults.get("foreach")
    if foreach is None and "foreach" in defaults:
        # torch's own default: foreach when every parameter is a CUDA tensor, else the loop.
        params = [p for g in optimizer.param_groups for p in g["params"]]
        foreach = bool(params) and all(p.is_cuda for p in params)
    return "foreach" if foreach else "loop"
