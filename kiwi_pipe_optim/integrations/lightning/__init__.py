"""Lightning glue usable from any ``Trainer``, under either import name (``lightning.pytorch``,
``pytorch_lightning``): the optimizer from the params for a module, the LR and loss observer,
optimizer modes, and the MLflow logger. Imports nothing of the DVC stage.

Example:
    >>> from kiwi_pipe_optim.integrations.lightning import KiwiOptimizers, lr_monitor  # doctest: +SKIP
"""

from .flavor import FLAVORS, flavor_of, run_step_count
from .modes import ModalOptimizer, OptimizerModes
from .module import (KiwiOptimizers, attach_config, clips_under_mixed_precision, configure_optimizers,
                     resolved_schedule)
from .recorder import OWN_TRAIN_LOSS, TRAIN_LOSS, StepRecorder, lr_monitor, module_logged, step_recorder

__all__ = ["FLAVORS", "KiwiOptimizers", "ModalOptimizer", "OWN_TRAIN_LOSS", "OptimizerModes", "StepRecorder",
           "TRAIN_LOSS", "attach_config", "clips_under_mixed_precision", "configure_optimizers", "flavor_of",
           "lr_monitor", "module_logged", "resolved_schedule", "run_step_count", "step_recorder"]
