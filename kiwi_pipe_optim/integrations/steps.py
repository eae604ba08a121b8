"""How many optimizer steps a Lightning run takes, from its params, before any trainer exists.

``kiwi-optim preview`` and the ``schedule`` stage draw the curve a run will follow without
training; the count must match ``Trainer.estimated_stepping_batches``, which the stage's
``configure_optimizers`` uses, or the preview would show another curve than the run.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError, Problem


def stepping_batches(train_size: int, batch_size: int, max_epochs: int | None, accumulate: int = 1,
                     world_size: int = 1, max_steps: int = -1, limit_train_batches: int | float | None = None,
                     drop_last: bool = False) -> int:
    """Optimizer steps a Lightning run takes, counted as ``Trainer.estimated_stepping_batches`` does.

    Each process sees ``ceil(train_size / world_size)`` examples (the distributed sampler pads),
    an epoch is ``ceil`` of that over the batch size (``floor`` with ``drop_last``), optionally
    limited, and the optimizer steps once per ``accumulate`` batches, also after a last partial
    group of an epoch.

    Example:
        >>> stepping_batches(train_size=1438, batch_size=64, max_epochs=10, accumulate=2, world_size=2)
        60
    """
    per_device = math.ceil(train_size / world_size)
    batches = per_device // batch_size if drop_last else math.ceil(per_device / batch_size)
    if isinstance(limit_train_batches, float) and limit_train_batches <= 1.0:
        batches = int(batches * limit_train_batches)
    elif limit_train_batches is not None:
        batches = min(batches, int(limit_train_batches))
    if max_epochs is None or max_epochs < 0:
        if max_steps is None or max_steps < 0:
            raise ValueError("the run has neither max_epochs nor max_steps: its step count is unbounded")
        return int(max_steps)
    steps = math.ceil(batches / accumulate) * max(max_epochs, 1)
    return min(steps, max_steps) if max_steps is not None and max_steps >= 0 else steps


def run_steps_from_params(params: Any, train_size: int | None = None) -> tuple[int, str]:
    """The run's optimizer steps from the stage's params, counted as the trainer will; and how."""
    from .classes import import_class, instantiate

    data = None
    if train_size is None:
        data = instantiate(import_class(params.data, "data"), params.data, "data")
        train_size = getattr(data, "train_size", None)
        if train_size is None:
            data.setup("fit")
            train_size = len(data.train_dataloader().dataset)
    batch_size = params.data.init_args.get("batch_size", getattr(data, "batch_size", None))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(Problem("data.init_args.batch_size", f"{batch_size!r} is not known or not a batch size; "
                                  f"set it, or pass --training-steps"))
    trainer = params.trainer.trainer_kwargs()
    devices = trainer.get("devices", 1)
    world = (len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) and devices > 0
             else 1) * int(trainer.get("num_nodes", 1))
    max_steps = int(trainer.get("max_steps", -1))
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's own default
    steps = stepping_batches(train_size, batch_size, max_epochs, int(trainer.get("accumulate_grad_batches", 1)),
                             world, max_steps, trainer.get("limit_train_batches"),
                             bool(getattr(data, "drop_last", False)))
    how = (f"{train_size} examples, batch {batch_size}, {max_epochs} epochs, accumulate "
           f"{trainer.get('accumulate_grad_batches', 1)}, {world} process(es)")
    return steps, how
