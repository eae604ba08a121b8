"""Classes the params name by import path: a team's own optimizer, the stage's model and data.

A path is ``package.module:ClassName`` (the colon says where the module ends) or, as Lightning's
``class_path``, ``package.module.ClassName`` (read at the last dot). Paths are imported with the
repository root on ``sys.path``: the stage and ``kiwi-optim`` run there, and the user's modules
are rarely installed. Failures are Python's own exceptions; each caller words them for its key.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def split_path(path: str) -> tuple[str, str]:
    """The module and the name in it."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return module, name


def import_module(module: str) -> ModuleType:
    """The module, importable from the repository root (the current directory)."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module(module)


def import_object(path: str) -> Any:
    """What ``path`` names. Raises what importing raises, or AttributeError for a missing name."""
    module, name = split_path(path)
    return getattr(import_module(module), name)
