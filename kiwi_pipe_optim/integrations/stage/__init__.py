"""The DVC ``train`` stage: params in; a Lightning fit, an MLflow run and DVC outputs out.

Example:
    >>> from kiwi_pipe_optim.integrations.stage import run  # doctest: +SKIP
    >>> metrics = run("params.yaml")  # doctest: +SKIP
"""

from ...extras import require

require("stage", "kiwi_pipe_optim.integrations.stage")

from .run import is_rank_zero, main, run  # noqa: E402

__all__ = ["is_rank_zero", "main", "run"]
