"""Lightning glue usable from any ``Trainer``, under either import name (``lightning.pytorch``,
``pytorch_lightning``): the optimizer from the params for a module, the LR and loss observer,
optimizer modes, and the MLflow logger. Imports nothing of the DVC stage.

``KiwiMLflowLogger`` and ``KiwiLRMonitor`` here are those of ``lightning.pytorch``, the class paths
LightningCLI takes (``--trainer.logger=kiwi_pipe_optim.integrations.lightning.KiwiMLflowLogger``);
``pytorch_lightning``'s are in :mod:`kiwi_pipe_optim.integrations.pytorch_lightning`. They are
built when first asked for: importing this package loads neither Lightning package.

Example:
    >>> from kiwi_pipe_optim.integrations.lightning import KiwiOptimizers, lr_monitor  # doctest: +SKIP
"""

import importlib
from typing import Any

from ...extras import require

require("lightning", "kiwi_pipe_optim.integrations.lightning")

from .flavor import FLAVORS, flavor_of, run_step_count
from .modes import ModalOptimizer, OptimizerModes
from .module import (KiwiOptimizers, attach_config, clips_under_mixed_precision, configure_optimizers,
                     resolved_schedule)
from .logger import mlflow_logger, mlflow_logger_class
from .recorder import (OWN_TRAIN_LOSS, TRAIN_LOSS, StepRecorder, lr_monitor, module_logged, monitor_class,
                       step_recorder)

__all__ = ["FLAVORS", "KiwiLRMonitor", "KiwiMLflowLogger", "KiwiOptimizers", "ModalOptimizer", "OWN_TRAIN_LOSS",
           "OptimizerModes", "StepRecorder", "TRAIN_LOSS", "attach_config", "cli_classes",
           "clips_under_mixed_precision", "configure_optimizers", "flavor_of", "lr_monitor", "mlflow_logger",
           "mlflow_logger_class", "module_logged", "monitor_class", "resolved_schedule", "run_step_count",
           "step_recorder"]


def cli_classes(flavor: str = "lightning.pytorch") -> tuple[type, type]:
    """``KiwiMLflowLogger`` and ``KiwiLRMonitor`` of one Lightning import name."""
    module = importlib.import_module(flavor)
    return mlflow_logger_class(module), monitor_class(module)


def __getattr__(name: str) -> Any:
    if name in ("KiwiMLflowLogger", "KiwiLRMonitor"):
        return cli_classes()[name == "KiwiLRMonitor"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
