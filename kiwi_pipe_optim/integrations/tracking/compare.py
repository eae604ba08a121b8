"""Runs read back from the MLflow store for a side-by-side comparison: the params that differ,
final metrics, the peak and final LR of every param group and its curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ...errors import ConfigError, Problem

FINAL_METRICS = ("val_loss", "val_acc", "train_loss")


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    final: dict[str, float]
    lr: dict[str, tuple[float, float]]  # group -> (peak, final)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def default_uri() -> str:
    from .store import repository_root, tracking_uri

    return tracking_uri(None, repository_root())


def find_runs(client: Any, experiment: str, selectors: Sequence[str], limit: int = 10) -> list[Any]:
    """Runs named by id, run name or DVC experiment name; the latest ``limit`` when none is named.

    Raises:
        ConfigError: the experiment does not exist, or a selector names no run.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(Problem("--experiment", f"no experiment {experiment!r} in this store; it has: "
                                  f"{', '.join(names) or 'none'}"))
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    if not selectors:
        return list(reversed(runs[:limit]))
    chosen = []
    for selector in selectors:
        match = [r for r in runs if selector in (r.info.run_id, r.info.run_name, r.data.tags.get("dvc.exp_name"))]
        if not match:
            raise ConfigError(Problem("RUN_OR_EXP", f"{selector!r} names no run of {experiment!r} (by run id, run "
                                      f"name or DVC experiment name); recent runs: "
                                      f"{', '.join(r.info.run_name for r in runs[:5])}"))
        chosen.append(match[0])
    return chosen


def summarize(client: Any, runs: Sequence[Any]) -> list[RunSummary]:
    out = []
    for run in runs:
        lr: dict[str, tuple[float, float]] = {}
        curves: dict[str, list[tuple[int, float]]] = {}
        for key in sorted(k for k in run.data.metrics if k.startswith("lr/")):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            curves[key[3:]] = history
            lr[key[3:]] = (max(v for _, v in history), history[-1][1])
        final = {k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics}
        out.append(RunSummary(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params), final, lr,
                              curves))
    return out


def differing_params(summaries: Sequence[RunSummary]) -> list[str]:
    keys = sorted({k for s in summaries for k in s.params})
    return [k for k in keys if len({s.params.get(k) for s in summaries}) > 1]
