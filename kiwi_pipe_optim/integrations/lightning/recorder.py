"""The observer of what only the training loop knows: every param group's LR (and momentum,
and an adaptive optimizer's step size) at every optimizer step, and the training loss per step.
It hands them to every logger of the trainer, so it works with any ``Trainer(logger=...)``.
"""

from __future__ import annotations

import functools
import importlib
import time
from types import ModuleType
from typing import Any, Callable

import torch

from ...param_groups import group_names, lr_group
from .contracts import RowLogger, StepAwareLogger
from .flavor import run_step_count
from .modes import OptimizerModes
from .named import named


class StepRecorder:
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

    def __init__(self) -> None:
        super().__init__()
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
        expecting = [logger for logger in trainer.loggers if isinstance(logger, StepAwareLogger)]
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
    if isinstance(logger, RowLogger):
        return logger.log_row
    return lambda keys, values, step: logger.log_metrics(dict(zip(keys, values)), step=step)


@functools.cache
def monitor_class(flavor: ModuleType) -> type:
    """:class:`StepRecorder` as a ``Callback`` of the given Lightning package: ``KiwiLRMonitor``,
    which LightningCLI names as ``kiwi_pipe_optim.integrations.lightning.KiwiLRMonitor`` (or
    ``kiwi_pipe_optim.integrations.pytorch_lightning.KiwiLRMonitor``)."""

    class KiwiLRMonitor(StepRecorder, flavor.Callback):
        __doc__ = StepRecorder.__doc__

    return named(KiwiLRMonitor, flavor, "KiwiLRMonitor")


def step_recorder(flavor: ModuleType) -> Any:
    """A :class:`StepRecorder` that is a ``Callback`` of the given Lightning flavor."""
    return monitor_class(flavor)()


def lr_monitor(flavor: str = "lightning.pytorch") -> Any:
    """The LR and loss observer for a plain ``Trainer`` (``callbacks=[lr_monitor()]``), next to
    :func:`kiwi_pipe_optim.integrations.logger.mlflow_logger` or any other logger: a
    ``KiwiLRMonitor``."""
    return step_recorder(importlib.import_module(flavor))
