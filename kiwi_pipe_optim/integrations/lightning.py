"""Lightning glue that works with both import names of the project.

``lightning.pytorch`` and ``pytorch_lightning`` ship the same classes under two names, and a
Trainer of one refuses modules and callbacks of the other. Everything here therefore looks at
which one the user's module derives from, and builds the trainer and callbacks from that one.
"""

from __future__ import annotations

import importlib
import math
import time
from types import ModuleType
from typing import Any, Callable

import torch

from ..config import OptimizerConfig
from ..optimizers import from_config
from ..param_groups import group_names
from ..resolve import ResolvedSchedule, resolve_for

FLAVORS = ("lightning.pytorch", "pytorch_lightning")


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
    steps = run_step_count(getattr(module, "_trainer", None))
    module.kiwi_resolved = resolve_for(config, module, training_data_size=steps)
    return from_config(config, module, model_size=module.kiwi_resolved.model_size, training_data_size=steps)


class KiwiOptimizers:
    """Mixin giving a LightningModule a ``configure_optimizers`` built from ``optimizer_config``.

    Example:
        >>> class Model(KiwiOptimizers, L.LightningModule): ...  # doctest: +SKIP
        >>> model.optimizer_config = load_config("params.yaml")  # doctest: +SKIP
    """

    optimizer_config: OptimizerConfig | None = None

    def configure_optimizers(self) -> Any:
        if self.optimizer_config is None:
            raise RuntimeError(f"{type(self).__name__}.optimizer_config is not set; assign an OptimizerConfig before fit")
        return configure_optimizers(self, self.optimizer_config)


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
    """Records the LR of every param group at every optimizer step, the loss per step and the
    validation metrics per epoch, and hands them to ``sink(key, value, step)``. ``flush(force)``
    is offered at every epoch end (``force=False``: the sink may wait for a bigger batch) and
    forced at the end of training and on failure."""

    def __init__(self, sink: Callable[[str, float, int], None] | None = None,
                 flush: Callable[[bool], None] | None = None,
                 on_resolved: Callable[[ResolvedSchedule, list[Any]], None] | None = None):
        super().__init__()
        self.sink = sink
        self.flush = flush
        self.on_resolved = on_resolved
        self.lr_history: list[tuple[int, dict[str, float]]] = []
        self.loss_history: list[tuple[int, float]] = []
        self.val_history: list[tuple[int, int, dict[str, float]]] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._logged_step = -1
        self._started: float | None = None
        self.seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        # In the checkpoint, so that a resumed run's outputs hold the whole run, not its tail. As
        # tensors: pickling a list of thousands of small objects made a save ten times slower.
        groups: list[str] = []
        for _, lrs in self.lr_history:
            groups.extend(g for g in lrs if g not in groups)
        nan = float("nan")
        return {
            "lr_groups": groups,
            "lr_steps": torch.tensor([step for step, _ in self.lr_history], dtype=torch.int64),
            "lr": torch.tensor([[lrs.get(g, nan) for g in groups] for _, lrs in self.lr_history],
                               dtype=torch.float64).reshape(len(self.lr_history), len(groups)),
            "loss": torch.tensor(self.loss_history, dtype=torch.float64).reshape(len(self.loss_history), 2),
            "val": self.val_history,
            "pending": [self._loss_sum, self._loss_count, self._logged_step],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history and hand all of it to the sink again: values logged before the
        checkpoint but lost with the crashed process reach MLflow (which skips those it holds)."""
        groups = list(state["lr_groups"])
        self.lr_history = [(step, {g: lr for g, lr in zip(groups, row) if not math.isnan(lr)})
                           for step, row in zip(state["lr_steps"].tolist(), state["lr"].tolist())]
        self.loss_history = [(int(step), loss) for step, loss in state["loss"].tolist()]
        self.val_history = [(int(step), int(epoch), dict(values)) for step, epoch, values in state["val"]]
        self._loss_sum, self._loss_count, self._logged_step = state["pending"]
        for step, lrs in self.lr_history:
            for name, lr in lrs.items():
                self._emit(f"lr/{name}", lr, step)
        for step, loss in self.loss_history:
            self._emit("train_loss", loss, step)
        for step, _, values in self.val_history:
            for key, value in values.items():
                self._emit(key, value, step)

    def _emit(self, key: str, value: float, step: int) -> None:
        if self.sink is not None:
            self.sink(key, value, step)

    def _flush(self, force: bool = True) -> None:
        if self.flush is not None:
            self.flush(force)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        resolved = getattr(pl_module, "kiwi_resolved", None)
        if resolved is not None and self.on_resolved is not None and trainer.is_global_zero:
            self.on_resolved(resolved, list(trainer.optimizers))
        self._started = time.perf_counter()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        lrs = {}
        for name, group in zip(group_names(optimizer), optimizer.param_groups):
            if name in lrs:  # a group split only by weight decay shares its name and LR
                continue
            lrs[name] = float(group["lr"])
            self._emit(f"lr/{name}", lrs[name], step)
        self.lr_history.append((step, lrs))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            self._loss_count += 1
        step = trainer.global_step - 1  # the optimizer step this batch completed, if any
        if step > self._logged_step and self._loss_count:
            if trainer.is_global_zero:
                value = self._loss_sum / self._loss_count
                self.loss_history.append((step, value))
                self._emit("train_loss", value, step)
            self._loss_sum, self._loss_count, self._logged_step = 0.0, 0, step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items()
            if k.startswith("val") and isinstance(v, (torch.Tensor, float, int)) and torch.as_tensor(v).numel() == 1
        }
        self.val_history.append((trainer.global_step, trainer.current_epoch, metrics))
        for key, value in metrics.items():
            self._emit(key, value, trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush(force=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # Throughput of the training loop itself: the values sent below were only buffered
        # while it ran, and sending them is part of the run's end, not of its steps.
        if self._started is not None:
            self.seconds = time.perf_counter() - self._started
        self._flush()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._flush()


def step_recorder(flavor: ModuleType, **kwargs: Any) -> Any:
    """A :class:`_StepRecorder` that is a ``Callback`` of the given Lightning flavor."""
    cls = type("StepRecorder", (_StepRecorder, flavor.Callback), {"__module__": __name__})
    return cls(**kwargs)
