"""The package's log lines, as a stage script or the sender process shows them on stderr."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "kiwi_pipe_optim"


def log_to_stderr(level: int = logging.INFO) -> logging.Logger:
    """``kiwi-pipe-optim: LEVEL: message`` lines on stderr, not passed on to the root logger
    (whose handlers, Lightning's or the user's, would print them a second time). Called again
    (a stage run twice in one process), it replaces its handler rather than adding a second."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if getattr(h, "kiwi_stderr", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.kiwi_stderr = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("kiwi-pipe-optim: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
