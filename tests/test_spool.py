"""`kiwi-optim send-spool`: what a run kept while its server was down reaches a real store;
a missing or damaged spool file, or a server that does not answer, is one line and exit 2."""

import json
import subprocess

from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.tracking.run import MlflowRun
from tests.conftest import BIN
from tests.e2e.conftest import free_port


def send(*args):
    return subprocess.run([str(BIN / "kiwi-optim"), "send-spool", *map(str, args)], capture_output=True, text=True)


def test_spool_goes_to_the_run_and_ends_it(tmp_path, sqlite_uri):
    uri = sqlite_uri
    run = MlflowRun(uri, "kiwi-pipe-optim", "cut-off", {})
    run.journal.append_rows([(("lr/default",), [0.5], 0, 0)])
    run.send()
    spool = tmp_path / f"{run.run_id}.jsonl"
    spool.write_text("\n".join(json.dumps(r) for r in [
        {"run_id": run.run_id, "uri": "http://127.0.0.1:1"},  # the server the run was logging to
        {"params": {"optimizer.class_name": "adamw"}},
        {"metrics": [["lr/default", 0.25, 1000, 1], ["lr/default", 0.125, 2000, 2]]},
        {"status": "FINISHED"},
    ]) + "\n")
    result = send(spool, "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent 2 values of run {run.run_id} from {spool}"
    stored = MlflowClient(uri).get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"optimizer.class_name": "adamw"}
    history = MlflowClient(uri).get_metric_history(run.run_id, "lr/default")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.25), (2, 0.125)]
    assert not spool.exists()


def test_missing_damaged_and_unreachable(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = send(missing)
    assert (result.returncode, result.stderr) == (
        2, f"{missing}: cannot read it (FileNotFoundError); give a file the stage wrote to .kiwi-pipe-optim/spool/\n")

    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"run_id": "abc", "uri": "sqlite:///x.db"}\n{"metrics": [[\n')
    result = send(damaged)
    assert (result.returncode, result.stderr) == (
        2, f"{damaged}:2: not a spool record ('{{\"metrics\": [['); give a file the stage wrote to "
           ".kiwi-pipe-optim/spool/\n")

    down = tmp_path / "down.jsonl"
    uri = f"http://127.0.0.1:{free_port()}"
    down.write_text(json.dumps({"run_id": "abc", "uri": uri}) + "\n")
    result = send(down)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{down}:1: uri: cannot reach the MLflow server at {uri} (")
    assert result.stderr.endswith("or give the server's URI with --tracking-uri\n")
    assert down.exists()


def test_a_final_send_mlflow_refuses_fails_the_run_and_keeps_every_value(tmp_path, sqlite_uri, monkeypatch):
    """The one fault made up here: MLflow refusing a batch (names it refuses are mapped before
    they are journaled, so no logged value makes it refuse any more)."""
    import pytest
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient as Client

    from kiwi_pipe_optim.integrations.tracking.run import TrackingError

    run = MlflowRun(sqlite_uri, "kiwi-pipe-optim", "refused", {}, spool_dir=tmp_path / "spool")
    run.journal.append_rows([(("lr/default",), [0.5], 1000, 0), (("lr/default",), [0.25], 2000, 1)])
    real = Client.log_batch

    def refuse(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise MlflowException("Invalid value for metric", error_code="INVALID_PARAMETER_VALUE")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(Client, "log_batch", refuse)
    with pytest.raises(TrackingError, match="MLflow refused values of run .* the run is marked FAILED"):
        run.end("FINISHED")
    monkeypatch.setattr(Client, "log_batch", real)
    assert MlflowClient(sqlite_uri).get_run(run.run_id).info.status == "FAILED"
    assert run.journal.path.exists()  # nothing deleted
    spool = tmp_path / "spool" / f"{run.run_id}.jsonl"
    result = send(spool, "--tracking-uri", sqlite_uri)
    assert result.returncode == 0, result.stderr
    assert MlflowClient(sqlite_uri).get_run(run.run_id).info.status == "FINISHED"
    history = MlflowClient(sqlite_uri).get_metric_history(run.run_id, "lr/default")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.25)]
