"""Checkpoints a crashed stage resumes from, and the checks that make resuming safe.

The checkpoint lives outside the stage's DVC outputs (DVC deletes those before it runs a stage
again) and is removed once training has finished. Besides Lightning's own state (model,
optimizers, schedulers, loops, the train loader's position) it carries the MLflow run to go on
logging into, the params the run was started with, and the random number generators' state, so
the resumed steps repeat exactly what an uninterrupted run would have done.

Resuming refuses two things: a checkpoint written with other run-defining params, and one whose
restored learning rates differ from what the optimizer section gives at the restored step (an
LR that silently jumps after a resume is the classic bug this guards against).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ...config import OptimizerConfig
from ...errors import ConfigError, Problem
from ...files import write_atomically
from ...param_groups import group_names
from ...schedules import SCHEDULE_SPECS, evaluate
from ...state import safe_load
from ..lightning import OptimizerModes, resolved_schedule
from ..lightning.contracts import ConsumptionAware, JournalingLogger, StatefulLoader
from ..tracking.store import flatten

FORMAT = "kiwi-pipe-optim/resume"
CHECKPOINT_FILE = Path(".kiwi-pipe-optim") / "checkpoints" / "train.ckpt"
# What may change between a crash and its resume: where and how the run is logged and saved.
NOT_RUN_DEFINING = ("mlflow", "checkpoint", "plots", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                    "trainer.log_every_n_steps")
FIELD = "checkpoint"


def run_defining(raw: Mapping[str, Any]) -> dict[str, str]:
    """The params that decide what a run computes, flat with DVC's dotted names (as MLflow has them)."""
    return {
        key: value for key, value in sorted(flatten(raw).items())
        if not any(key == skip or key.startswith(skip + ".") for skip in NOT_RUN_DEFINING)
    }


@dataclass(frozen=True)
class ResumePoint:
    """What the stage needs to know about a checkpoint before it starts MLflow or Lightning."""

    path: Path
    step: int
    run_id: str | None
    params: dict[str, str]
    loader_states: tuple[Any, ...] = ()
    journal_offset: int = 0


def _fresh(path: Path) -> str:
    return f"delete '{path}' (or set checkpoint.resume: false) to start afresh"


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def seal(tmp: Path, path: Path) -> None:
    """Move a checkpoint written at ``tmp`` to ``path``, its checksum written first.

    torch does not check its records on load: bytes flipped inside a checkpoint whose zip
    structure is intact would resume silently with other weights. The checksum file lists the
    new checkpoint's digest and the one it replaces, so that a crash between the two renames
    leaves a pair that still verifies.
    """
    digests = digest_path(path)
    try:
        previous = digests.read_text().split()[:1]
    except OSError:
        previous = []
    write_atomically(digests, "\n".join([file_digest(tmp), *previous]) + "\n")
    os.replace(tmp, path)


def discard(path: Path) -> None:
    """The checkpoint and its checksum: a finished run's next run starts afresh."""
    for leftover in (path, digest_path(path)):
        leftover.unlink(missing_ok=True)


def verify(path: Path) -> None:
    """Raises:
        ConfigError: the checkpoint's checksum is missing or does not match its bytes.
    """
    if not path.is_file():
        return  # safe_load says what it is instead
    try:
        listed = digest_path(path).read_text().split()
    except FileNotFoundError:
        raise ConfigError(Problem(FIELD, f"'{path}' has no checksum beside it ('{digest_path(path).name}'), so "
                                  f"it cannot be verified; {_fresh(path)}")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(Problem(FIELD, f"the checksum of '{path}' cannot be read ({e}); {_fresh(path)}")) from None
    if file_digest(path) not in listed:
        raise ConfigError(Problem(FIELD, f"'{path}' is damaged: its bytes do not match the checksum written with "
                                  f"it; {_fresh(path)}"))


def read_resume_point(path: str | Path) -> ResumePoint:
    """Read a stage checkpoint, verified against its checksum, without unpickling any code.

    Raises:
        ConfigError: the file is damaged, carries Python objects (a tampered checkpoint), is no
            torch file, or was not written by the stage.
    """
    path = Path(path)
    verify(path)
    data = safe_load(path, FIELD, "a checkpoint of this stage", _fresh(path))
    states = data.get("callbacks") if isinstance(data, dict) else None
    ours = [s for s in (states or {}).values() if isinstance(s, dict) and s.get("format") == FORMAT]
    if not ours:
        raise ConfigError(Problem(FIELD, f"'{path}' was not written by this stage; {_fresh(path)}"))
    state = ours[0]
    fit_loop = (data.get("loops") or {}).get("fit_loop") or {}
    loaders = (fit_loop.get("state_dict") or {}).get("combined_loader") or []
    params = state["params"]
    params = json.loads(params) if isinstance(params, str) else params  # a dict in earlier checkpoints
    return ResumePoint(path, int(state["step"]), state.get("run_id"), dict(params), tuple(loaders),
                       int(state.get("journal_offset", 0)))


def restore_loader(loader: Any, point: ResumePoint | None) -> None:
    """Put a resumable train loader back where the checkpoint left it, before ``fit`` starts.

    Lightning restores loader state only when it builds the loaders after restoring the loops;
    a ``configure_optimizers`` that asks for ``trainer.estimated_stepping_batches`` (ours does)
    makes it build them earlier, and the state would be dropped.
    """
    if point is not None and len(point.loader_states) == 1 and isinstance(loader, StatefulLoader):
        loader.load_state_dict(point.loader_states[0])


def check_same_params(point: ResumePoint, raw: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose schedule-defining params changed since its checkpoint.

    Raises:
        ConfigError: listing what changed (``key: old -> new``) and how to start afresh.
    """
    now = run_defining(raw)
    changed = [f"{key}: {point.params.get(key, '(unset)')} -> {now.get(key, '(unset)')}"
               for key in sorted(set(now) | set(point.params)) if now.get(key) != point.params.get(key)]
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigError(Problem(
            FIELD, f"'{point.path}' holds a run stopped at step {point.step} with other params ({shown}); "
            f"resuming would not continue the same run: restore those params to resume, or {_fresh(point.path)}"))


def _rng_state() -> dict[str, Any]:
    import numpy

    name, keys, pos, has_gauss, gauss = numpy.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "python": [version, torch.tensor(internal, dtype=torch.int64), python_gauss],
            "numpy": [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    numpy.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def check_restored_lrs(optimizer: torch.optim.Optimizer, config: OptimizerConfig, resolved: Any, step: int,
                       path: Path, rel_tol: float = 1e-6) -> None:
    """Compare the LRs a restored optimizer holds with what ``config`` gives at ``step``.

    Raises:
        ConfigError: the first group whose LR differs, with both values.
    """
    if resolved is None or not SCHEDULE_SPECS[resolved.name].previewable:  # the LR follows a metric, not the step
        return
    factor = float(evaluate(resolved, torch.tensor([float(step)], dtype=torch.float64))[0])
    base = config.group_learning_rates()
    for name, group in zip(group_names(optimizer), optimizer.param_groups):
        if name not in base:
            continue
        expected, restored = base[name] * factor, float(group["lr"])
        if not math.isclose(expected, restored, rel_tol=rel_tol, abs_tol=1e-12):
            raise ConfigError(Problem(
                FIELD, f"'{path}' restored lr/{name} = {restored:.6g} at step {step}, but the optimizer section "
                f"gives {expected:.6g} there ({resolved.name} schedule); the schedule changed since the checkpoint: "
                f"{_fresh(path)}"))


PACKED = "kiwi_packed"


def pack_optimizer_states(states: list[Any]) -> list[Any]:
    """Optimizer states with their tensors packed into one flat tensor per dtype and device.

    ``torch.save`` pickles some twenty objects per tensor, and an optimizer holds two or three
    tensors per parameter: for the 8-group benchmark model that was half of a 2 ms save, at
    every save. Packed, it pickles one tensor per dtype, and where each state tensor was as one
    integer tensor (param, key, flat tensor, offset, shape). Only plain dense tensors are packed
    (not a tensor subclass such as a sharded one), only states keyed by parameter index (as
    ``Optimizer.state_dict`` keys them); anything else stays as it was.
    :func:`unpack_optimizer_states` undoes it, bit for bit.
    """
    packed = []
    for state_dict in states:
        state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if not isinstance(state, dict) or PACKED in state_dict or not all(type(p) is int for p in state):
            packed.append(state_dict)
            continue
        kept: dict[int, dict[Any, Any]] = {}
        flats: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        sizes: dict[tuple[torch.dtype, torch.device], int] = {}
        slots: dict[tuple[torch.dtype, torch.device], int] = {}  # which flat tensor, in the order of `flats`
        names: dict[Any, int] = {}
        rows: list[list[int]] = []
        for param, entries in state.items():
            rest = {}
            for key, value in entries.items():
                if type(value) is not torch.Tensor or value.layout != torch.strided:
                    rest[key] = value
                    continue
                where = (value.dtype, value.device)
                offset = sizes.setdefault(where, 0)
                slot = slots.setdefault(where, len(slots))
                rows.append([param, names.setdefault(key, len(names)), slot, offset, value.dim(), *value.shape])
                flats.setdefault(where, []).append(value.detach().reshape(-1))
                sizes[where] = offset + value.numel()
            if rest or not entries:
                kept[param] = rest
        width = max((len(row) for row in rows), default=5)
        layout = torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.int64).reshape(-1, width)
        packed.append({**state_dict, "state": kept, PACKED: {
            "tensors": [torch.cat(parts) for parts in flats.values()], "layout": layout, "keys": list(names),
            "params": torch.tensor(list(state), dtype=torch.int64)}})
    return packed


def unpack_optimizer_states(states: list[Any]) -> list[Any]:
    """What :func:`pack_optimizer_states` packed, as ``Optimizer.load_state_dict`` takes it;
    states that were not packed are returned as they are."""
    unpacked = []
    for state_dict in states:
        if not isinstance(state_dict, dict) or PACKED not in state_dict:
            unpacked.append(state_dict)
            continue
        packing = state_dict[PACKED]
        state: dict[int, dict[Any, Any]] = {param: {} for param in packing["params"].tolist()}
        for param, entries in state_dict["state"].items():
            state[param].update(entries)
        keys, tensors = packing["keys"], packing["tensors"]
        for param, key, index, offset, ndim, *dims in packing["layout"].tolist():
            shape = dims[:ndim]
            state[param][keys[key]] = tensors[index][offset:offset + math.prod(shape)].view(shape).clone()
        unpacked.append({k: v for k, v in state_dict.items() if k != PACKED} | {"state": state})
    return unpacked


class Checkpointer:
    """Saves every ``every_n_steps`` optimizer steps, right after the step, and restores; its
    hooks are called by the stage's callback (:mod:`.callback`), under whose key its state is.

    A step that ends an epoch is saved at the epoch's end instead, after validation, so a resume
    never repeats or skips an epoch's validation. Logged values are not part of the checkpoint:
    the loggers' journal is (its length, so a save costs the same at any step); what was logged
    for the saved step just after the save is journaled at the next batch's start.
    """

    def __init__(self, path: Path, every_n_steps: int, params: dict[str, str], config: OptimizerConfig,
                 run_id: str | None = None, modes: OptimizerModes | None = None):
        self.modes = modes  # a schedule-free optimizer's weights are saved in eval mode, its average
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.params = params
        self._params_text = json.dumps(params)
        self.config = config
        self.run_id = run_id
        self.resumed_step: int | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._saved_step = -1
        self._due = False
        self._journal_offset = 0
        self._persist_due = False
        self._dir_made = False
        self._saving = False

    def state_dict(self) -> dict[str, Any]:
        # the params as one string: pickled at every save, a dict of them is ~100 objects
        return {"format": FORMAT, "run_id": self.run_id, "params": self._params_text, "step": self._saved_step,
                "rng": _rng_state(), "journal_offset": self._journal_offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_step = self._saved_step = int(state["step"])
        self._rng_to_restore = state.get("rng")

    @property
    def batch_start_due(self) -> bool:
        """Whether :meth:`on_train_batch_start` has anything to do at the next batch."""
        return self._rng_to_restore is not None or self._persist_due

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Our own saves only: a checkpoint the user's ModelCheckpoint writes stays as Lightning writes it.
        if self._saving and "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = pack_optimizer_states(checkpoint["optimizer_states"])

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Lightning restores callbacks before optimizers: these are unpacked by then.
        if "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = unpack_optimizer_states(checkpoint["optimizer_states"])

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning imports omegaconf (when installed) in its first save; done here, before the
        # loop, the first checkpoint does not stall a training step for ~50 ms.
        if self.every_n_steps > 0:
            with contextlib.suppress(ImportError):
                importlib.import_module("omegaconf")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.resumed_step is None:
            return
        for optimizer in trainer.optimizers:
            check_restored_lrs(optimizer, self.config, resolved_schedule(optimizer), trainer.global_step, self.path)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Restored here, not at load time: what Lightning does between the two (a sanity check,
        # building the loaders) would otherwise draw from the generators first.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._persist_due:
            self._persist_due = False
            _persist(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._saved_step:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            self._due = True
            return
        self._save(trainer, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._due:
            self._due = False
            self._save(trainer, math.inf)

    @property
    def saved_step(self) -> int:
        return self._saved_step

    def save(self, trainer: Any, consumed: float) -> None:
        """Save now (a preempted run's last step), as a periodic save would."""
        self._save(trainer, consumed)

    def _save(self, trainer: Any, consumed: float) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ConsumptionAware):
            loader.mark_consumed(len(loader) if consumed == math.inf else int(consumed))
        self._saved_step = trainer.global_step
        self._journal_offset = _persist(trainer)
        self._persist_due = True
        if self.modes is not None:
            self.modes.to_eval()
        tmp = self.path.with_name(self.path.name + ".tmp")
        if trainer.is_global_zero and not self._dir_made:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        self._saving = True
        try:
            if _takes_weights_only(type(trainer)):
                trainer.save_checkpoint(tmp, weights_only=False)  # the whole training state, not only the weights
            else:
                trainer.save_checkpoint(tmp)
        finally:
            self._saving = False
        if trainer.is_global_zero:
            seal(tmp, self.path)  # a crash while saving leaves the previous checkpoint whole


@functools.cache
def _takes_weights_only(trainer_class: type) -> bool:
    return "weights_only" in inspect.signature(trainer_class.save_checkpoint).parameters


def _persist(trainer: Any) -> int:
    """Journal what our logger holds; the journal's length (0 without our logger)."""
    sizes = [logger.persist() for logger in trainer.loggers if isinstance(logger, JournalingLogger)]
    return sizes[0] if sizes else 0
