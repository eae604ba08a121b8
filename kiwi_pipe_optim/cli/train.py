"""``kiwi-optim train``: the DVC stage ``train`` (what ``kiwi-optim init`` puts in ``dvc.yaml``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    # listed for --help; ``cli.main`` hands ``train``'s arguments to :func:`run` before parsing
    sub.add_parser("train", help="the train stage: read params.yaml, train, log to MLflow, write metrics.json "
                   "and plots/ (kiwi-optim train --help)")


def run(argv: list[str]) -> int:
    """The stage, then an exit without Python's teardown (the process ends here)."""
    from ..extras import MissingExtra

    try:
        from ..integrations.stage import main
    except MissingExtra as e:
        print(f"kiwi-optim train: {e}", file=sys.stderr)
        return 1
    code = main(argv, prog="kiwi-optim train")
    # The outputs and the MLflow run are final here. Python's teardown of torch, Lightning and
    # MLflow takes seconds, and a kill -9 during it would make DVC see a failed stage and train
    # again: leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
