"""The spool: what a tracking server lacks when it never came back before the run ended, in a
file that ``kiwi-optim send-spool FILE`` sends later."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ...errors import ConfigError, Problem
from .journal import Journal
from .store import check_reachable
from .transport import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH

logger = logging.getLogger("kiwi_pipe_optim")


def write_spool(path: Path, run_id: str, uri: str, journal: Journal, skip: set[tuple[str, int]],
                params: dict[str, str], status: str) -> None:
    """What the server lacks (the journal past its ``sent`` marker, less ``skip``; params not
    sent) and the run's end, one JSON record a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w") as f:
        f.write(json.dumps({"run_id": run_id, "uri": uri}) + "\n")
        for _, values in journal.values(journal.sent, chunk=MAX_METRICS_PER_BATCH):
            rows = [list(v) for v in values if (v[0], v[3]) not in skip]
            count += len(rows)
            f.write(json.dumps({"metrics": rows}) + "\n")
        if params:
            f.write(json.dumps({"params": params}) + "\n")
        f.write(json.dumps({"status": status}) + "\n")
    logger.error("MLflow at %s is unreachable: the end of run %s (status %s) and %d values are in %s; "
                 "send them with `kiwi-optim send-spool %s` once it is back", uri, run_id, status,
                 count, path, path.resolve())


def send_spool(path: str | Path, uri: str | None = None) -> tuple[str, int]:
    """Send a spool file written while a tracking server was unreachable; delete it when done.

    Returns:
        The run id and the number of metric values sent.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    header, records = read_spool(path)
    check_reachable(uri or header["uri"], "--tracking-uri" if uri else f"{path}:1: uri",
                    fix="or give the server's URI with --tracking-uri")
    uri = uri or header["uri"]
    client = MlflowClient(tracking_uri=uri)
    run_id = header["run_id"]
    metrics = [Metric(*row) for r in records for row in r.get("metrics", [])]
    params = {k: v for r in records for k, v in r.get("params", {}).items()}
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
    statuses = [r["status"] for r in records if "status" in r]
    if statuses:
        client.set_terminated(run_id, statuses[-1])
    Path(path).unlink()
    return run_id, len(metrics)


def read_spool(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header (run id, tracking URI) and the records of a spool file, checked line by line.

    Raises:
        ConfigError: the file is missing, or a line is not what the stage writes.
    """
    fix = "give a file the stage wrote to .kiwi-pipe-optim/spool/"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(Problem("", f"{path}: cannot read it ({type(e).__name__}); {fix}")) from None
    lines: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or (not lines and not {"run_id", "uri"} <= set(record)):
            raise ConfigError(Problem("", f"{path}:{number}: not a spool record ({line[:60]!r}); {fix}"))
        lines.append(record)
    if not lines:
        raise ConfigError(Problem("", f"{path}: the file is empty; {fix}"))
    return lines[0], lines[1:]
