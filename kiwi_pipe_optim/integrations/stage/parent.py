"""Whether the DVC process that runs this stage is still there when the stage finishes.

DVC stopped on its own (SIGTERM to its pid, a closed terminal) leaves its stage running: the
stage finishes and writes its outputs, but no one records them in ``dvc.lock``, and the next
``dvc repro`` would train the same params again. A stage that finds its DVC gone keeps its
finished record (:mod:`.outputs`), so that the next run restores the outputs instead.
"""

from __future__ import annotations

import os
from pathlib import Path

Process = tuple[int, str]  # pid and start time: a pid alone may be reused


def _stat(pid: int) -> tuple[int, str] | None:
    """The parent pid and start time of ``pid`` (Linux's /proc; None elsewhere or when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:4]
    except OSError:
        return False
    return any(os.path.basename(arg) == b"dvc" for arg in argv)


def dvc_process() -> Process | None:
    """The nearest ancestor that is DVC, when DVC runs this stage (it sets ``DVC_STAGE``)."""
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(8):  # DVC, its shell, a wrapper or two
        stat = _stat(pid)
        if stat is None or pid <= 1:
            return None
        if _is_dvc(pid):
            return pid, stat[1]
        pid = stat[0]
    return None


def is_gone(process: Process | None) -> bool:
    """Whether ``process`` has exited (a pid now used by another process counts as exited)."""
    if process is None:
        return False
    stat = _stat(process[0])
    return stat is None or stat[1] != process[1]
