"""The stage's DVC outputs, written once at the end from the journal of logged values.

``plots/lr/<group>.csv`` holds one file per param group (``step,lr``), so that ``dvc plots show``
and ``dvc plots diff`` draw every group, whatever the groups are called; ``plots/loss.csv`` the
loss the module returned per optimizer step; ``metrics.json`` the last value of every metric the run logged. Long runs
are thinned to ``max_points`` rows per file (MLflow keeps every value). Each file is written to a
temporary name and renamed: a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...files import write_atomically
from ...preview import thinned
from ..tracking.journal import Journal

METRICS_FILE = "metrics.json"
LR_PLOTS = "plots/lr"
LOSS_PLOT = "plots/loss.csv"
NOT_METRICS = ("lr/", "lr_effective/", "momentum/", "epoch")
# The loss the module returned, per optimizer step: under kiwi/train_loss when the module logs a
# train_loss of its own (see :class:`..lightning.recorder.StepRecorder`).
LOSS_KEYS = ("kiwi/train_loss", "train_loss")
FINISHED_DIR = Path(".kiwi-pipe-optim") / "finished"


def _csv(header: list[str], rows: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _thin(steps: np.ndarray, values: np.ndarray, max_points: int) -> list[tuple[int, float]]:
    index = thinned(len(steps), max_points)
    return list(zip(steps[index].tolist(), values[index].tolist()))


def write_outputs(out_dir: Path, journal: Journal, global_step: int, epochs: int, seconds: float,
                  max_points: int = 5000, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the plots and metrics of a finished run; return the metrics.

    With ``record`` (the run id and params digest), the outputs are first kept, with the record,
    in ``.kiwi-pipe-optim/finished/``: a process killed after this point, before its exit, has
    finished, and the next run of the stage restores them (:func:`restore_finished`) instead of
    training again.
    """
    records = journal.records()
    metrics: dict[str, Any] = {"steps": global_step, "epochs": epochs}
    texts: dict[str, str] = {}
    loss_key = next((key for key in LOSS_KEYS if key in journal.keys), None)
    for index, key in enumerate(journal.keys):
        mine = records[records["key"] == index]
        if not len(mine):
            continue
        if key.startswith("lr/"):
            texts[f"{LR_PLOTS}/{key[3:]}.csv"] = _csv(["step", "lr"], _thin(mine["step"], mine["value"], max_points))
        elif key == loss_key:
            texts[LOSS_PLOT] = _csv(["step", "train_loss"], _thin(mine["step"], mine["value"], max_points))
        if not key.startswith(NOT_METRICS):
            metrics[key] = float(mine["value"][-1])
    if seconds > 0:
        # training loop throughput, validation and logging included; compare implementations with it
        metrics["steps_per_second"] = round(global_step / seconds, 2)
    texts[METRICS_FILE] = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    if record is not None:
        kept = out_dir / FINISHED_DIR
        for name, text in texts.items():
            write_atomically(kept / name, text)
        write_atomically(kept / "record.json", json.dumps({**record, "outputs": list(texts), "metrics": metrics}))
    for name, text in texts.items():
        write_atomically(out_dir / name, text)
    return metrics


def restore_finished(out_dir: Path, params_digest: str) -> dict[str, Any] | None:
    """The record of a run that finished but was killed before it could exit, with its outputs
    put back where DVC wants them; None (and any stale record removed) otherwise."""
    kept = out_dir / FINISHED_DIR
    try:
        record = json.loads((kept / "record.json").read_text())
    except (OSError, ValueError):
        discard_finished(out_dir)
        return None
    if record.get("params") != params_digest:
        discard_finished(out_dir)
        return None
    for name in record["outputs"]:
        write_atomically(out_dir / name, (kept / name).read_text())
    return record


def discard_finished(out_dir: Path) -> None:
    """The process is about to exit normally: the record is no longer needed."""
    import shutil

    shutil.rmtree(out_dir / FINISHED_DIR, ignore_errors=True)
