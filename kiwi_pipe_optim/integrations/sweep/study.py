"""The Optuna side of a sweep: its sampler, the study made from its file, and the values a
trial draws, as ``dvc exp run -S`` takes them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ...errors import ConfigError, Problem
from ..study.storage import ATTR_DIGEST, ATTR_SPEC, make_pruner
from .spec import PrunerSpec, SweepSpec

STUDY_DIR = Path(".kiwi-pipe-optim") / "sweeps"


def default_storage(root: Path, name: str) -> str:
    return str((root / STUDY_DIR / f"{name}.journal").resolve())


def make_sampler(spec: SweepSpec, drawn: int = 0) -> Any:
    """The spec's sampler. ``drawn``: the trials the study has already; a resumed sampler seeded
    as the first would draw the first trials' values again."""
    import optuna

    seed = None if spec.seed is None else spec.seed + drawn

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: d.grid() for k, d in spec.space.items()}, seed=seed)
    if spec.sampler == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning on some options
            return optuna.samplers.CmaEsSampler(seed=seed, independent_sampler=optuna.samplers.TPESampler(
                seed=seed))
    # constant_liar: trials running at once do not all draw the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def pruner_of(spec: PrunerSpec) -> Any:
    return make_pruner(spec.name, spec.options)


def suggest(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    """The trial's values, key by key; a key whose condition does not hold is not drawn."""
    values: dict[str, Any] = {}
    for key, dim in spec.ordered():
        if dim.when and not all(values.get(k) in (w if isinstance(w, list) else [w]) for k, w in dim.when.items()):
            continue
        if dim.kind == "choice":
            values[key] = trial.suggest_categorical(key, dim.choice)
        elif dim.kind == "int":
            low, high = dim.int_
            values[key] = trial.suggest_int(key, low, high, step=int(dim.step or 1), log=dim.log)
        else:
            low, high = dim.bounds_of(dim.kind)
            values[key] = trial.suggest_float(key, low, high, step=dim.step, log=dim.kind == "log_uniform")
    return values


def load(storage: Any, name: str, spec: SweepSpec) -> Any:
    """The study ``name``, created from ``spec`` when it does not exist yet (the spec and its
    digest recorded in it); one begun with another space or objective is refused."""
    import optuna

    if name not in optuna.study.get_all_study_names(storage):
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                        sampler=make_sampler(spec), pruner=pruner_of(spec.pruner))
            study.set_user_attr(ATTR_SPEC, spec.model_dump(mode="json", by_alias=True))
            study.set_user_attr(ATTR_DIGEST, spec.digest())
            return study
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it first
    probe = optuna.load_study(study_name=name, storage=storage)
    if probe.user_attrs.get(ATTR_DIGEST) not in (None, spec.digest()):
        raise ConfigError(Problem("space", f"the study {name!r} was begun with another metric, direction or space; "
                                  f"give this sweep a new name, or put the old sweep file back to resume it"))
    drawn = len(probe.get_trials(deepcopy=False))
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(spec, drawn),
                             pruner=pruner_of(spec.pruner))


def cli_value(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it back to the same type (Hydra's override grammar)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text and all(c.isalnum() or c in "_-.:/" for c in text) and text not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
