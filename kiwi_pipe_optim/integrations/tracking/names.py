"""Metric, param and tag names as MLflow takes them, decided before anything is sent.

MLflow refuses a whole batch (up to 1,000 values) for one name it does not take, and only when
the batch is sent: at the end of a run, that is every value after the last send. A name is
therefore mapped once, when first logged, to one it takes: the rule is MLflow's own
(``mlflow.utils.validation``): letters, digits, ``_ - . : /`` and spaces, at most 250 characters,
and a path that normalizes to itself (no ``//``, no leading ``/``, no ``.`` or ``..`` segment).
"""

from __future__ import annotations

import logging
import posixpath
import re

MAX_NAME_LENGTH = 250
_REFUSED_CHARACTER = re.compile(r"[^/\w.\- :]")
RULE = "letters, digits, _ - . : / and spaces, at most 250 characters, no empty, '.' or '..' path segment"

logger = logging.getLogger("kiwi_pipe_optim")


def is_allowed(name: str) -> bool:
    normal = posixpath.normpath(name)
    return (bool(name) and len(name) <= MAX_NAME_LENGTH and not _REFUSED_CHARACTER.search(name)
            and normal == name and normal != "." and not normal.startswith(("..", "/")))


def allowed_name(name: str) -> str:
    """``name``, or the name MLflow takes that stands for it (said once, by the caller)."""
    if is_allowed(name):
        return name
    segments = [_REFUSED_CHARACTER.sub("_", part) for part in str(name).split("/")]
    segments = ["_" if part in (".", "..") else part for part in segments if part]
    mapped = "/".join(segments)[:MAX_NAME_LENGTH].rstrip("/") or "_"
    return mapped if is_allowed(mapped) else "_"


class NameMap:
    """Each logged name mapped once; a mapped one said once, as a warning. ``kind``: what is
    named (metric, param, tag), for that warning."""

    def __init__(self, kind: str = "metric") -> None:
        self.kind = kind
        self._names: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        found = self._names.get(name)
        if found is None:
            found = self._names[name] = allowed_name(name)
            if found != name:
                logger.warning("%s %r is not a name MLflow takes (%s): logged as %r", self.kind, name, RULE, found)
        return found
