"""The findings the ``check`` stage printed, so that ``schedule`` and ``train`` in the same
``dvc repro`` do not print them again: a finding is shown once per run of the pipeline.

Keyed by the params file's bytes: once the file changes, every finding is new again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from ...files import write_atomically

SHOWN_FILE = Path(".kiwi-pipe-optim") / "shown-findings.json"


def _digest(params_path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(params_path).read_bytes()).hexdigest()
    except OSError:
        return None


def already_shown(params_path: str | Path, root: Path = Path(".")) -> set[str]:
    """What the check stage printed for this very params file (empty if anything else)."""
    try:
        record = json.loads((root / SHOWN_FILE).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(record, dict) or record.get("params") != _digest(params_path):
        return set()
    return {str(f) for f in record.get("shown") or ()}


def remember_shown(params_path: str | Path, findings: Iterable[object], root: Path = Path(".")) -> None:
    try:
        write_atomically(root / SHOWN_FILE, json.dumps({"params": _digest(params_path),
                                                         "shown": sorted({str(f) for f in findings})}))
    except OSError:
        pass  # only a repeat of a warning is at stake
