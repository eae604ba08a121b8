"""Processes named by pid and start time, since a pid alone may be reused by the time it is
checked (Linux's /proc; elsewhere a process reads as unknown)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

Process = tuple[int, str]  # pid and start time


def _fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def stat(pid: int) -> tuple[int, str] | None:
    """The parent pid and start time of ``pid``; None when it is gone or unknown."""
    fields = _fields(pid)
    return None if fields is None else (int(fields[1]), fields[19])


def this(pid: int) -> Process | None:
    found = stat(pid)
    return None if found is None else (pid, found[1])


def is_gone(process: Process | None) -> bool:
    """Whether ``process`` has exited (a pid now used by another process counts as exited)."""
    if process is None:
        return False
    fields = _fields(process[0])
    return fields is None or fields[19] != process[1] or fields[0] == "Z"  # a zombie has exited


def end_group(pgid: int, grace_s: float = 30.0) -> bool:
    """Stop what is left of process group ``pgid`` once its leader has exited: SIGTERM, then
    SIGKILL after ``grace_s``. True when something was left. Why: a command that dies under its
    shell (``sh -c``, as DVC runs a stage) leaves the shell's child running, orphaned, and that
    child would go on writing to a workspace and an MLflow run that are no longer its own."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True
