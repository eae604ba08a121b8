"""The charts ``kiwi-optim`` draws (matplotlib, headless): one figure of LR curves, for a
preview of the schedule or for runs compared, written whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..files import write_atomically

LOG_AXIS_SPAN = 10.0  # curves whose peaks are a decade or more apart share a log axis


def lr_chart(path: str | Path, lines: Iterable[tuple[str, Sequence[float], Sequence[float]]], title: str,
             size: tuple[float, float] = (8, 4.5), legend_size: Any = None,
             marks: Callable[[Any], None] | None = None) -> Path:
    """One line per ``(label, steps, lrs)``; ``marks(ax)`` adds what a chart points out."""
    from ..extras import require_module

    require_module("matplotlib", "stage", "a chart")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    peaks: list[float] = []
    for label, steps, lrs in lines:
        ax.plot(steps, lrs, label=label)
        peaks.append(max((float(v) for v in lrs), default=0.0))
    peaks = [p for p in peaks if p > 0]
    if peaks and max(peaks) >= LOG_AXIS_SPAN * min(peaks):
        ax.set_yscale("log")  # one curve peaking at 1.0 would flatten one at 1e-3 on a linear axis
    else:
        ax.margins(y=0.1)  # a constant LR drawn inside the frame, not on it
    if marks is not None:
        marks(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomically(path, png.getvalue())
    return Path(path)


def preview_chart(path: str | Path, result: Any, title: str = "", max_points: int = 20000) -> Path:
    """A preview's curves (:class:`kiwi_pipe_optim.preview.Curves`): a line per group, the end of
    warm-up, the phases' starts and the peak marked."""
    from ..preview import sample_steps

    index = sample_steps(result.steps, max_points, result.key_steps)
    r, peak = result.resolved, result.peak_step
    first = next(iter(result.lrs.values()))

    def marks(ax: Any) -> None:
        if r.warmup_steps > 0:
            ax.axvline(r.warmup_steps, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"warm-up ends: step {r.warmup_steps}", (r.warmup_steps, 0), xytext=(5, 5),
                        textcoords="offset points", fontsize=8, color="grey")
        for start in result.phase_starts:
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        for lr in result.lrs.values():
            ax.plot([peak], [float(lr[peak])], marker="o", color="black", markersize=4)
        ax.annotate(f"peak {float(first[peak]):.3g} at step {peak}", (peak, float(first[peak])), xytext=(8, -12),
                    textcoords="offset points", fontsize=8)

    default = f"{r.name} schedule, {result.steps} steps"
    if result.metric_driven:
        default = f"{r.name}: starting LR; reduced by {r.factor:g} when {r.monitor} stops improving"
    lines = [(f"lr/{group}", index.numpy(), lr[index].numpy()) for group, lr in result.lrs.items()]
    return lr_chart(path, lines, title or default, marks=marks)


def compare_chart(path: str | Path, summaries: Sequence[Any]) -> Path:
    """The LR curves MLflow holds for runs compared (:class:`..integrations.tracking.compare.RunSummary`)."""
    lines = [(f"{s.name} lr/{group}", [st for st, _ in history], [v for _, v in history])
             for s in summaries for group, history in s.curves.items()]
    return lr_chart(path, lines, "logged learning rates", size=(9, 5), legend_size=8)


def unknown_chart(path: str | Path, reason: str) -> Path:
    """The image for a run whose step count only training will tell: it says why there is no curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, f"No preview: {reason}.\nSet trainer.max_steps or optimizer.training_steps to see the curve.",
            ha="center", va="center", wrap=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomically(path, png.getvalue())
    return Path(path)
