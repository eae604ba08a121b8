"""The user's classes named in the params (``model``, ``data``): imported, checked, built.

A wrong import path or argument is a params mistake like any other: it is reported with the
dotted key before an MLflow run or a trainer exists.
"""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import ConfigError, Problem, did_you_mean
from ...imports import import_module, split_path
from .params import ImportedParams


def import_class(spec: ImportedParams, section: str) -> type:
    module_name, class_name = split_path(spec.class_path)
    try:
        module = import_module(module_name)  # the user's own modules, by import path from the repo root
    except ImportError as e:
        raise ConfigError(Problem(f"{section}.class_path", f"cannot import '{module_name}' ({e}); "
                                  f"give 'package.module:ClassName' importable from the repository root")) from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        names = [n for n in dir(module) if isinstance(getattr(module, n), type)]
        raise ConfigError(Problem(f"{section}.class_path", f"'{module_name}' has no class '{class_name}'"
                                  f"{did_you_mean(class_name, names)}")) from None


def check_init_args(cls: type, spec: ImportedParams, section: str) -> None:
    """Unknown keyword arguments fail here, before a run is started, not in the constructor."""
    accepted = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = [k for k in spec.init_args if k not in accepted]
    if unknown:
        raise ConfigError([
            Problem(f"{section}.init_args.{k}", f"not an argument of {cls.__name__}"
                    f"{did_you_mean(k, accepted)}; it accepts: {', '.join(accepted)}")
            for k in unknown
        ])


def instantiate(cls: type, spec: ImportedParams, section: str) -> Any:
    try:
        return cls(**spec.init_args)
    except Exception as e:  # any refusal of the user's constructor is a params problem: one line
        message = str(e).splitlines()[0] if str(e).strip() else ""
        if not isinstance(e, (TypeError, ValueError)):
            message = f"{type(e).__name__}: {message}".rstrip(": ")
        if message.startswith(f"{section}."):
            raise ConfigError(Problem("", message)) from None
        raise ConfigError(Problem(f"{section}.init_args", f"{cls.__name__} refused them: {message}")) from None


def model_on_meta(cls: type, spec: ImportedParams) -> Any:
    """The model built on the meta device: its parameter names and shapes without their memory,
    so previews and checks cost nothing whatever the model's size. A constructor that computes
    with its tensors is built for real."""
    import torch

    try:
        with torch.device("meta"):
            return cls(**spec.init_args)
    except Exception:
        return instantiate(cls, spec, "model")
