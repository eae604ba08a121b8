"""Third-party lines a default run should not print, each named exactly (nothing broader is
silenced: a user's or Lightning's own warnings still show)."""

from __future__ import annotations

import logging
import warnings

# Lightning's own pytree helper builds a LeafSpec, which torch 2.13 deprecates: not the user's to fix.
LEAF_SPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Lightning's advertisement for its hosted logger, printed by every Trainer given another logger.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


class _Dropped(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


_TIP_FILTER = _Dropped(LITLOGGER_TIP)


def quiet_lightning() -> None:
    """Idempotent: the filters are installed once whatever the number of calls."""
    warnings.filterwarnings("ignore", message=LEAF_SPEC, category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
