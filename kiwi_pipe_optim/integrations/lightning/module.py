"""A LightningModule's ``configure_optimizers`` from an :class:`~kiwi_pipe_optim.OptimizerConfig`:
for any module, through the :class:`KiwiOptimizers` mixin or :func:`attach_config`.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any

import torch

from ...config import OptimizerConfig
from ...lint import lint, report
from ...optimizers import OptimizerPlan, from_plan, plan_for
from ...resolve import ResolvedSchedule
from .flavor import flavor_of, run_step_count
from .modes import OptimizerModes

logger = logging.getLogger("kiwi_pipe_optim")


# The schedule each optimizer was built with, for the stage's resume check and its MLflow
# params; the plan the stage prepared for a module. Kept here, weakly, rather than written onto
# the user's module or optimizer.
_RESOLVED: weakref.WeakKeyDictionary[torch.optim.Optimizer, ResolvedSchedule] = weakref.WeakKeyDictionary()
_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, OptimizerPlan] = weakref.WeakKeyDictionary()


def configure_optimizers(module: Any, config: OptimizerConfig, encoder: str = "encoder") -> Any:
    """What ``LightningModule.configure_optimizers`` should return for ``config``.

    ``training_steps`` left unset becomes what the attached trainer will actually step; the model
    size is decided by :func:`kiwi_pipe_optim.resolve.model_size_of`; :func:`resolved_schedule`
    tells what was resolved. A plan handed to :func:`attach_config` for this very step count is
    used as it is: its groups formed, its schedule resolved and its findings shown already.

    Example:
        >>> class Model(L.LightningModule):  # doctest: +SKIP
        ...     def configure_optimizers(self):
        ...         return configure_optimizers(self, self.hparams.optimizer)
    """
    trainer = getattr(module, "_trainer", None)
    steps = run_step_count(trainer)
    plan = _PLANS.get(module)
    if plan is None or plan.config is not config or plan.run_steps != steps:
        plan = plan_for(config, module, steps, encoder=encoder)
        report(config, lint(config, steps, resolved=plan.resolved))
    built = from_plan(dataclasses.replace(plan, config=_kernels_for(config, trainer)), module)
    _RESOLVED[built if isinstance(built, torch.optim.Optimizer) else built[0][0]] = plan.resolved
    return built


def resolved_schedule(optimizer: torch.optim.Optimizer) -> ResolvedSchedule | None:
    """The schedule :func:`configure_optimizers` resolved for ``optimizer``; ``None`` for one it
    did not build."""
    return _RESOLVED.get(optimizer)


MIXED = ("16", "bf16", "16-mixed", "bf16-mixed")


def clips_under_mixed_precision(trainer: Any) -> bool:
    """Lightning refuses, at the first step, to clip the gradients of an optimizer that unscales
    them itself (a fused one) under mixed precision."""
    precision = trainer.get("precision") if isinstance(trainer, dict) else getattr(trainer, "precision", None)
    clip = trainer.get("gradient_clip_val") if isinstance(trainer, dict) else getattr(trainer, "gradient_clip_val", None)
    return str(precision) in MIXED and bool(clip) and float(clip) > 0


def _kernels_for(config: OptimizerConfig, trainer: Any) -> OptimizerConfig:
    """``implementation: auto`` would pick fused kernels, which Lightning refuses to clip under mixed
    precision: foreach there (the loop where the class has none), recorded in ``resolved.implementation``."""
    spec = config.optimizer_spec
    if trainer is None or config.implementation != "auto" or not spec.fused or not clips_under_mixed_precision(trainer):
        return config
    chosen = "foreach" if spec.foreach else "loop"
    logger.info("optimizer.implementation: auto: %s, not fused: Lightning does not clip the gradients of a fused "
                "optimizer under %s precision (trainer.gradient_clip_val)", chosen, trainer.precision)
    return config.model_copy(update={"implementation": chosen})


class KiwiOptimizers:
    """Mixin giving a LightningModule a ``configure_optimizers`` built from ``optimizer_config``,
    and schedule-free optimizers their modes (:mod:`.modes`) with any Trainer: train mode for
    training steps, eval mode for validation and after fit. A module that overrides
    ``on_train_start``, ``on_train_batch_start``, ``on_validation_start`` or ``on_train_end``
    calls ``super()`` there.

    Example:
        >>> class Model(KiwiOptimizers, L.LightningModule): ...  # doctest: +SKIP
        >>> model.optimizer_config = load_config("params.yaml")  # doctest: +SKIP
    """

    optimizer_config: OptimizerConfig | None = None

    def configure_optimizers(self) -> Any:
        if self.optimizer_config is None:
            raise RuntimeError(f"{type(self).__name__}.optimizer_config is not set; assign an OptimizerConfig before fit")
        return configure_optimizers(self, self.optimizer_config)

    @property
    def _kiwi_modes(self) -> OptimizerModes:
        modes = self.__dict__.get("_kiwi_optimizer_modes")
        if modes is None:
            modes = self.__dict__["_kiwi_optimizer_modes"] = OptimizerModes()
        return modes

    def on_train_start(self) -> None:
        self._kiwi_modes.start(self.trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        self._kiwi_modes.to_train()

    def on_validation_start(self) -> None:
        self._kiwi_modes.to_eval(self.trainer)

    def on_train_end(self) -> None:
        self._kiwi_modes.to_eval()


def attach_config(module: Any, config: OptimizerConfig, plan: OptimizerPlan | None = None) -> bool:
    """Make ``module`` build its optimizer from ``config``; True if that replaced its own method.
    ``plan``: what the caller worked out for it already (:func:`kiwi_pipe_optim.optimizers.plan_for`).

    Modules with the :class:`KiwiOptimizers` mixin get the config and keep their method (which
    may refine ours). Any other module's ``configure_optimizers`` is replaced, as LightningCLI does
    when the optimizer is configured: otherwise ``dvc exp run -S optimizer.…`` would silently
    change nothing.
    """
    if plan is not None:
        _PLANS[module] = plan
    if isinstance(module, KiwiOptimizers):
        module.optimizer_config = config
        return False
    replaced = type(module).configure_optimizers is not flavor_of(module).LightningModule.configure_optimizers
    module.configure_optimizers = lambda: configure_optimizers(module, config)
    return replaced


