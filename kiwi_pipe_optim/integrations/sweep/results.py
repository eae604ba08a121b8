"""A study's results where users look: a table of its trials, Optuna's plots, and the line that
brings the best trial back (``dvc exp apply``)."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from ...files import atomic_open, write_atomically
from .spec import SweepSpec
from ..study.trial import ATTR_RUN

logger = logging.getLogger("kiwi_pipe_optim")


def rows(study: Any, spec: SweepSpec) -> list[dict[str, str]]:
    """One row per trial: number, state, values, metric, DVC experiment, MLflow run."""
    out = []
    for t in study.get_trials(deepcopy=False):
        value = "" if t.value is None or not math.isfinite(t.value) else f"{t.value:.6g}"
        if t.state.name == "PRUNED" and t.intermediate_values:
            value = f"({t.intermediate_values[max(t.intermediate_values)]:.6g})"  # where it was stopped
        took = "" if t.duration is None else f"{t.duration.total_seconds():.0f} s"
        out.append({"trial": str(t.number), "state": t.state.name,
                    **{k: _short(t.params.get(k)) for k in spec.space},
                    spec.metric: value, "dvc exp": t.user_attrs.get("kiwi.dvc_exp", ""),
                    "mlflow run": t.user_attrs.get(ATTR_RUN, "")[:12], "took": took})
    return out


def _short(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(study: Any, spec: SweepSpec) -> str:
    found = rows(study, spec)
    if not found:
        return f"the study {spec.name} has no trials yet"
    columns = list(found[0])
    widths = {c: max(len(c), *(len(r[c]) for r in found)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in found]
    return "\n".join(line.rstrip() for line in lines)


def best_line(study: Any, spec: SweepSpec) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "no trial has completed yet"
    name = best.user_attrs.get("kiwi.dvc_exp", f"{spec.name}-{best.number}")
    return (f"best: trial {best.number}, {spec.metric} {best.value:.6g}; bring it to the workspace with: "
            f"dvc exp apply {name}  (dvc repro --force trains it again)")


def write_plots(study: Any, folder: Path) -> list[Path]:
    """Optuna's optimization history, parallel coordinates and parameter importances as PNGs
    (each where the study has what it needs: importances need two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("history", views.plot_optimization_history), ("parallel", views.plot_parallel_coordinate),
                       ("importances", views.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these views experimental
                axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            path = folder / f"{name}.png"
            with atomic_open(path, "wb") as f:  # a reader never sees half a PNG
                figure.savefig(f, dpi=100, format="png")
            plt.close(figure)
            written.append(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for this view
            logger.info("%s: not drawn (%s)", name, str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
    return written


def write_csv(study: Any, spec: SweepSpec, path: Path) -> None:
    import csv
    import io

    found = rows(study, spec)
    text = io.StringIO()
    if found:
        writer = csv.DictWriter(text, fieldnames=list(found[0]))
        writer.writeheader()
        writer.writerows(found)
    write_atomically(path, text.getvalue())
