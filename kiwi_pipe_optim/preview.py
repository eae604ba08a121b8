"""The whole LR curve of a run, per param group, from the config alone: no model, no optimizer.

The schedule functions are evaluated on the whole step array at once, so a million-step curve
takes milliseconds. The run's step count comes from the caller (the stage's params know how
Lightning will count it: :mod:`kiwi_pipe_optim.integrations.steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import OptimizerConfig
from .resolve import ResolvedSchedule
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


def sample_steps(steps: int, max_points: int, keep: tuple[int, ...] = ()) -> torch.Tensor:
    """At most about ``max_points`` evenly spaced steps, always with the first, last and ``keep``."""
    if steps <= max_points:
        return torch.arange(steps)
    stride = math.ceil(steps / max_points)
    chosen = torch.cat([torch.arange(0, steps, stride), torch.tensor([steps - 1, *[k for k in keep if 0 <= k < steps]])])
    return torch.unique(chosen)


def write_csv(path: str | Path, result: Curves, max_points: int = 5000) -> Path:
    """``step`` plus one LR column per group; long runs are sampled, keeping warm-up end and peak."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = sample_steps(result.steps, max_points, result.key_steps)
    groups = list(result.lrs)
    columns = [index.tolist()] + [result.lrs[g][index].tolist() for g in groups]
    lines = [",".join(["step", *groups])]
    lines.extend(",".join(repr(v) for v in row) for row in zip(*columns))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def plot_png(path: str | Path, result: Curves, title: str = "", max_points: int = 20000) -> Path:
    """A line per group, warm-up end and peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = sample_steps(result.steps, max_points, result.key_steps)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for group, lr in result.lrs.items():
        ax.plot(index.numpy(), lr[index].numpy(), label=f"lr/{group}")
    r = result.resolved
    if r.warmup_steps > 0:
        ax.axvline(r.warmup_steps, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"warm-up ends: step {r.warmup_steps}", (r.warmup_steps, 0), xytext=(5, 5),
                    textcoords="offset points", fontsize=8, color="grey")
    for start in result.phase_starts:
        ax.axvline(start, color="grey", linestyle=":", linewidth=1)
    peak = result.peak_step
    for lr in result.lrs.values():
        ax.plot([peak], [float(lr[peak])], marker="o", color="black", markersize=4)
    first = next(iter(result.lrs.values()))
    ax.annotate(f"peak {float(first[peak]):.3g} at step {peak}", (peak, float(first[peak])), xytext=(8, -12),
                textcoords="offset points", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    default = f"{r.name} schedule, {result.steps} steps"
    if result.metric_driven:
        default = f"{r.name}: starting LR; reduced by {r.factor:g} when {r.monitor} stops improving"
    ax.set_title(title or default)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_unknown(csv_path: str | Path | None, png_path: str | Path | None, reason: str) -> None:
    """Outputs for a run whose step count only training will tell: a CSV with the header alone
    and a PNG that says why, so that DVC finds the outputs it expects and the pipeline goes on."""
    if csv_path:
        path = Path(csv_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("step\n")
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(png_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, f"No preview: {reason}.\nSet trainer.max_steps or optimizer.training_steps to see the curve.",
                ha="center", va="center", wrap=True)
        fig.savefig(path)
        plt.close(fig)
