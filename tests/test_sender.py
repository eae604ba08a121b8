"""Who sends to MLflow: the training process, or a sender process once a run proves long."""

import time

import lightning.pytorch as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from kiwi_pipe_optim.integrations.lightning import logger as klogger
from kiwi_pipe_optim.integrations.logger import kiwi_logger
from kiwi_pipe_optim.integrations.tracking.run import MlflowRun


def pace(log, expected, done, seconds_per_step):
    """A logger that has logged ``done`` steps at ``seconds_per_step`` of a run of ``expected``."""
    log.expect_steps(expected)
    log._start = (0, time.monotonic() - done * seconds_per_step)
    log._step = done
    return log._sender_pays()


def test_auto_starts_a_sender_only_when_the_run_has_long_to_go():
    log = kiwi_logger(L)
    assert pace(log, expected=1000, done=100, seconds_per_step=0.1)  # 90 s left
    assert not pace(log, expected=1000, done=990, seconds_per_step=0.1)  # 1 s left
    assert not pace(log, expected=200_000, done=100, seconds_per_step=0.001)  # too early to judge
    assert not pace(log, expected=200, done=1500, seconds_per_step=0.001)  # past its expected end
    assert pace(log, expected=None, done=100, seconds_per_step=0.02)  # no known end (an iterable data set)
    pace_of = klogger.SENDER_AFTER_S / 2_000  # 1,000 steps done in half the threshold (judged: past 1 s)
    assert pace(log, expected=1000 + 2500, done=1000, seconds_per_step=pace_of)  # 1.25x the threshold left
    assert not pace(log, expected=1000 + 1600, done=1000, seconds_per_step=pace_of)  # 0.8x


@pytest.mark.parametrize("mode, expected", [("inline", False), ("process", True)])
def test_inline_and_process_are_what_they_say(mode, expected):
    log = kiwi_logger(L, sender=mode)
    assert pace(log, expected=1000, done=100, seconds_per_step=0.1) is expected
    assert pace(log, expected=1000, done=999, seconds_per_step=0.002) is expected


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_every_value_reaches_the_run_once_whoever_sends(sqlite_uri, mode):
    uri = sqlite_uri
    tracker = MlflowRun(uri, "exp", "run", {})
    log = kiwi_logger(L, tracker=tracker, flush_interval_s=0, sender=mode)
    assert tracker.background is (mode == "process")
    for step in range(300):
        log.log_metrics({"lr/default": 0.1 / (step + 1), "train_loss": torch.tensor(float(step))}, step=step)
        log.log_metrics({"lr/default": -1.0}, step=step)  # the first value at a step wins
    log.finalize("success")
    tracker.end("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    lr = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "lr/default"))
    loss = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train_loss"))
    assert lr == [(s, 0.1 / (s + 1)) for s in range(300)]
    assert loss == [(s, float(s)) for s in range(300)]
    assert not tracker.background  # the sender was waited for


def test_a_sender_that_dies_is_not_started_again_and_training_sends_the_rest(sqlite_uri):
    import os
    import signal

    uri = sqlite_uri
    tracker = MlflowRun(uri, "exp", "run", {})
    log = kiwi_logger(L, tracker=tracker, flush_interval_s=0, sender="auto")
    log.expect_steps(None)
    log._start = (0, time.monotonic() - 5)  # long under way, no known end: the next send starts a sender
    for step in range(50):
        log.log_metrics({"lr/default": float(step)}, step=step)
    assert tracker.background
    deadline = time.monotonic() + 60
    while tracker.journal.sent < tracker.journal.size:  # the sender has sent all, and idles
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(tracker._sender.process.pid, signal.SIGKILL)
    tracker._sender.process.wait()
    for step in range(50, 100):
        log.log_metrics({"lr/default": float(step)}, step=step)
    assert not tracker.background and tracker.sender_tried  # this process sends from now on
    log.finalize("success")
    tracker.end("FINISHED")
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "lr/default")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(100)]


def test_a_sender_that_stops_answering_is_not_waited_for_forever(sqlite_uri, monkeypatch):
    """SIGSTOP: alive, sending nothing. The end of the run waits a bounded time, kills it, and
    sends the rest itself; every value reaches the run once."""
    import os
    import signal

    from kiwi_pipe_optim.integrations.tracking import sender

    monkeypatch.setattr(sender, "STALLED_AFTER_S", 2.0)
    monkeypatch.setattr(sender.Sender.stop, "__defaults__", (2.0,))
    tracker = MlflowRun(sqlite_uri, "exp", "run", {})
    log = kiwi_logger(L, tracker=tracker, flush_interval_s=0, sender="process")
    for step in range(20):
        log.log_metrics({"lr/default": float(step)}, step=step)
    os.kill(tracker._sender.process.pid, signal.SIGSTOP)
    for step in range(20, 40):
        log.log_metrics({"lr/default": float(step)}, step=step)
    started = time.monotonic()
    log.finalize("success")
    tracker.end("FINISHED")
    assert time.monotonic() - started < 30
    client = MlflowClient(sqlite_uri)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    history = client.get_metric_history(tracker.run_id, "lr/default")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(40)]
