"""Where a study lives, and what it records of itself.

A study lives in a storage that every process of a sweep opens by the same address: a journal
file (Optuna's ``JournalFileBackend``) for processes on one machine, PostgreSQL for many (SQLite
is refused: Optuna's FAQ warns that it breaks under parallel trials). The driver and the stage
of each trial open it on their own; they share nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ...errors import ConfigError, Problem

# What the study itself records, so that a process joining it (another machine, a trial's stage,
# a resumed driver) needs nothing but its name and storage.
ATTR_SPEC = "kiwi.spec"
ATTR_DIGEST = "kiwi.spec_digest"
ATTR_PARENT = "kiwi.mlflow_parent_run_id"


def normalized(url: str) -> str:
    """``postgresql://`` as SQLAlchemy reaches it with psycopg 3 (its default driver is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_journal(storage: str) -> bool:
    return "://" not in storage


def open_storage(storage: str) -> Any:
    """The storage at ``storage``: a journal file path, or a database URL.

    Raises:
        ConfigError: SQLite, an unreachable database, or a journal file that cannot be written.
    """
    import optuna

    if is_journal(storage):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise ConfigError(Problem("--storage", f"cannot write the study's journal '{path}' ({e.strerror or e}); "
                                      f"pass a writable path or a postgresql:// URL")) from None
    if storage.startswith("sqlite"):
        raise ConfigError(Problem("--storage", f"{storage!r}: SQLite breaks under parallel trials (Optuna's FAQ); "
                                  f"leave --storage out for a journal file on this machine, or use postgresql://"))
    url = normalized(storage)
    last: Exception | None = None
    for _ in range(3):  # processes that start together race to create the tables once
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # noqa: BLE001 (the driver's or the network's, said in one line below)
            last = e
    reason = str(last).strip().splitlines()[0][:200] if last and str(last).strip() else type(last).__name__
    raise ConfigError(Problem("--storage", f"cannot open the study storage {_redacted(storage)} ({reason}); check the "
                              f"database is up and the URL's user, password and database"))


def _redacted(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def make_pruner(name: str, options: dict[str, Any]) -> Any:
    """Optuna's pruner ``name`` (``none``: never prune) with ``options`` as its keywords.

    Raises:
        TypeError: an option the pruner does not take.
    """
    import optuna

    classes = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    return classes[name](**options)


def recorded(storage: Any, name: str) -> Any:
    """The study ``name`` with the pruner its sweep file chose (as the study records it), for a
    process that reports to a trial and samples nothing.

    Raises:
        ConfigError: no such study, or one that no sweep file made.
    """
    import optuna

    for _ in range(50):  # its creator records the spec right after creating it
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(Problem("name", f"no study {name!r} in this storage; run `kiwi-optim sweep` first")) \
                from None
        document = study.user_attrs.get(ATTR_SPEC)
        if document is not None:
            pruner = document.get("pruner") or {"name": "median", "options": {}}
            return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                                     pruner=make_pruner(pruner["name"], pruner["options"]))
        time.sleep(0.1)
    raise ConfigError(Problem("name", f"the study {name!r} was not made by kiwi-optim sweep (it records no sweep "
                              f"file); name another study"))


@contextlib.contextmanager
def claim_lock(storage: str, name: str) -> Iterator[None]:
    """One process at a time counts the study's trials and asks for the next, so that the
    ``trials`` of the sweep file are never exceeded by workers asking at once: a file lock
    beside a journal, a PostgreSQL advisory lock for a database."""
    if is_journal(storage):
        fd = os.open(storage + ".claim", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
        return
    url = normalized(storage)
    if not url.startswith("postgresql"):
        yield  # MySQL and others: Optuna's own consistency only
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"kiwi-sweep:{name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()
