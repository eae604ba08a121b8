"""The sqlite store's failure modes, made real: another connection holding the write lock."""

import sqlite3

import pytest

from kiwi_pipe_optim import ConfigError
from kiwi_pipe_optim.integrations.tracking import run as kmlflow
from kiwi_pipe_optim.integrations.tracking import store as kstore


@pytest.fixture
def store(tmp_path, sqlite_uri):
    uri = sqlite_uri
    run = kmlflow.MlflowRun(uri, "exp", "first", {})
    run.end("KILLED")
    return tmp_path / "mlflow.db", uri, run


def hold_lock(db):
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_an_error_other_than_the_lock_is_not_retried(store):
    db, uri, run = store
    calls = []

    def get_missing_run():
        calls.append(1)
        return run.client.get_run("0" * 32)

    with pytest.raises(Exception) as missing:
        kstore.retrying(get_missing_run)
    assert len(calls) == 1 and not kstore.is_lock_error(missing.value)


def test_a_run_that_cannot_be_reopened_is_refused_not_forked(store, monkeypatch):
    """A store locked by another process (MLflow waits 20 s for it) refuses the resume in one
    line; a deleted run is replaced by a new one."""
    db, uri, run = store
    monkeypatch.setattr(kstore, "LOCK_ATTEMPTS", 1)
    holder = hold_lock(db)
    try:
        with pytest.raises(ConfigError, match=rf"^checkpoint: cannot reopen the MLflow run {run.run_id} the "
                           r"checkpoint logs to, in sqlite:///.*; fix the store or its access "
                           r"and run again, or set checkpoint.resume: false to start afresh$") as refused:
            run._reopen(run.run_id, {})
    finally:
        holder.close()
    assert kstore.is_lock_error(refused.value.__cause__)
    run.client.delete_run(run.run_id)
    assert run._reopen(run.run_id, {}) is None
    again = kmlflow.MlflowRun(uri, "exp", "second", {}, resume_run_id="f" * 32)
    assert again.run_id != run.run_id and again.run_name == "second"
    again.end("FINISHED")
