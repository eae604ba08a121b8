"""Saving and restoring optimizer (and scheduler) state without unpickling arbitrary objects.

OpenKiwi's ``load`` unpickled whatever file it was given, which runs any code the file carries.
Here a state file is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers, and its layout is checked before anything is restored.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, Problem
from .files import atomic_open

FORMAT = "kiwi-pipe-optim/optimizer-state"
VERSION = 1


def save_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any = None,
               class_name: str | None = None) -> Path:
    """Write the optimizer (and scheduler) state where ``optimizer.load`` can resume from it.

    The file is written to a temporary name and renamed, so a crash never leaves half a file.

    Example:
        >>> import torch, tempfile, os
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> p = save_state(os.path.join(tempfile.mkdtemp(), "state.pt"), opt)
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "class_name": class_name,
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def safe_load(path: str | Path, field: str, what: str, fix: str) -> Any:
    """``torch.load`` that only rebuilds tensors and plain containers, with one-line refusals.

    Raises:
        ConfigError: naming ``field``: a missing file, one that carries Python objects (which
            could run code when loaded), or one that is no torch file at all; ``fix`` says what to do.
    """
    shown = f"'{path}'"
    if Path(path).is_dir():
        raise ConfigError(Problem(field, f"{shown} is a directory, not a file; {fix}"))
    if not Path(path).is_file():
        raise ConfigError(Problem(field, f"{shown} does not exist; {fix}"))
    _refuse_bomb(Path(path), field, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(Problem(
            field, f"{shown} was refused: it holds Python objects that could run code when loaded "
            f"({first[:120]}); {fix}",
        )) from None
    except Exception as e:  # not a torch file at all: truncated, text, another format
        raise ConfigError(Problem(field, f"{shown} is not {what} ({type(e).__name__}); {fix}")) from None


def _refuse_bomb(path: Path, field: str, fix: str) -> None:
    """torch stores tensors uncompressed in its zip files: one that would unpack to many times its
    size is a decompression bomb, refused before anything is unpacked."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # the legacy format, or no torch file: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return
    size = path.stat().st_size
    if unpacked > 4 * size + (64 << 20):
        raise ConfigError(Problem(field, f"'{path}' would unpack to {unpacked:,} bytes from {size:,}: not a file torch "
                                         f"writes (a decompression bomb?); {fix}"))


def read_state(path: str | Path, field: str = "optimizer.load") -> dict[str, Any]:
    """Read a state file safely; return ``{"optimizer": ..., "scheduler": ..., "class_name": ...}``.

    Also accepted, without scheduler state: a plain ``torch.save(optimizer.state_dict())`` file,
    and OpenKiwi's ``{'name': <optimizer name>, 'state_dict': ...}``, whose name is then checked.

    Raises:
        ConfigError: missing or unreadable file, a file that would need arbitrary code to load,
            or one that holds no optimizer state.
    """
    shown = f"'{path}'"
    data = safe_load(path, field, "a saved optimizer state", "give a file written by kiwi_pipe_optim.save_state")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        state = data
    elif isinstance(data, dict) and {"state", "param_groups"} <= set(data):
        state = {"optimizer": data, "scheduler": None, "class_name": None}
    elif isinstance(data, dict) and set(data) == {"name", "state_dict"} and isinstance(data["name"], str):
        state = {"optimizer": data["state_dict"], "scheduler": None, "class_name": data["name"]}  # OpenKiwi's
    else:
        raise ConfigError(Problem(
            field, f"{shown} holds no optimizer state (expected a file written by save_state); "
            f"give a file written by kiwi_pipe_optim.save_state",
        ))
    optimizer_state = state.get("optimizer")
    if not isinstance(optimizer_state, dict) or not {"state", "param_groups"} <= set(optimizer_state):
        raise ConfigError(Problem(field, f"{shown} has a damaged optimizer state; save it again with save_state"))
    return state


def load_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any = None,
               class_name: str | None = None, field: str = "optimizer.load") -> None:
    """Restore what :func:`save_state` wrote into a freshly built optimizer (and scheduler).

    Raises:
        ConfigError: see :func:`read_state`; also when the state belongs to another optimizer
            or to a model with other parameters.
    """
    state = read_state(path, field)
    saved = state.get("class_name")
    if saved and class_name and saved != class_name:
        raise ConfigError(Problem(
            field, f"'{path}' holds {saved} state, but optimizer.class_name is {class_name}; "
            f"use the same optimizer or start without load",
        ))
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(Problem(
            field, f"'{path}' does not fit this model's parameters ({str(e).splitlines()[0][:160]}); "
            f"resume with the model it was saved from, or start without load",
        )) from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
