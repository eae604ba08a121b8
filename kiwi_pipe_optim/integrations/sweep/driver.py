"""Running a sweep: Optuna's ask and tell around ``dvc exp run``, ``jobs`` at a time.

Each trial is a DVC experiment named ``<study>-<number>``, run in its own copy of the workspace
(:mod:`.copies`) with the trial's values as ``-S key=value``, so ``dvc exp show`` lists it and
``dvc exp apply`` brings it back. Its MLflow run is a child of the sweep's parent run. Each
``dvc exp run`` leads a process group of its own: what its stage leaves running once it exits
is stopped before the copy goes.

The study is the one record every worker trusts. A trial is claimed under a lock (so ``trials``
is never exceeded, whatever the number of workers and machines) and carries who runs it: this
machine's driver and ``dvc exp run`` processes (pid and start time), and a heartbeat for the
others. A driver that starts settles what dead workers left: an experiment that DVC recorded is
told as it ended; one that did not finish is failed, its MLflow run marked KILLED, and its values
asked again under a new number, so no trial number runs twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ... import processes
from ...errors import ConfigError, Problem
from ...params_file import read_params
from . import copies
from .spec import SweepSpec, in_params
from ..study.storage import ATTR_PARENT, claim_lock, open_storage
from .study import cli_value, default_storage, load, suggest
from ..study.trial import (ATTR_PRUNED, ATTR_RUN, ENV_METRIC, ENV_PARENT_RUN, ENV_STORAGE, ENV_STUDY, ENV_TRIAL_ID,
                    ENV_TRIAL_NUMBER)

ATTR_WORKER = "kiwi.worker"  # host:pid:start of the driver running the trial
ATTR_DVC = "kiwi.dvc_process"  # pid:start of its `dvc exp run`
ATTR_HEARTBEAT = "kiwi.heartbeat"
ATTR_EXP = "kiwi.dvc_exp"
ATTR_COPY = "kiwi.workspace_copy"  # the trial's clone of the workspace, on its worker's machine
ATTR_FAILURE = "kiwi.failure"
ATTR_RETRY_OF = "kiwi.retry_of"
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S  # a worker on another machine silent this long is dead
MAX_FAILURES_IN_A_ROW = 3


def this_worker() -> str:
    start = processes.this(os.getpid())
    return f"{socket.gethostname()}:{os.getpid()}:{start[1] if start else ''}"


def _process(text: str | None) -> processes.Process | None:
    """``pid:start`` as a process."""
    pid, _, start = (text or "").partition(":")
    return (int(pid), start) if pid.isdigit() else None


def _is_dead_here(worker: str) -> bool | None:
    """Whether the driver ``worker`` has stopped; None when it runs on another machine."""
    host, _, rest = worker.partition(":")
    if host != socket.gethostname():
        return None
    return processes.is_gone(_process(rest))


@dataclass
class Outcome:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    note: str = ""


@dataclass
class Sweep:
    """One sweep of one repository: its spec, study and parent run, and how to run a trial."""

    spec: SweepSpec
    root: Path
    params_path: Path
    storage_url: str
    storage: Any
    study: Any
    parent: Any = None  # ParentRun, or None with MLflow off
    say: Callable[[str], None] = print
    worker: str = field(default_factory=this_worker)
    cache: str = ""  # the repository's DVC cache, shared by every trial's copy
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[str] = field(default_factory=list)
    _running: dict[int, subprocess.Popen] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    # --- claiming -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        from optuna.trial import TrialState

        found = {s.name: 0 for s in TrialState}
        for t in self.study.get_trials(deepcopy=False):
            found[t.state.name] += 1
        return found

    def claim(self) -> tuple[Any, dict[str, Any]] | None:
        """The next trial, with its values, or None when the study has all it needs."""
        with self._lock, claim_lock(self.storage_url, self.spec.name):
            n = self.counts()
            if n["WAITING"] == 0 and n["COMPLETE"] + n["PRUNED"] + n["RUNNING"] >= self.spec.trials:
                return None
            trial = self.study.ask()
            values = suggest(trial, self.spec)
            trial.set_user_attr(ATTR_WORKER, self.worker)
            trial.set_user_attr(ATTR_EXP, self.exp_name(trial.number))
            trial.set_user_attr(ATTR_HEARTBEAT, time.time())
            return trial, values

    def exp_name(self, number: int) -> str:
        return f"{self.spec.name}-{number}"

    # --- running --------------------------------------------------------------------------
    def command(self, name: str, values: dict[str, Any]) -> list[str]:
        params, _ = read_params(self.params_path)
        sets: list[str] = []
        for key, value in values.items():
            prefix = "" if in_params(params, key) else "+"  # a field the file does not set yet
            sets += ["-S", f"{prefix}{key}={cli_value(value)}"]
        return [sys.executable, "-m", "dvc", "exp", "run", "-n", name, *sets]

    def run_trial(self, trial: Any, values: dict[str, Any]) -> Outcome:
        name = self.exp_name(trial.number)
        log_path = self.root / ".kiwi-pipe-optim" / "sweeps" / self.spec.name / f"trial-{trial.number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, ENV_STORAGE: self.storage_url, ENV_STUDY: self.spec.name,
               ENV_TRIAL_ID: str(trial._trial_id), ENV_TRIAL_NUMBER: str(trial.number), ENV_METRIC: self.spec.metric,
               ENV_PARENT_RUN: self.parent.run_id if self.parent else "", "DVC_NO_ANALYTICS": "1"}
        if self.parent is not None:  # the repository's store, not one in the copy
            env["MLFLOW_TRACKING_URI"] = self.parent.uri
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the stage's kiwi-optim
        shown = ", ".join(f"{k}={cli_value(v)}" for k, v in values.items())
        self.say(f"trial {trial.number} ({name}): {shown}")
        started = time.time()
        try:
            copy = copies.make(self.root, name, self.cache)
        except (OSError, RuntimeError) as e:  # a full disk, a git that refuses: this trial fails, said in one line
            self.study.tell(trial.number, state=optuna_state("FAIL"))
            self._failures.append(f"trial {trial.number}: its copy of the workspace could not be made ({e})")
            self.say(self._failures[-1])
            return Outcome(trial.number, "FAIL", note=str(e))
        trial.set_user_attr(ATTR_COPY, str(copy))
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(self.command(name, values), cwd=copy, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self._running[trial.number] = proc
            found = processes.this(proc.pid)
            if found:
                trial.set_user_attr(ATTR_DVC, f"{found[0]}:{found[1]}")
            while True:
                try:
                    code = proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
            self._running.pop(trial.number, None)
            if processes.end_group(proc.pid):
                self.say(f"trial {trial.number} ({name}): its stage outlived its dvc exp run (a shell that died "
                         f"under it) and was stopped")
            outcome = self.settle(trial.number, code, log_path)
        finally:
            self._running.pop(trial.number, None)
            copies.remove(copy)
        took = time.time() - started
        value = "" if outcome.value is None else f" {self.spec.metric}={outcome.value:.6g}"
        self.say(f"trial {trial.number} ({name}): {outcome.state}{value} in {took:.0f} s{outcome.note}"
                 f"{self.progress()}")
        return outcome

    def progress(self) -> str:
        n = self.counts()
        done = n["COMPLETE"] + n["PRUNED"]
        best = ""
        with contextlib.suppress(ValueError):
            b = self.study.best_trial
            best = f"; best {self.spec.metric}={b.value:.6g} (trial {b.number})"
        return f" [{done}/{self.spec.trials} done{best}]"

    # --- settling -------------------------------------------------------------------------
    def settle(self, number: int, code: int | None, log_path: Path | None = None) -> Outcome:
        """Tell the study how trial ``number`` ended (``code``: its ``dvc exp run``'s status,
        None when it ran under a driver that stopped) and tag its MLflow run alike."""
        frozen = self.study.get_trials(deepcopy=False)[number]
        attrs = frozen.user_attrs
        name = attrs.get(ATTR_EXP) or self.exp_name(number)
        ref = None
        if code in (0, None):  # fetched from its copy (once more after a driver that stopped)
            copy = attrs.get(ATTR_COPY)
            ref = (copies.collect(self.root, Path(copy), name) if copy else None) or experiment_ref(self.root, name)
        if ref is not None and attrs.get(ATTR_PRUNED) is not None:
            outcome = Outcome(number, "PRUNED", note=f" at step {attrs[ATTR_PRUNED]}")
        elif ref is not None:
            value = self.metric_of(ref, attrs.get(ATTR_RUN))
            cached = "" if attrs.get(ATTR_RUN) else " (DVC restored it from its run cache: these values ran before)"
            outcome = (Outcome(number, "COMPLETE", value, cached) if value is not None else
                       Outcome(number, "FAIL", note=f": {self.spec.metric!r} is neither in the experiment's metrics "
                                                    f"nor logged to its MLflow run"))
        else:
            why = _last_line(log_path) if log_path and code is not None else "its run did not finish"
            outcome = Outcome(number, "FAIL", note=f": {why}")
        killed = (code is None or code < 0 or code in (130, 137, 143) or self.stopping.is_set()
                  # a signal, told by DVC directly or through the shell it runs the stage in
                  or re.search(r"exited with (-\d+|130|137|143)\b", outcome.note))
        # a run that was stopped before DVC recorded it, not one that went wrong (that would fail again)
        retry = outcome.state == "FAIL" and ref is None and bool(killed)
        with self._lock:
            if outcome.state == "FAIL":
                with contextlib.suppress(Exception):
                    self.storage.set_trial_user_attr(frozen._trial_id, ATTR_FAILURE, outcome.note[2:][:500])
            self.study.tell(number, outcome.value, state=optuna_state(outcome.state), skip_if_finished=True)
            if retry:  # asked again under a new number: this one never runs twice
                self.study.enqueue_trial(frozen.params, user_attrs={ATTR_RETRY_OF: number})
                outcome.note += "; its values are asked again"
            elif outcome.state == "FAIL":
                self._failures.append(f"trial {number}{outcome.note}")
            else:
                self._failures.clear()
        if self.parent is not None and attrs.get(ATTR_RUN):
            self.parent.close_child(attrs[ATTR_RUN], outcome.state)
        return outcome

    def metric_of(self, ref: str, run_id: str | None) -> float | None:
        for path in metrics_files(self.root):
            shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.root, capture_output=True, text=True)
            if shown.returncode == 0:
                with contextlib.suppress(ValueError, TypeError):
                    found = _dotted(json.loads(shown.stdout), self.spec.metric)
                    if found is not None:
                        return float(found)
        if self.parent is not None and run_id:
            return self.parent.metric_of(run_id, self.spec.metric)
        return None

    def recover(self) -> None:
        """Settle the trials that workers which stopped left RUNNING."""
        for frozen in self.study.get_trials(deepcopy=False):
            if frozen.state.name != "RUNNING":
                continue
            worker = frozen.user_attrs.get(ATTR_WORKER, "")
            dead = _is_dead_here(worker) if worker else None
            if dead is False:
                continue  # its driver runs here still
            if dead is None:
                beat = frozen.user_attrs.get(ATTR_HEARTBEAT) or (frozen.datetime_start.timestamp()
                                                                  if frozen.datetime_start else 0)
                if time.time() - float(beat) < STALE_S:
                    continue  # alive on another machine
                self.say(f"trial {frozen.number}: its worker {worker or '(unknown)'} is silent; the trial is failed")
                self.settle(frozen.number, -9)
                continue
            dvc = _process(frozen.user_attrs.get(ATTR_DVC))
            if dvc is not None and not processes.is_gone(dvc):
                self.say(f"trial {frozen.number}: waiting for its dvc exp run (pid {dvc[0]}), left running by a "
                         f"driver that stopped")
                while not processes.is_gone(dvc):
                    time.sleep(0.5)
                processes.end_group(dvc[0])  # seen alive just now: its group is still its own
            outcome = self.settle(frozen.number, None)
            copies.remove(Path(frozen.user_attrs[ATTR_COPY]) if frozen.user_attrs.get(ATTR_COPY) else None)
            value = "" if outcome.value is None else f" {self.spec.metric}={outcome.value:.6g}"
            self.say(f"trial {frozen.number} (left by a driver that stopped): {outcome.state}{value}{outcome.note}")

    # --- the loop -------------------------------------------------------------------------
    def work(self) -> None:
        while not self.stopping.is_set():
            if len(self._failures) >= MAX_FAILURES_IN_A_ROW:
                return
            claimed = self.claim()
            if claimed is None:
                return
            self.run_trial(*claimed)

    def run(self, jobs: int) -> int:
        self.recover()
        threads = [threading.Thread(target=self._work_logged, name=f"sweep-{i}", daemon=True) for i in range(jobs)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            self.stopping.set()
            for proc in list(self._running.values()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGINT)  # its own group: the terminal's Ctrl-C does not reach it
            for t in threads:
                t.join()
            if self.parent is not None:
                self.parent.end("KILLED")
            self.say("interrupted; the trials that were running are failed and will be asked again: run the same "
                     "command to go on")
            return 130
        return self.finish()

    def _work_logged(self) -> None:
        try:
            self.work()
        except Exception as e:  # noqa: BLE001 (one worker's error stops the sweep, said in one line)
            self._failures.extend([f"the sweep's worker stopped: {type(e).__name__}: {e}"] * MAX_FAILURES_IN_A_ROW)
            self.stopping.set()

    def finish(self) -> int:
        n = self.counts()
        done = n["COMPLETE"] + n["PRUNED"]
        if self.parent is not None:
            self.parent.record_best(self.study, self.spec)
        if len(self._failures) >= MAX_FAILURES_IN_A_ROW:
            if self.parent is not None:
                self.parent.end("FAILED")
            self.say(f"the sweep stops after {len(self._failures)} failed trials in a row; the last: "
                     f"{self._failures[-1]} (its log: .kiwi-pipe-optim/sweeps/{self.spec.name}/)")
            return 1
        if n["RUNNING"] or n["WAITING"]:
            self.say(f"{n['RUNNING'] + n['WAITING']} trials are still running elsewhere; the worker that ends the "
                     f"last closes the sweep")
            return 0
        if self.parent is not None:
            self.parent.end("FINISHED")
        self.say(f"the study {self.spec.name} has its {done} trials")
        return 0


def optuna_state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def experiment_ref(root: Path, name: str) -> str | None:
    """The git ref of the DVC experiment ``name``, if DVC recorded it."""
    listed = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=root,
                            capture_output=True, text=True)
    for ref in listed.stdout.split():
        if ref.rsplit("/", 1)[-1] == name:
            return ref
    return None


def metrics_files(root: Path) -> list[str]:
    """The metrics files of the pipeline's stages (``dvc.yaml``), ``metrics.json`` by default."""
    import yaml

    found: list[str] = []
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        for stage in (yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}).values():
            for entry in stage.get("metrics") or []:
                found.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return found or ["metrics.json"]


def _dotted(document: Any, key: str) -> Any:
    if isinstance(document, dict) and key in document:
        return document[key]
    head, _, rest = key.partition(".")
    if rest and isinstance(document, dict) and head in document:
        return _dotted(document[head], rest)
    return None


def _last_line(log_path: Path | None) -> str:
    """The line of a trial's log that says why it failed (DVC's ``ERROR`` line, else the last)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, AttributeError):
        return "its log cannot be read"
    if not lines:
        return "no output"
    dvc = min((i for i, line in enumerate(lines) if line.startswith("ERROR:")), default=None)
    if dvc is None:
        return lines[-1][:300]
    said = next((line for line in reversed(lines[:dvc]) if not line.startswith(("Running stage", "> ", "ERROR:"))),
                None)  # the stage's own last word, before DVC's
    return (f"{said} ({lines[dvc]})" if said else lines[dvc])[:400]


def start(spec: SweepSpec, params_path: Path, storage: str | None, say: Callable[[str], None],
          reopen: bool = True) -> Sweep:
    """The sweep of the repository at the current directory: its study opened (or created),
    its parent MLflow run started or reopened.

    Raises:
        ConfigError: not a DVC repository with a git commit, an experiment name already taken
            by another study, the storage, or the MLflow store.
    """
    import optuna

    root = Path.cwd().resolve()
    if not (root / ".dvc").is_dir() or subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                                                       capture_output=True).returncode != 0:
        raise ConfigError(Problem("", "kiwi-optim sweep runs in a DVC repository with at least one git commit "
                                      "(git init && dvc init && git commit); run it at the repository's root"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or default_storage(root, spec.name)
    opened = open_storage(url)
    new = spec.name not in optuna.study.get_all_study_names(opened)
    if new and not reopen:
        raise ConfigError(Problem("name", f"no study {spec.name!r} in {url} yet; run `kiwi-optim sweep` first (with "
                                  f"the same --storage)"))
    if new:
        taken = experiment_ref(root, f"{spec.name}-0")
        if taken is not None:
            raise ConfigError(Problem("name", f"DVC experiments named {spec.name}-N exist already (from an earlier "
                                      f"study); name this sweep differently, or remove them: dvc exp remove "
                                      f"$(dvc exp ls --names-only | grep '^{spec.name}-')"))
    study = load(opened, spec.name, spec)
    sweep = Sweep(spec, root, params_path, url, opened, study, say=say, cache=copies.cache_dir(root))
    from .parent import parent_run

    sweep.parent = parent_run(sweep, ATTR_PARENT, reopen)
    return sweep
