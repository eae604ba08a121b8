"""The process that sends the journal to MLflow while the training process goes on training.

Why a process: MLflow's store code (ORM work for every value, ~50-130 µs a value on sqlite)
holds the GIL, so a sender *thread* only moved that cost around inside the training process
(measured: no gain). A second process runs it on another core; the training process only
appends to the journal and wakes the sender with a byte on a pipe.

What keeps "nothing lost, nothing twice":

* The sender marks what MLflow holds in the journal's ``sent`` file, batch by batch, as the
  synchronous path does; the training process reads it only once the sender has exited.
* The pipe's write end closes when the training process dies, kill -9 included (and the
  sender sees itself re-parented, for the forked data-loader workers that keep a copy of the
  pipe open a few seconds longer): it then sends what is journaled and exits.
* It holds ``<journal>.lock`` (:func:`.journal.journal_lock`) until it exits. A resumed stage takes that lock before it cuts
  the journal back to its checkpoint, so no sender of a killed process sends past the cut.

Exit status: 0 when MLflow holds the whole journal, :data:`SERVER_DOWN` when a tracking server
did not answer (the training process then spools), anything else is an error of the store,
which the training process meets again when it sends the rest itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ...logs import log_to_stderr
from .journal import Journal
from .transport import SERVER_DOWN_STATUS as SERVER_DOWN
from .transport import MetricSender

logger = logging.getLogger("kiwi_pipe_optim")

POLL_S = 1.0  # how soon a sender notices its parent died while a forked worker keeps the pipe open
PROGRESS_S = 10.0  # a line this often while the end of a run waits for its sender
STALLED_AFTER_S = 120.0  # no value sent for this long: the sender is stuck, not slow
STALLED = -9  # the status stop() returns for a sender it had to kill


class Sender:
    """The training process's handle on its sender process."""

    def __init__(self, journal: Journal, uri: str, run_id: str, skip: set[tuple[str, int]],
                 lock_fd: int | None = None):
        self.journal = journal
        skip_file = None
        if skip:  # values a resumed run sent past its checkpoint: not sent twice
            skip_file = journal.path.with_name(journal.path.name + ".skip")
            skip_file.write_text(json.dumps(sorted(skip)))
        read, self._wake = os.pipe()
        # This very copy of the package, not one that the working directory may hold.
        package_root = str(Path(__file__).resolve().parents[3])
        start = f"import runpy, sys; sys.path.insert(0, {package_root!r}); runpy.run_module({__name__!r}, " \
                f"run_name='__main__', alter_sys=True)"
        command = [sys.executable, "-c", start, "--journal", str(journal.path.resolve()), "--uri", uri,
                   "--run-id", run_id, "--parent", str(os.getpid())]
        if skip_file is not None:
            command += ["--skip", str(skip_file)]
        try:
            self.process = subprocess.Popen(command, stdin=read, stdout=subprocess.DEVNULL,
                                            pass_fds=() if lock_fd is None else (lock_fd,))
        finally:
            os.close(read)
        os.set_blocking(self._wake, False)  # a busy sender must never stall a training step

    def wake(self) -> bool:
        """Tell the sender the journal grew; False when it is no longer running."""
        if self.process.poll() is not None:
            return False
        try:
            os.write(self._wake, b"\n")
        except BlockingIOError:
            pass  # it has wake-ups pending already
        except BrokenPipeError:
            return False
        return True

    def stop(self, stalled_after_s: float = STALLED_AFTER_S) -> int:
        """Let it send what is journaled, wait for it, and return its exit status. The wait is
        bounded: a sender that sends nothing for ``stalled_after_s`` is killed (the training
        process then sends the rest, :data:`STALLED`); one that sends slowly is waited for, with a
        progress line every :data:`PROGRESS_S`."""
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        sent, since = self.journal.sent, time.monotonic()
        while True:
            try:
                return self.process.wait(timeout=min(PROGRESS_S, stalled_after_s))
            except subprocess.TimeoutExpired:
                pass
            now, position = time.monotonic(), self.journal.sent
            if position != sent:
                sent, since = position, now
            left = self.journal.size - position
            if now - since >= stalled_after_s:
                self.process.kill()
                self.process.wait()
                logger.warning("the MLflow sender process sent nothing for %.0f s; stopped it, and the training "
                               "process sends the rest (%d bytes of the journal)", now - since, left)
                return STALLED
            logger.info("waiting for the MLflow sender process to send the rest of the journal (%d bytes)", left)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a stage's journal to MLflow as it grows.")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--skip")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the training process ends the run, and this one
    # goes on until it has sent what that journaled.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)  # where it shares a core with training (torch's threads), training goes first
    log_to_stderr()
    skip = {(k, s) for k, s in json.loads(Path(args.skip).read_text())} if args.skip else set()
    sending = MetricSender(args.uri, args.run_id, Journal(args.journal, args.run_id), skip)
    stopping = False
    while True:
        if not stopping:
            ready, _, _ = select.select([0], [], [], POLL_S)
            if ready and not os.read(0, 1 << 16):
                stopping = True  # the training process closed the pipe, or died
            if os.getppid() != args.parent:
                stopping = True
        ok = sending.send_all()
        if stopping:
            return 0 if ok else SERVER_DOWN


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stderr.flush()
    # Everything is committed: skip tearing down MLflow and SQLAlchemy (a few hundred ms that
    # the end of the training run would wait for).
    os._exit(status)
