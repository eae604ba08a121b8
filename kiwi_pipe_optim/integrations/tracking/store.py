"""Where MLflow values go: the tracking URI, a client that retries sqlite's lock errors, and a
check that a store or server answers before any training starts.

Both the training process (:mod:`.run`) and the sender process (:mod:`.sender`) open the
store through these, so a locked sqlite file or a server that is down reads the same in both.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError, Problem
from ...extras import require

require("mlflow", "kiwi_pipe_optim.integrations.tracking")


class _NoSchemaLines:
    """MLflow announces at INFO level each creation or migration of a sqlite store's tables: a
    store the stage opens for the user is set up silently (other MLflow lines still show)."""

    LINES = ("Creating initial MLflow database tables", "Updating database tables")

    def filter(self, record: object) -> bool:
        return not str(getattr(record, "msg", "")).startswith(self.LINES)


def _quiet_schema() -> None:
    import logging

    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoSchemaLines) for f in logger.filters):
        logger.addFilter(_NoSchemaLines())


_quiet_schema()

DEFAULT_DB = "mlflow.db"
STORE_LOCK_TIMEOUT_S = 120.0  # a store's first migration takes seconds
MAX_PARAM_LENGTH = 6000


def repository_root() -> Path:
    """The DVC repository the stage belongs to, where the MLflow store lives. Queued experiments
    run in a temporary copy, but DVC points ``DVC_ROOT`` at the original."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(configured: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the params' ``mlflow.tracking_uri``, else a sqlite
    store ``mlflow.db`` at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]  # sqlite:////abs/path.db or sqlite:///relative.db
    return Path("/" + rest.lstrip("/")) if rest.startswith("/") else Path(rest)


def is_lock_error(error: BaseException) -> bool:
    """Whether a store call lost a race for sqlite's write lock (MLflow wraps sqlalchemy's
    ``OperationalError``, which wraps sqlite3's, in an ``MlflowException``)."""
    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "orig", None) if not isinstance(seen, sqlite3.OperationalError) else seen
        if isinstance(cause, sqlite3.OperationalError):
            return "locked" in str(cause) or "busy" in str(cause)
        seen = seen.__cause__ or seen.__context__
    return False


LOCK_ATTEMPTS = 8


def retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Retry a store call that lost a race for the sqlite write lock; anything else is raised."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if not is_lock_error(e) or attempt == LOCK_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2 ** attempt * (1 + random.random()))


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` whose store exists: a new sqlite store is created and migrated once,
    under a file lock, because concurrent first-time migrations corrupt it."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        client = MlflowClient(tracking_uri=uri)
        retrying(client.search_experiments, max_results=1)
        return client
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    # bounded: a process that holds the lock for longer is stuck, and the run says so
    with FileLock(db.with_name(db.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S):
        new = not db.exists() or db.stat().st_size == 0
        try:
            client = MlflowClient(tracking_uri=uri)
            retrying(client.search_experiments, max_results=1)
        except BaseException:
            if new:  # half-migrated, it would break every later run: the next one creates it afresh
                for leftover in (db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal")):
                    leftover.unlink(missing_ok=True)
            raise
    return client


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as DVC names them (``optimizer.learning_rate``), values as MLflow strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


def check_reachable(uri: str, field: str, timeout: float = 5.0,
                    fix: str = "or unset it to log to sqlite:///mlflow.db") -> None:
    """Fail fast, before any training, when a tracking server cannot be reached.

    Raises:
        ConfigError: naming ``field`` (where the URI came from), the URI and the reason.
    """
    db = sqlite_path(uri)
    if db is not None:
        _check_writable(db, field)
        return
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answered: authentication and the like are MLflow's to report
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(Problem(field, f"cannot reach the MLflow server at {uri} ({reason}); start it (e.g. "
                                  f"`mlflow server --host 127.0.0.1 --port 5000`), {fix}")) from None


def _check_writable(db: Path, field: str) -> None:
    """A sqlite store the run can create and write: its directory made, a file written there.
    Found late, a store it cannot write would wait on its lock or fail after the model is built."""
    import tempfile

    if db.exists() and not db.is_file():
        raise ConfigError(Problem(field, f"'{db}' is not a file; give the path of an MLflow sqlite store"))
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=db.parent):
            pass
        if db.exists():
            with open(db, "r+b"):
                pass
    except OSError as e:
        raise ConfigError(Problem(field, f"cannot write the MLflow store '{db}' ({e.strerror or e}); give a "
                                  f"store path this process can write")) from None


def is_remote(uri: str) -> bool:
    """A tracking server (rather than a store this process writes itself), which may go away."""
    return uri.startswith(("http://", "https://", "databricks"))
