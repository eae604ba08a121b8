"""Which of Lightning's two import names a user's module is written against.

``lightning.pytorch`` and ``pytorch_lightning`` ship the same classes under two names, and a
Trainer of one refuses modules and callbacks of the other. Everything in this layer therefore
looks at which one the user's module derives from, and builds trainers, callbacks and loggers
from that one.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

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
