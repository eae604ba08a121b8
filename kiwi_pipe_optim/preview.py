"""The whole LR curve of a run, per param group, from the config alone: no model, no optimizer.

The schedule functions are evaluated on the whole step array at once, so a million-step curve
takes milliseconds. The run's step count comes from the caller (the stage's params know how
Lightning will count it: :mod:`kiwi_pipe_optim.integrations.steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .config import OptimizerConfig
from .files import write_atomically
from .resolved import ResolvedSchedule
from .schedules import evaluate


@dataclass(frozen=True)
class Curves:
    """The LR of every group at every step, plus where warm-up ends and the peak is."""

    resolved: ResolvedSchedule
    steps: int
    lrs: dict[str, torch.Tensor]
    # The LR follows a metric during training (reduce-on-plateau): only its start is known.
    metric_driven: bool = False

    @property
    def peak_step(self) -> int:
        first = next(iter(self.lrs.values()))
        return int(torch.argmax(first)) if first.numel() else 0

    @property
    def phase_starts(self) -> tuple[int, ...]:
        """Where each phase after the first begins (``scheduler: phases``), else nothing."""
        return tuple(p.start for p in self.resolved.phases[1:])

    @property
    def key_steps(self) -> tuple[int, ...]:
        """Steps a sampled curve keeps: warm-up end, peak and phase starts."""
        return (self.resolved.warmup_steps, self.peak_step, *self.phase_starts, *(s - 1 for s in self.phase_starts))


def curves(config: OptimizerConfig, run_steps: int, model_size: int | None = None) -> Curves:
    """Evaluate the config's schedule over ``run_steps`` optimizer steps, per param group.

    A schedule driven by a metric (reduce-on-plateau) is drawn at its starting LR, marked
    ``metric_driven``: what is known before training, and what a pipeline can compare.

    Raises:
        ConfigError: the schedule cannot be resolved (see :meth:`OptimizerConfig.resolve`).
    """
    resolved = config.resolve(training_steps=run_steps, model_size=model_size)
    driven = not config.schedule_spec.previewable
    factor = torch.ones(run_steps, dtype=torch.float64) if driven else evaluate(resolved, run_steps)
    return Curves(resolved, run_steps, {g: lr * factor for g, lr in config.group_learning_rates().items()}, driven)


def thinned(steps: int, max_points: int, keep: Iterable[int] = ()) -> list[int]:
    """At most about ``max_points`` evenly spaced steps of ``range(steps)``, ascending, always
    with the first, the last and ``keep`` (a curve's corners); all of them when ``max_points``
    is not positive. Plain ints, so that any array library can index with them."""
    if steps <= max_points or max_points <= 0:
        return list(range(steps))
    chosen = set(range(0, steps, math.ceil(steps / max_points)))
    chosen.update(k for k in (steps - 1, *keep) if 0 <= k < steps)
    return sorted(chosen)


def sample_steps(steps: int, max_points: int, keep: tuple[int, ...] = ()) -> torch.Tensor:
    """:func:`thinned`, as an index tensor."""
    return torch.tensor(thinned(steps, max_points, keep), dtype=torch.int64)


def write_csv(path: str | Path, result: Curves, max_points: int = 5000) -> Path:
    """``step`` plus one LR column per group; long runs are sampled, keeping warm-up end and peak."""
    index = sample_steps(result.steps, max_points, result.key_steps)
    groups = list(result.lrs)
    columns = [index.tolist()] + [result.lrs[g][index].tolist() for g in groups]
    lines = [",".join(["step", *groups])]
    lines.extend(",".join(repr(v) for v in row) for row in zip(*columns))
    write_atomically(path, "\n".join(lines) + "\n")
    return Path(path)


def write_group_csvs(directory: str | Path, result: Curves, max_points: int = 5000) -> Path:
    """One ``step,lr`` file per group, as the stage writes the logged LR (``plots/lr``): DVC
    draws every file of a plots directory, so each group is a curve whatever the groups are
    called. Files of groups the params no longer form are removed."""
    directory = Path(directory)
    index = sample_steps(result.steps, max_points, result.key_steps)
    steps = index.tolist()
    wanted = {f"{group}.csv" for group in result.lrs}
    for group, lrs in result.lrs.items():
        rows = "".join(f"{step},{lr!r}\n" for step, lr in zip(steps, lrs[index].tolist()))
        write_atomically(directory / f"{group}.csv", "step,lr\n" + rows)
    for stale in directory.glob("*.csv"):
        if stale.name not in wanted:
            stale.unlink()
    return directory


def write_unknown_csv(csv_path: str | Path, reason: str, header: str = "step") -> None:
    """The CSV for a run whose step count only training will tell: the header alone, so that DVC
    finds the output it expects and the pipeline goes on (``reason`` is said elsewhere)."""
    write_atomically(csv_path, header + "\n")
