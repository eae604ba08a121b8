"""Sending journaled values to MLflow, in the training process or in the sender process; and
what a tracking server that does not answer costs: a warning, never the run.

``log_batch`` amortises the cost of a value: measured on a sqlite store, ~100 µs per value in
batches of 70 but ~45 µs in batches of 700, since each batch also pays a few milliseconds of
queries and a commit.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .journal import Journal
from .store import is_remote, retrying

logger = logging.getLogger("kiwi_pipe_optim")

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
SERVER_DOWN_STATUS = 3  # the sender process's exit status when a tracking server did not answer


# What a server that answers says of a request it will never take: sending it again cannot help.
REFUSALS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def tolerating_down(uri: str, on_down: Callable[[Exception], None], call: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> bool:
    """``call(*args, **kwargs)``; False, after ``on_down(error)``, when a tracking server did not
    answer. A local store's failure is no outage: it raises."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        if not is_remote(uri) or getattr(e, "error_code", None) in REFUSALS:
            raise
        on_down(e)
        return False
    return True


class MetricSender:
    """Sends what a journal holds past its ``sent`` marker to one run, in batches of up to
    :data:`MAX_METRICS_PER_BATCH`, marking each batch sent; in the training process or in the
    sender process. ``skip``: the ``(key, step)`` a resumed run logs again that MLflow holds."""

    def __init__(self, uri: str, run_id: str, journal: Journal, skip: set[tuple[str, int]], client: Any = None):
        self.uri = uri
        self.run_id = run_id
        self.journal = journal
        self.skip = skip
        self._client = client
        self.down_since: float | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def send_metrics(self) -> None:
        from mlflow.entities import Metric

        for offset, values in self.journal.values(self.journal.sent, chunk=MAX_METRICS_PER_BATCH):
            batch = [Metric(*v) for v in values if (v[0], v[3]) not in self.skip]
            if batch:
                retrying(self.client.log_batch, self.run_id, metrics=batch)
            self.journal.mark_sent(offset)

    def server_down(self, error: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            logger.warning("cannot send to MLflow at %s (%s); training goes on, values are kept in %s and sent "
                           "when the server is back", self.uri, reason, self.journal.path)

    def send_all(self) -> bool:
        """Send the journal past its marker; False when a tracking server did not answer."""
        if not tolerating_down(self.uri, self.server_down, self.send_metrics):
            return False
        self.server_back()
        return True

    def server_back(self) -> None:
        if self.down_since is not None:
            logger.warning("MLflow at %s is back; every spooled value has been sent", self.uri)
            self.down_since = None
