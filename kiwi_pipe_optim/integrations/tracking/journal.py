"""An append-only journal of every logged value, on local disk: what a checkpoint points into.

A checkpoint that carried the whole logged history cost more at every save as the run went on
(quadratic in the run's length); the journal makes a save O(1): the checkpoint records the
journal's length, and a resume cuts the journal back to it. The journal is also what the DVC
plots are written from at the end, and the record of what has reached MLflow (``sent``), so that
a tracking server that goes away loses nothing and sends nothing twice.

Records are fixed-size binary (key index, step, value, timestamp): appending a batch is one
write, reading a range is one ``numpy.fromfile``. Key names live in a small sidecar file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...files import write_atomically

logger = logging.getLogger("kiwi_pipe_optim")

RECORD = np.dtype([("key", "<i4"), ("step", "<i8"), ("value", "<f8"), ("timestamp", "<i8")])
Value = tuple[str, float, int, int]  # key, value, timestamp (ms), step: MLflow's Metric order
Row = tuple[tuple[str, ...], list[Any], int, int]  # keys, their values, timestamp (ms), step


class Journal:
    """``<path>`` (records), ``<path>.keys`` (key names), ``<path>.sent`` (bytes sent to MLflow)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        keys_file = self.path.with_name(self.path.name + ".keys")
        self._keys_file = keys_file
        self.keys: list[str] = json.loads(keys_file.read_text()) if keys_file.exists() else []
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._codes: dict[tuple[str, ...], list[int]] = {}  # a row's keys: their indices
        self._sent_file = self.path.with_name(self.path.name + ".sent")

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def sent(self) -> int:
        """Bytes of the journal MLflow holds (always a whole number of records)."""
        try:
            return min(int(self._sent_file.read_text() or 0), self.size)
        except (OSError, ValueError):
            return 0

    def mark_sent(self, offset: int) -> None:
        write_atomically(self._sent_file, str(offset))

    def append_rows(self, rows: list[Row]) -> int:
        """Write ``rows``, each the values of some keys at one step; return the journal's new
        length in bytes. Values may be tensors: they are moved as in :func:`as_floats`.

        Rows, not values, because a logger gets a step's values together: the per-value Python
        work (a tuple, a key lookup) was about a tenth of what the stage added to a small model's step.

        No fsync (~1 ms a call here): a killed process's writes survive it in the page cache,
        and Lightning's checkpoint, which points into the journal, is not fsynced either. After
        a machine crash that lost the journal's end, the resume is refused in one line.
        """
        if not rows:
            return self.size
        codes, index = self._codes, self._index
        key_column: list[int] = []
        value_column: list[Any] = []
        counts: list[int] = []
        new = False
        for keys, values, _, _ in rows:
            known = codes.get(keys)
            if known is None:
                for key in keys:
                    if key not in index:
                        index[key] = len(self.keys)
                        self.keys.append(key)
                        new = True
                known = codes[keys] = [index[key] for key in keys]
            key_column += known
            value_column += values
            counts.append(len(keys))
        if new:  # before the records that name them: the sender process reads them in that order
            write_atomically(self._keys_file, json.dumps(self.keys))
        records = np.empty(len(key_column), dtype=RECORD)
        records["key"] = key_column
        records["value"] = as_floats(value_column)
        repeats = np.array(counts)
        records["timestamp"] = np.repeat(np.array([row[2] for row in rows], dtype=np.int64), repeats)
        records["step"] = np.repeat(np.array([row[3] for row in rows], dtype=np.int64), repeats)
        with open(self.path, "ab") as f:
            f.write(records.tobytes())
            return f.tell()

    def records(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """The records between two byte offsets (one read)."""
        end = self.size if end is None else min(end, self.size)
        count = max(0, end - start) // RECORD.itemsize
        if count == 0:
            return np.empty(0, dtype=RECORD)
        return np.fromfile(self.path, dtype=RECORD, count=count, offset=start)

    def values(self, start: int = 0, end: int | None = None, chunk: int = 1000) -> Iterator[tuple[int, list[Value]]]:
        """``(offset after the chunk, values)`` chunk by chunk, for sending. Read one chunk at a
        time, so that a long backlog (a server down for hours) costs one chunk of memory."""
        end = self.size if end is None else min(end, self.size)
        while end - start >= RECORD.itemsize:
            part = self.records(start, min(end, start + chunk * RECORD.itemsize))
            if int(part["key"].max()) >= len(self.keys):
                self.reload_keys()  # another process (the one training) journaled a new key
            start += len(part) * RECORD.itemsize
            yield start, [(self.keys[k], v, t, s) for k, s, v, t in part.tolist()]

    def reload_keys(self) -> None:
        self.keys = json.loads(self._keys_file.read_text()) if self._keys_file.exists() else []
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._codes = {}

    def truncate(self, offset: int) -> None:
        """Cut the journal back to ``offset`` bytes (a checkpoint's length): what a crashed run
        logged after its checkpoint is logged again, identically, by the resumed run."""
        with open(self.path, "r+b") as f:
            f.truncate(offset)
        if self.sent > offset:
            self.mark_sent(offset)

    def delete(self) -> None:
        for path in (self.path, self._keys_file, self._sent_file, self.path.with_name(self.path.name + ".skip")):
            path.unlink(missing_ok=True)


def as_floats(values: list[Any]) -> list[Any]:
    """Values as plain floats. Tensors (a loss, a metric kept on its device) are moved in one
    transfer per device for the whole batch, instead of a host sync at every step."""
    others = [i for i, value in enumerate(values) if type(value) is not float]
    if not others:
        return values
    import torch

    out = list(values)
    by_device: dict[Any, list[int]] = {}
    for i in others:
        if isinstance(values[i], torch.Tensor):
            by_device.setdefault(values[i].device, []).append(i)
        else:
            out[i] = float(values[i])  # an int, a numpy number
    for indices in by_device.values():
        with torch.no_grad():  # one stack (it promotes mixed dtypes), one conversion: not one per value
            stacked = torch.stack([values[i].reshape(()) for i in indices]).to(torch.float64)
        for i, number in zip(indices, stacked.cpu().tolist()):
            out[i] = number
    return out


def rewind(journal: Journal, offset: int, step: int) -> set[tuple[str, int]]:
    """Cut the journal back to a checkpoint taken after ``step`` optimizer steps (its length
    then: ``offset``).

    Kept: everything before the checkpoint, and what was logged for the steps it completed just
    after it (Lightning sends a batch's ``self.log`` values after the callbacks that save).
    Dropped: the steps from ``step`` on, which the resumed run logs again. Returns the
    ``(key, step)`` of values MLflow already holds beyond the cut, so that none is sent twice.
    """
    sent = journal.sent
    after = journal.records(offset)
    sent_after = after[: max(0, sent - offset) // RECORD.itemsize]
    already = {(journal.keys[k], s) for k, s in zip(sent_after["key"].tolist(), sent_after["step"].tolist())}
    keep = after[after["step"] < step]
    journal.truncate(offset)
    if len(keep):
        with open(journal.path, "ab") as f:
            f.write(keep.tobytes())
    journal.mark_sent(min(sent, offset))
    return already


@contextlib.contextmanager
def journal_lock(journal: Journal, timeout_s: float = 600.0) -> Iterator[int]:
    """Hold ``<journal>.lock`` (yields the fd), waiting first for the sender process of an
    interrupted run to finish sending. A sender started meanwhile gets a copy of the fd, so the
    lock stays held until it too has exited.

    Raises:
        TimeoutError: it was still held after ``timeout_s``.
    """
    import fcntl

    path = journal.path.with_name(journal.path.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"'{path}' is still held by the MLflow sender of an earlier run") from None
                if not said:
                    logger.info("waiting for the MLflow sender of the interrupted run to send what it journaled")
                    said = True
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)
