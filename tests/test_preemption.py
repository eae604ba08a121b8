"""Which signals stop a run at its next step boundary (the stage's end-to-end tests send SIGTERM
to a real run; here, the signal handling itself)."""

import os
import signal

from kiwi_pipe_optim.integrations.stage.preemption import Preempted, StopRequest


def test_slurms_sigusr1_stops_the_run_and_still_reaches_the_handler_installed_before():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))  # as Lightning's requeue
    stop = StopRequest()
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1 and seen == [signal.SIGUSR1]
    finally:
        stop.restore()
        signal.signal(signal.SIGUSR1, previous)
    stopped = Preempted(signal.SIGUSR1, 9)
    assert stopped.code == 128 + signal.SIGUSR1 and str(stopped).startswith("stopped by SIGUSR1 at step 9")


def test_the_first_sigterm_is_kept_and_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before
