"""The checks of what Lightning and the files must accept, for :mod:`.prepare`: the Trainer's
arguments (and the Trainer itself), the kernels under mixed precision, the files the params name.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import ConfigError, Problem, did_you_mean
from ...state import read_state
from .. import lightning as kl
from .params import StageParams


def check_files(params: StageParams) -> None:
    """The files the params name, read as the run will read them."""
    if params.optimizer.load is not None:
        read_state(params.optimizer.load)  # refuses a file that would run code


MAX_RUN_STEPS = 10**12  # a millennium at 30 steps a second: a typo in an exponent, not a run


def check_step_count(params: StageParams, steps: int | None) -> None:
    """A run that would train nothing, or that no machine finishes (Lightning would start it, and
    an MLflow run with it), is a params mistake found before either exists."""
    if steps is None:
        return
    kwargs = params.trainer.trainer_kwargs()
    if steps <= 0:
        limit = kwargs.get("limit_train_batches")
        field, value = ("limit_train_batches", limit) if limit is not None else ("max_steps", kwargs.get("max_steps"))
        raise ConfigError(Problem(f"trainer.{field}", f"{value!r} gives 0 optimizer steps: the run would train "
                                  f"nothing; train at least one batch"))
    if steps > MAX_RUN_STEPS:
        field = "max_steps" if kwargs.get("max_steps") not in (None, -1) and kwargs.get("max_steps") == steps \
            else "max_epochs"
        raise ConfigError(Problem(f"trainer.{field}", f"{kwargs.get(field)!r} gives {steps:.3g} optimizer steps, "
                                  f"which no run finishes; at most {MAX_RUN_STEPS:.0e}"))


def check_trainer_keys(flavor: Any, params: StageParams) -> None:
    """Every ``trainer:`` key an argument of this flavor's Trainer."""
    accepted = inspect.signature(flavor.Trainer.__init__).parameters
    unknown = [k for k in params.trainer.trainer_kwargs() if k not in accepted]
    if unknown:
        raise ConfigError([
            Problem(f"trainer.{k}", f"not an argument of {flavor.__name__}.Trainer{did_you_mean(k, accepted)}")
            for k in unknown
        ])


def trainer_kwargs(params: StageParams) -> dict[str, Any]:
    """The Trainer's arguments from ``trainer:``, with the stage's own settings; its logger and
    callback join the Trainer once an MLflow run exists."""
    return {"deterministic": True, **params.trainer.trainer_kwargs(), "logger": False, "enable_checkpointing": False,
            "callbacks": []}


def check_kernels(params: StageParams) -> None:
    """``implementation: fused`` with clipping under mixed precision, refused before DVC deletes
    anything (``auto`` picks foreach there instead: :func:`.lightning.configure_optimizers`)."""
    if params.optimizer.implementation == "fused" and kl.clips_under_mixed_precision(params.trainer.trainer_kwargs()):
        raise ConfigError(Problem("optimizer.implementation", "fused with trainer.gradient_clip_val under "
                                  f"trainer.precision {params.trainer.trainer_kwargs()['precision']!s}: Lightning "
                                  "does not clip the gradients of a fused optimizer under mixed precision; use "
                                  "implementation: auto (foreach there) or foreach, or remove gradient_clip_val"))


def check_trainer(flavor: Any, params: StageParams) -> Any:
    """The run's Trainer, built before any MLflow run exists, so that its refusals
    (``devices: -1``, ``precision: bogus``) stop the stage with the key named.

    Raises:
        ConfigError: ``trainer.<key>: <value> is refused by Lightning: <its message>``.
    """
    kwargs = trainer_kwargs(params)
    given = params.trainer.trainer_kwargs()
    quiet = logging.getLogger(flavor.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its banner (GPU available, ...) once per probe would be noise
    try:
        trainer = _built(flavor, kwargs)
        if not isinstance(trainer, str):
            return trainer
        base = {k: v for k, v in kwargs.items() if k not in given}
        refused = {key: _refusal(flavor, {**base, key: given[key]}) for key in given}
    finally:
        quiet.setLevel(level)
    problems = [Problem(f"trainer.{key}", f"{given[key]!r} is refused by Lightning: {message}")
                for key, message in refused.items() if message is not None]
    raise ConfigError(problems or [Problem("trainer", f"Lightning refused these arguments together: "
                                                      f"{_refusal(flavor, kwargs)}")])


def _built(flavor: Any, kwargs: dict[str, Any]) -> Any:
    """The Trainer, or Lightning's refusal of these arguments (its first line)."""
    try:
        return flavor.Trainer(**kwargs)
    except Exception as e:  # MisconfigurationException, ValueError, TypeError, ...
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _refusal(flavor: Any, kwargs: dict[str, Any]) -> str | None:
    refused = _built(flavor, kwargs)
    return refused if isinstance(refused, str) else None


# What a run writes, relative to its output directory: found unwritable before the MLflow run
# starts, not after the whole run has trained.
WRITTEN_DIRS = (".kiwi-pipe-optim", ".kiwi-pipe-optim/checkpoints", ".kiwi-pipe-optim/journal",
                ".kiwi-pipe-optim/spool", "plots", "plots/lr")
WRITTEN_FILES = ("metrics.json", "plots/loss.csv")
STATE_SLACK_BYTES = 1 << 20  # the journal, the run's small files


def check_outputs(out_dir: Path, model: Any, artifact_root: Path | None) -> None:
    """Every directory the run writes can be written, no file stands where it writes a
    directory (or the reverse), and the disk holds two checkpoints (the new one is written
    beside the last). One line each.

    Raises:
        ConfigError: every path at fault, with what to do.
    """
    problems, refused = [], []
    dirs = [out_dir / d for d in WRITTEN_DIRS] + ([artifact_root] if artifact_root is not None else [])
    for path in dirs:
        problem = _writable_dir(path)
        if problem and problem not in refused:  # one line a cause: a file at 'plots' refuses 'plots/lr' too
            problems.append(Problem("", problem))
            refused.append(problem)
    for path in (out_dir / f for f in WRITTEN_FILES):
        if path.is_dir():
            problems.append(Problem("", f"'{path}' is a directory, where the run writes a file; move or delete it"))
    if not problems:
        state = out_dir / WRITTEN_DIRS[0]
        need = 2 * checkpoint_bytes(model) + STATE_SLACK_BYTES
        free = shutil.disk_usage(state if state.exists() else out_dir).free
        if free < need:
            problems.append(Problem("", f"only {free / 2**20:.1f} MiB free on the disk of '{state}', where the "
                                    f"run keeps its checkpoints and journal; it needs at least {need / 2**20:.1f} "
                                    f"MiB: free some space"))
    if problems:
        raise WorkspaceError(problems)


def checkpoint_bytes(model: Any) -> int:
    """About what one checkpoint takes: the weights and two optimizer moments per weight."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def _writable_dir(path: Path) -> str | None:
    """Whether the run can make and write ``path``, tried in it or in its nearest existing
    parent: nothing is created that a refused run would leave behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is a file, where the run writes a directory; move or delete it"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in '{existing}' ({e.strerror or e}); make it writable"
    return None


class WorkspaceError(ConfigError):
    """What is wrong in the workspace (its paths, a run already in it), not in a field of the
    params file: shown without the file's name."""
