"""``kiwi-optim compare`` and ``send-spool``: runs read back from, and sent to, MLflow."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence


def compare(args: argparse.Namespace) -> int:
    from ..extras import require, require_module

    require("mlflow", "kiwi-optim compare")
    require_module("rich", "stage", "kiwi-optim compare")
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from ..integrations.tracking import compare as runs
    from .plots import compare_chart

    uri = args.tracking_uri or runs.default_uri()
    client = MlflowClient(tracking_uri=uri)
    summaries = runs.summarize(client, runs.find_runs(client, args.experiment, args.runs, args.limit))
    if not summaries:
        print(f"no runs in experiment {args.experiment!r} of {uri}", file=sys.stderr)
        return 1
    console = Console()
    (console if console.is_terminal else Console(width=220)).print(table(summaries))
    if args.png:
        print(f"wrote {compare_chart(args.png, summaries)}")
    return 0


def table(summaries: Sequence[Any]) -> Any:
    """The params that differ, final metrics, and the peak and final LR of every group, a row a run."""
    from rich.table import Table

    from ..integrations.tracking.compare import FINAL_METRICS, differing_params

    params = differing_params(summaries)
    groups = sorted({g for s in summaries for g in s.lr})
    metrics = [m for m in FINAL_METRICS if any(m in s.final for s in summaries)]
    t = Table(title="runs compared", show_lines=False)
    # a narrow terminal folds the run names; every other cell is a value and is never cut
    t.add_column("run", overflow="fold", min_width=8)
    for column in ["status", *params, *metrics, *[f"lr/{g} peak / final" for g in groups]]:
        t.add_column(column, no_wrap=True)
    for s in summaries:
        t.add_row(
            s.name, s.status, *[s.params.get(p, "") for p in params],
            *[f"{s.final[m]:.4g}" if m in s.final else "" for m in metrics],
            *[f"{s.lr[g][0]:.3g} / {s.lr[g][1]:.3g}" if g in s.lr else "" for g in groups],
        )
    return t


def send_spool(args: argparse.Namespace) -> int:
    from ..integrations.tracking.spool import send_spool as send

    for path in args.files:
        run_id, count = send(path, args.tracking_uri)
        print(f"sent {count} values of run {run_id} from {path}")
    return 0
