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
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...files import write_atomically
from ...processes import Process, is_gone, this

logger = logging.getLogger("kiwi_pipe_optim")


class JournalDamaged(ValueError):
    """A journal file that cannot be what this module wrote."""


PROGRESS_S = 10.0  # a line this often while a resume waits for the sender of the killed run
EARLIEST_MS = 946_684_800_000  # 2000-01-01: an earlier timestamp is no time a run logged at
RECORD = np.dtype([("key", "<i4"), ("step", "<i8"), ("value", "<f8"), ("timestamp", "<i8")])
Value = tuple[str, float, int, int]  # key, value, timestamp (ms), step: MLflow's Metric order
Row = tuple[tuple[str, ...], list[Any], int, int]  # keys, their values, timestamp (ms), step


class Journal:
    """``<path>`` (records), ``<path>.keys`` (key names), ``<path>.sent`` (bytes sent to MLflow).

    ``run_id``: the MLflow run the journal is sent to. The sent marker names it and carries a
    checksum, so that a marker that is missing, damaged or about another run (one deleted, a
    store replaced) is known to be unknown, and the run asks MLflow what it holds instead of
    sending everything again or only the tail.
    """

    def __init__(self, path: str | Path, run_id: str | None = None):
        self.path = Path(path)
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._keys_file = self.path.with_name(self.path.name + ".keys")
        self._sent_file = self.path.with_name(self.path.name + ".sent")
        self.reload_keys()

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def sent(self) -> int:
        """Bytes of the journal MLflow holds (always a whole number of records); 0 when the
        marker cannot tell, which only a run that has asked MLflow (and skips what it holds) may use."""
        known = self.sent_known()
        return 0 if known is None else known

    def sent_known(self) -> int | None:
        """The marker's offset; None when it is missing (with records journaled), damaged, past
        the journal's end, or written for another run than :attr:`run_id`."""
        try:
            text = self._sent_file.read_text()
        except FileNotFoundError:
            return 0 if self.size == 0 else None
        except (OSError, UnicodeDecodeError):
            return None
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] != _checksum(parts[0], parts[1]):
            return None
        if self.run_id is not None and parts[1] != self.run_id:
            return None
        offset = int(parts[0])
        return offset if offset % RECORD.itemsize == 0 and offset <= self.size else None

    def mark_sent(self, offset: int) -> None:
        run = self.run_id or "-"
        write_atomically(self._sent_file, f"{offset} {run} {_checksum(str(offset), run)}\n")

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
        """Raises:
            JournalDamaged: the key file is no JSON list of distinct names.
        """
        try:
            keys = json.loads(self._keys_file.read_text()) if self._keys_file.exists() else []
        except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
            raise JournalDamaged(f"'{self._keys_file}' cannot be read ({type(e).__name__})") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            raise JournalDamaged(f"'{self._keys_file}' is damaged (not a list of distinct metric names)")
        self.keys = keys
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._codes: dict[tuple[str, ...], list[int]] = {}  # a row's keys: their indices

    def check(self, end: int | None = None) -> None:
        """Every record up to ``end`` names a known key, a step and a timestamp MLflow takes:
        damage found before a resume relies on it, not at the end of training when MLflow
        refuses it, nor as values missing from the plots.

        Raises:
            JournalDamaged: the first damaged record, by its position.
        """
        records = self.records(0, end)
        now_ms = time.time() * 1000
        bad = ((records["key"] < 0) | (records["key"] >= len(self.keys)) | (records["step"] < 0)
               | (records["timestamp"] < EARLIEST_MS) | (records["timestamp"] > now_ms + 86_400_000))
        if bad.any():
            first = int(np.argmax(bad))
            raise JournalDamaged(f"'{self.path}' is damaged: record {first} of {len(records)} (byte "
                                 f"{first * RECORD.itemsize}) names no known metric, step or time")

    @staticmethod
    def remove(path: str | Path) -> None:
        """A journal's files, whatever state they are in."""
        path = Path(path)
        for suffix in ("", ".keys", ".sent", ".skip"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

    def truncate(self, offset: int) -> None:
        """Cut the journal back to ``offset`` bytes (a checkpoint's length): what a crashed run
        logged after its checkpoint is logged again, identically, by the resumed run."""
        known = self.sent_known()
        with open(self.path, "r+b") as f:
            f.truncate(offset)
        if known is not None and known > offset:
            self.mark_sent(offset)

    def delete(self) -> None:
        self.remove(self.path)


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


def _checksum(offset: str, run: str) -> str:
    return f"{zlib.crc32(f'{offset} {run}'.encode()):08x}"


def rewind(journal: Journal, offset: int, step: int) -> set[tuple[str, int]] | None:
    """Cut the journal back to a checkpoint taken after ``step`` optimizer steps (its length
    then: ``offset``).

    Kept: everything before the checkpoint, and what was logged for the steps it completed just
    after it (Lightning sends a batch's ``self.log`` values after the callbacks that save).
    Dropped: the steps from ``step`` on, which the resumed run logs again. Returns the
    ``(key, step)`` of values MLflow already holds beyond the cut, so that none is sent twice;
    None when the sent marker cannot say (then MLflow is asked, :class:`.run.MlflowRun`).
    """
    sent = journal.sent_known()
    after = journal.records(offset)
    already = None
    if sent is not None:
        sent_after = after[: max(0, sent - offset) // RECORD.itemsize]
        already = {(journal.keys[k], s) for k, s in zip(sent_after["key"].tolist(), sent_after["step"].tolist())}
    keep = after[after["step"] < step]
    journal.truncate(offset)
    if len(keep):
        with open(journal.path, "ab") as f:
            f.write(keep.tobytes())
    if sent is not None:
        journal.mark_sent(min(sent, offset))
    return already


@contextlib.contextmanager
def journal_lock(journal_path: Path, timeout_s: float = 600.0) -> Iterator[int]:
    """Hold ``<journal>.lock`` (yields the fd), waiting first for the sender process of an
    interrupted run to finish sending. A sender started meanwhile gets a copy of the fd, so the
    lock stays held until it too has exited.

    The lock file names the process that took it: held while that process lives, it is a
    second run of the stage in the same workspace, refused at once rather than waited for.

    Raises:
        TimeoutError: it was still held after ``timeout_s``, or is held by a run in progress.
    """
    import fcntl

    path = journal_path.with_name(journal_path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        said = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if holder is not None and not is_gone(holder):
                    raise TimeoutError(f"another run of this stage (pid {holder[0]}) is in progress in this "
                                       f"workspace") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"'{path}' is still held by the MLflow sender of an earlier run") from None
                waited = time.monotonic() - deadline + timeout_s
                if waited >= said * PROGRESS_S:  # at once, then every PROGRESS_S
                    logger.info("waiting for the MLflow sender of the interrupted run to send what it journaled "
                                "(%.0f s so far, at most %.0f s)", waited, timeout_s)
                    said += 1
                time.sleep(0.05)
        me = this(os.getpid())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me[0]} {me[1]}\n".encode() if me else b"", 0)
        yield fd
    finally:
        os.close(fd)


def _holder(fd: int) -> Process | None:
    """The process a lock file names."""
    parts = os.pread(fd, 100, 0).split()
    return (int(parts[0]), parts[1].decode()) if len(parts) == 2 and parts[0].isdigit() else None
