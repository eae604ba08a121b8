"""How many optimizer steps a Lightning run takes, from its params, before any trainer exists.

``kiwi-optim preview`` and the ``schedule`` stage draw the curve a run will follow without
training; the count must match ``Trainer.estimated_stepping_batches``, which the stage's
``configure_optimizers`` uses, or the preview would show another curve than the run.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import ConfigError, Problem


def per_device_batches(train_size: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches one process trains on per epoch: the distributed sampler pads the data to
    ``ceil(train_size / world_size)`` examples each, then batches them."""
    per_device = math.ceil(train_size / world_size)
    return per_device // batch_size if drop_last else math.ceil(per_device / batch_size)


def steps_from_batches(batches: int, max_epochs: int | None, accumulate: int = 1, max_steps: int = -1,
                       limit_train_batches: int | float | None = None) -> int:
    """Optimizer steps of a run whose epochs have ``batches`` batches per process."""
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
    return steps_from_batches(per_device_batches(train_size, batch_size, world_size, drop_last), max_epochs,
                              accumulate, max_steps, limit_train_batches)


def epoch_batches(params: Any, world: int, train_size: int | None = None, data: Any = None) -> tuple[int | None, str]:
    """Batches one process trains on per epoch, and what they were counted from; ``None`` when
    the train loader has no length (an iterable data set). ``data``: the data object, when built.

    The cheap way first: ``batch_size`` in the data's ``init_args`` and the data object's
    ``train_size``. Otherwise the loader the data object builds is asked, as Lightning does.
    """
    from .classes import import_class, instantiate

    batch_size = params.data.init_args.get("batch_size")
    if train_size is None or not isinstance(batch_size, int):
        if data is None:
            data = instantiate(import_class(params.data, "data"), params.data, "data")
        train_size = train_size or getattr(data, "train_size", None)
        batch_size = batch_size if isinstance(batch_size, int) else getattr(data, "batch_size", None)
        drop_last = bool(getattr(data, "drop_last", False))
        if not isinstance(train_size, int) or not isinstance(batch_size, int):
            if callable(getattr(data, "setup", None)):
                data.setup("fit")
            loader = data.train_dataloader()
            dataset = getattr(loader, "dataset", None)
            if isinstance(getattr(loader, "batch_size", None), int) and _sized(dataset):
                train_size, batch_size, drop_last = len(dataset), loader.batch_size, bool(loader.drop_last)
            elif _sized(loader):
                return math.ceil(len(loader) / world), f"{len(loader)} batches an epoch"
            else:
                return None, "the train loader has no length (an iterable data set)"
    else:
        drop_last = False
    if batch_size < 1:
        raise ConfigError(Problem("data.init_args.batch_size", f"{batch_size!r} is not a batch size; use an "
                                  f"integer >= 1"))
    return per_device_batches(train_size, batch_size, world, drop_last), f"{train_size} examples, batch {batch_size}"


def _sized(obj: Any) -> bool:
    from torch.utils.data import IterableDataset

    if obj is None or (isinstance(obj, IterableDataset) and not hasattr(type(obj), "__len__")):
        return False
    try:
        len(obj)
    except TypeError:
        return False
    return True


def run_steps_from_params(params: Any, train_size: int | None = None, data: Any = None) -> tuple[int | None, str]:
    """The run's optimizer steps from the stage's params, counted as the trainer will, and how;
    ``None`` (with the reason) when only training will tell."""
    trainer = params.trainer.trainer_kwargs()
    devices = trainer.get("devices", 1)
    world = (len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) and devices > 0
             else 1) * int(trainer.get("num_nodes", 1))
    max_steps = int(trainer.get("max_steps", -1))
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's own default
    if (max_epochs is None or max_epochs < 0) and max_steps >= 0:
        return max_steps, "trainer.max_steps"
    batches, counted = epoch_batches(params, world, train_size, data)
    if batches is None:
        if max_steps >= 0:
            return max_steps, f"trainer.max_steps; {counted}"
        return None, f"{counted} and no trainer.max_steps"
    accumulate = int(trainer.get("accumulate_grad_batches", 1))
    steps = steps_from_batches(batches, max_epochs, accumulate, max_steps, trainer.get("limit_train_batches"))
    return steps, f"{counted}, {max_epochs} epochs, accumulate {accumulate}, {world} process(es)"
