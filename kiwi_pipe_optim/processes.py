"""Processes named by pid and start time, since a pid alone may be reused by the time it is
checked (Linux's /proc; elsewhere a process reads as unknown)."""

from __future__ import annotations

from pathlib import Path

Process = tuple[int, str]  # pid and start time


def stat(pid: int) -> tuple[int, str] | None:
    """The parent pid and start time of ``pid``; None when it is gone or unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def this(pid: int) -> Process | None:
    found = stat(pid)
    return None if found is None else (pid, found[1])


def is_gone(process: Process | None) -> bool:
    """Whether ``process`` has exited (a pid now used by another process counts as exited)."""
    if process is None:
        return False
    found = stat(process[0])
    return found is None or found[1] != process[1]
