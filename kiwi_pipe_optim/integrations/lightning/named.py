"""Where LightningCLI finds our logger and callback by ``class_path``, under each import name.

Their classes are built per Lightning package (a Trainer of one refuses the callbacks and loggers
of the other), and importing this layer loads neither package. Each class is named after the
module that serves it, so that jsonargparse writes into the saved ``config.yaml`` the same path
the user gave, and a checkpoint's callback state is found under the same key in every process.
"""

from __future__ import annotations

from types import ModuleType

CLASS_MODULES = {"lightning.pytorch": "kiwi_pipe_optim.integrations.lightning",
                 "pytorch_lightning": "kiwi_pipe_optim.integrations.pytorch_lightning"}


def named(cls: type, flavor: ModuleType, name: str) -> type:
    """``cls`` as importable from the module that serves it for ``flavor``."""
    cls.__module__ = CLASS_MODULES[flavor.__name__]
    cls.__name__ = cls.__qualname__ = name
    return cls
