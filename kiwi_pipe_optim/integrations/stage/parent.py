"""Whether the DVC process that runs this stage is still there when the stage finishes.

DVC stopped on its own (SIGTERM to its pid, a closed terminal) leaves its stage running: the
stage finishes and writes its outputs, but no one records them in ``dvc.lock``, and the next
``dvc repro`` would train the same params again. A stage that finds its DVC gone keeps its
finished record (:mod:`.outputs`), so that the next run restores the outputs instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...processes import Process, is_gone, stat

__all__ = ["Process", "dvc_process", "is_gone"]


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
        found = stat(pid)
        if found is None or pid <= 1:
            return None
        if _is_dvc(pid):
            return pid, found[1]
        pid = found[0]
    return None

