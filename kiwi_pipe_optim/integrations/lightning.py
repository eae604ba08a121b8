"""Lightning glue that works with both import names of the project.

``lightning.pytorch`` and ``pytorch_lightning`` ship the same classes under two names, and a
Trainer of one refuses modules and callbacks of the other. Everything here therefore looks at
which one the user's module derives from, and builds the trainer and callbacks from that one.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from types import ModuleType
from typing import Any, Callable

import torch

from ..config import OptimizerConfig
from ..optimizers import from_config
from ..param_groups import group_names, lr_group
from ..resolve import ResolvedSchedule, resolve_for
from .modes import OptimizerModes

FLAVORS = ("lightning.pytorch", "pytorch_lightning")
logger = logging.getLogger("kiwi_pipe_optim")


def flavor_of(obj: Any) -> ModuleType:
    """The Lightning package (``lightning.pytorch`` or ``pytorch_lightning``) a module (or its
    class) derives from.

    Raises:
        TypeError: it is no LightningModule of either.
    """
    klass = obj if isinstance(obj, type) else type(obj)
    for cls in klass.__mro__:
        module = cls.__module__ or ""
        for name in FLAVORS:
            if module == name or module.startswith(name + "."):
                flavor = importlib.import_module(name)
                if issubclass(klass, flavor.LightningModule):
                    return flavor
    raise TypeError(
        f"{klass.__module__}.{klass.__qualname__} is not a LightningModule; derive it from "
        f"lightning.pytorch.LightningModule or pytorch_lightning.LightningModule"
    )


def run_step_count(trainer: Any) -> int | None:
    """Optimizer steps the trainer will run (epochs, accumulation and devices counted), if finite."""
    if trainer is None:
        return None
    steps = trainer.estimated_stepping_batches
    return int(steps) if steps is not None and math.isfinite(steps) else None


def configure_optimizers(module: Any, config: OptimizerConfig, encoder: str = "encoder") -> Any:
    """What ``LightningModule.configure_optimizers`` should return for ``config``.

    ``training_steps`` left unset becomes what the attached trainer will actually step; the model
    size is decided by :func:`kiwi_pipe_optim.resolve.model_size_of`. The resolved schedule is
    kept on the module (``kiwi_resolved``) for loggers and the resume check.

    Example:
        >>> class Model(L.LightningModule):  # doctest: +SKIP
        ...     def configure_optimizers(self):
        ...         return configure_optimizers(self, self.hparams.optimizer)
    """
    trainer = getattr(module, "_trainer", None)
    steps = run_step_count(trainer)
    config = _kernels_for(config, trainer)
    module.kiwi_resolved = resolve_for(config, module, training_data_size=steps)
    return from_config(config, module, model_size=module.kiwi_resolved.model_size, training_data_size=steps)


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


def attach_config(module: Any, config: OptimizerConfig) -> bool:
    """Make ``module`` build its optimizer from ``config``; True if that replaced its own method.

    Modules with the :class:`KiwiOptimizers` mixin get the config and keep their method (which
    may refine ours). Any other module's ``configure_optimizers`` is replaced, as LightningCLI does
    when the optimizer is configured: otherwise ``dvc exp run -S optimizer.…`` would silently
    change nothing.
    """
    if isinstance(module, KiwiOptimizers):
        module.optimizer_config = config
        return False
    replaced = type(module).configure_optimizers is not flavor_of(module).LightningModule.configure_optimizers
    module.configure_optimizers = lambda: configure_optimizers(module, config)
    return replaced


class _StepRecorder:
    """Observes what only the training loop knows, and hands it to every logger of the trainer:
    the LR of every param group at every optimizer step, named after the group (``lr/encoder``),
    its momentum (or Adam's beta1) whenever that changes, the step size an adaptive optimizer
    works out (Prodigy's and D-Adaptation's ``d`` times ``lr``, as ``lr_effective/encoder``), and
    the training loss per optimizer step.

    The loss is the mean of what ``training_step`` returned for the step's micro-batches, as the
    user would compute it: Lightning hands callbacks that loss divided by
    ``accumulate_grad_batches`` (automatic optimization), so it is multiplied back. It goes under
    ``train_loss``, unless the module logs a key of that name itself: the module's values then
    stand there (``train_loss``, ``train_loss_step``, ``train_loss_epoch``, as Lightning names
    them), and ours goes under ``kiwi/train_loss``. Under DDP it is rank 0's.

    The loss stays on its device (summed over accumulated batches as a tensor): no host sync per
    step. Its state is the loss of a step in progress, so a checkpoint costs the same at any step.

    A step's LRs are read before the optimizer step and handed to the loggers with its loss at the
    batch's end, as one row (our logger's ``log_row``; a dict for any other logger): at a 2.7 ms
    step, each call less through a logger is a few tenths of a percent of the run.
    """

    def __init__(self, on_resolved: Callable[[ResolvedSchedule, list[Any]], None] | None = None):
        super().__init__()
        self.on_resolved = on_resolved
        self._loss_sum: Any = None
        self._loss_count = 0
        self._logged_step = -1
        self._loss_scale = 1
        self._loss_keys: tuple[str, ...] | None = None
        self._momenta: dict[int, list[Any]] = {}
        self._plans: dict[int, _Plan] = {}
        self._sinks: list[Callable[[tuple[str, ...], list[Any], int], None]] = []
        self._pending: tuple[tuple[str, ...], list[Any], int, tuple[str, ...]] | None = None  # a step's LRs
        self._started: float | None = None
        self.seconds = 0.0
        self.modes = OptimizerModes()

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": None if self._loss_sum is None else self._loss_sum.detach().cpu(),
                "loss_count": self._loss_count, "logged_step": self._logged_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loss_sum, self._loss_count, self._logged_step = (state["loss_sum"], state["loss_count"],
                                                               state["logged_step"])

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        resolved = getattr(pl_module, "kiwi_resolved", None)
        if resolved is not None and self.on_resolved is not None and trainer.is_global_zero:
            self.on_resolved(resolved, list(trainer.optimizers))
        expecting = [logger for logger in trainer.loggers if hasattr(logger, "expect_steps")]
        if expecting:
            steps = run_step_count(trainer)
            for logger in expecting:
                logger.expect_steps(steps)
        self._sinks = [_sink(logger) for logger in trainer.loggers] if trainer.is_global_zero else []
        # Lightning's automatic optimization divides the loss it hands callbacks by this
        self._loss_scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        self._loss_keys = None
        self._plans.clear()
        self.modes.start(trainer)
        self._started = time.perf_counter()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.modes.to_train()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.modes.to_eval(trainer)

    def _loss_key(self, trainer: Any) -> tuple[str, ...]:
        """``train_loss``, or ``kiwi/train_loss`` when the module logs ``train_loss`` itself; decided
        once a fit, after its first ``training_step`` has logged."""
        if self._loss_keys is None:
            self._loss_keys = OWN_TRAIN_LOSS if TRAIN_LOSS[0] in module_logged(trainer) else TRAIN_LOSS
        return self._loss_keys

    def _plan(self, trainer: Any, optimizer: torch.optim.Optimizer) -> _Plan:
        """Names worked out once per optimizer, not at every step (again if its groups change)."""
        known = self._plans.get(id(optimizer))
        if known is not None and known.size == len(optimizer.param_groups):
            return known
        plan = self._plans[id(optimizer)] = _Plan(optimizer, self._loss_key(trainer))
        return plan

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        sinks = self._sinks
        if not sinks:
            return
        groups = optimizer.param_groups
        plan = self._plan(trainer, optimizer)
        step = trainer.global_step
        if step == plan.logged_step:
            return  # once a step: LBFGS's closure makes Lightning call this at every evaluation
        plan.logged_step = step
        lrs = [groups[index]["lr"] for index in plan.indices]
        if plan.adaptive:
            lrs += [groups[index]["d"] * groups[index]["lr"] for index in plan.adaptive]
        if self._pending is not None:  # a second optimizer step in one batch
            self._emit(*self._pending[:3])
        # sent with the step's loss at the batch's end, as one row
        self._pending = (plan.lr_keys, lrs, step, plan.lr_loss_keys)
        if plan.momentum_keys:
            # constant for most optimizers: logged when it changes, not 8 values a step for nothing
            momenta = plan.momenta(groups)
            last = self._momenta.get(id(optimizer))
            if momenta != last:
                keys = [key for i, key in enumerate(plan.momentum_keys) if last is None or momenta[i] != last[i]]
                changed = [float(m) for i, m in enumerate(momenta) if last is None or m != last[i]]
                self._momenta[id(optimizer)] = momenta
                for sink in sinks:
                    sink(tuple(keys), changed, step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            if loss.requires_grad:  # Lightning's automatic optimization hands a detached copy already
                loss = loss.detach()
            if self._loss_scale != 1:
                loss = loss * self._loss_scale
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum.to(loss.device) + loss
            self._loss_count += 1
        step = trainer.global_step - 1  # the optimizer step this batch completed, if any
        pending, self._pending = self._pending, None
        if step > self._logged_step and self._loss_count:
            mean = self._loss_sum if self._loss_count == 1 else self._loss_sum / self._loss_count
            if pending is not None and pending[2] == step:
                _, values, _, keys = pending
                values.append(mean)
                pending = None
            else:
                keys, values = self._loss_key(trainer), [mean]
            self._emit(keys, values, step)
            self._loss_sum, self._loss_count, self._logged_step = None, 0, step
        if pending is not None:
            self._emit(*pending[:3])

    def _emit(self, keys: tuple[str, ...], values: list[Any], step: int) -> None:
        for sink in self._sinks:
            sink(keys, values, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.modes.to_eval()  # what fit leaves, and what is saved or evaluated afterwards, is the average
        if self._pending is not None:
            self._emit(*self._pending[:3])
            self._pending = None
        if self._started is not None:
            self.seconds = time.perf_counter() - self._started


TRAIN_LOSS = ("train_loss",)
OWN_TRAIN_LOSS = ("kiwi/train_loss",)  # when the module logs train_loss itself


def module_logged(trainer: Any) -> set[str]:
    """The names the module has logged with ``self.log`` in the running loop, whether on_step,
    on_epoch or both (Lightning keeps them in its result collection, the only place that knows an
    on_epoch-only name before the epoch ends)."""
    results = getattr(trainer, "_results", None)
    names = {item.meta.name for item in results.values()} if results else set()
    return names | set(trainer.callback_metrics)


class _Plan:
    """What the recorder reads from an optimizer at every step: the first torch group of every
    param group (the halves of a group split by weight decay share its LR), and where its
    momentum is (``momentum``, or Adam's ``betas[0]``), for the groups that have a number there."""

    def __init__(self, optimizer: torch.optim.Optimizer, loss_keys: tuple[str, ...] = TRAIN_LOSS):
        groups = optimizer.param_groups
        self.size = len(groups)
        self.logged_step = -1
        indices, names, seen = [], [], set()
        for index, name in enumerate(group_names(optimizer)):
            name = lr_group(name)
            if name not in seen:
                seen.add(name)
                indices.append(index)
                names.append(name)
        self.indices = tuple(indices)
        # adaptive-LR optimizers keep the step size they estimate as ``d`` in each group
        adaptive = [(index, name) for index, name in zip(indices, names) if _is_number(groups[index].get("d"))]
        self.adaptive = tuple(index for index, _ in adaptive)
        self.lr_keys = tuple(f"lr/{name}" for name in names) + tuple(f"lr_effective/{name}" for _, name in adaptive)
        self.lr_loss_keys = self.lr_keys + loss_keys
        self._momentum: list[tuple[int, str, bool]] = []  # index, key, whether it is betas[0]
        for index, name in zip(indices, names):
            group = groups[index]
            betas = "momentum" not in group
            momentum = group["betas"][0] if betas and isinstance(group.get("betas"), (tuple, list)) \
                else group.get("momentum")
            if isinstance(momentum, (int, float)) and not isinstance(momentum, bool):
                self._momentum.append((index, f"momentum/{name}", betas))
        self.momentum_keys = tuple(key for _, key, _ in self._momentum)

    def momenta(self, groups: list[dict[str, Any]]) -> list[Any]:
        return [groups[i]["betas"][0] if betas else groups[i]["momentum"] for i, _, betas in self._momentum]


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sink(logger: Any) -> Callable[[tuple[str, ...], list[Any], int], None]:
    """How the recorder hands one step's values to a logger: ours takes them as a row (one buffer
    entry), any other as the ``log_metrics`` dict every Lightning logger takes."""
    row = getattr(logger, "log_row", None)
    if row is not None:
        return row
    return lambda keys, values, step: logger.log_metrics(dict(zip(keys, values)), step=step)


def step_recorder(flavor: ModuleType, **kwargs: Any) -> Any:
    """A :class:`_StepRecorder` that is a ``Callback`` of the given Lightning flavor."""
    cls = type("StepRecorder", (_StepRecorder, flavor.Callback), {"__module__": __name__})
    return cls(**kwargs)


def lr_monitor(flavor: str = "lightning.pytorch") -> Any:
    """The LR and loss observer for a plain ``Trainer`` (``callbacks=[lr_monitor()]``), next to
    :func:`kiwi_pipe_optim.integrations.logger.mlflow_logger` or any other logger."""
    return step_recorder(importlib.import_module(flavor))
