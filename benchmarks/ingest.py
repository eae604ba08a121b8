"""Values per second into a team tracking server: our journal and sender against MLflow's own
``log_metric`` and ``log_batch`` and Lightning's ``MLFlowLogger``, on ``mlflow server`` over
sqlite and over PostgreSQL, measured side by side in one run.

    python benchmarks/ingest.py [--values 10000] [--clients 4]

Every way sends the same rows: one step's values of 8 param groups' learning rates and a loss
(9 values a step), each way into a run of its own. A figure is the values the server holds
divided by the wall time until it holds them (a send that returns before the server has stored
its values would not count). The sender process's own start (its imports, about a second) is
inside its figure, as it is inside a run's. ``--clients`` processes at once give the aggregate a team server
takes from many runs. From that aggregate, the capacity line says how many trials of G groups
at S steps per second one such server carries.

PostgreSQL is Debian's, started in a temporary directory (see ``tests/e2e/servers.py``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = tuple(f"lr/group{i}" for i in range(8)) + ("train_loss",)
SERVER_WORKERS = 2


def rows(steps: int) -> list[tuple[int, dict[str, float]]]:
    return [(step, {key: 1.0 / (step + 1 + i) for i, key in enumerate(KEYS)}) for step in range(steps)]


# -- the ways to send: each sends `steps` steps of KEYS into a new run of `uri` -----------------

def via_log_metric(uri: str, steps: int) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(_experiment(client, "log_metric"))
    now = int(time.time() * 1000)
    for step, values in rows(steps):
        for key, value in values.items():
            client.log_metric(run.info.run_id, key, value, timestamp=now, step=step)
    client.set_terminated(run.info.run_id)
    return steps * len(KEYS)


def via_log_batch(size: int, uri: str, steps: int) -> int:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(_experiment(client, f"log_batch_{size}"))
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for step, values in rows(steps) for k, v in values.items()]
    for i in range(0, len(metrics), size):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + size])
    client.set_terminated(run.info.run_id)
    return len(metrics)


def via_lightning(uri: str, steps: int) -> int:
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=uri)
    for step, values in rows(steps):
        logger.log_metrics(values, step=step)  # what a Trainer calls at every logged step
    logger.finalize("success")
    return steps * len(KEYS)


def via_ours(sender: bool, uri: str, steps: int) -> int:
    from kiwi_pipe_optim.integrations.tracking.run import MlflowRun

    run = MlflowRun(uri, "ours-sender" if sender else "ours", None, {})
    if sender:
        run.start_sender()
    now = int(time.time() * 1000)
    batch = []
    for step, values in rows(steps):
        batch.append((KEYS, list(values.values()), now, step))
        if len(batch) == 50:  # the logger journals and sends every flush interval, not every step
            run.journal.append_rows(batch)
            run.send()
            batch = []
    run.journal.append_rows(batch)
    run.end("FINISHED")  # returns once the server holds every value
    return steps * len(KEYS)


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another client made it first
        return client.get_experiment_by_name(name).experiment_id


# -- measuring ------------------------------------------------------------------------------------

def _one(way: Callable[[str, int], int], uri: str, steps: int, ready, go, results) -> None:
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    sys.stdout = open(os.devnull, "w")  # MLflow prints a "View run" line per run it ends
    import lightning.pytorch.loggers  # noqa: F401  (imports are not what is measured)
    import mlflow.tracking  # noqa: F401

    import kiwi_pipe_optim.integrations.tracking.run  # noqa: F401

    ready.put(os.getpid())
    go.wait()
    started = time.time()
    sent = way(uri, steps)
    results.put((sent, started, time.time()))


def rate(way: Callable[[str, int], int], uri: str, steps: int, clients: int = 1) -> float:
    """Values a second stored, ``clients`` processes sending at once: each process imports first,
    then all start together; the figure is every value sent over the time from the first start to
    the last end."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [context.Process(target=_one, args=(way, uri, steps, ready, go, results)) for _ in range(clients)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    go.set()
    done = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    return sum(sent for sent, _, _ in done) / (max(end for _, _, end in done) - min(start for _, start, _ in done))


def start_server(backend: str, where: Path) -> tuple[subprocess.Popen, str]:
    from tests.e2e.servers import free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", str(SERVER_WORKERS)],
                              cwd=where, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return server, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server over {backend} did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=9000, help="values each way sends (log_metric: a tenth)")
    parser.add_argument("--clients", type=int, default=4, help="processes at once for the aggregate figures")
    parser.add_argument("--groups", type=int, default=8, help="param groups of a trial, for the capacity line")
    parser.add_argument("--steps-per-second", type=float, default=30.0, help="a trial's steps/s, for capacity")
    args = parser.parse_args()
    from tests.e2e.servers import Postgres, pg_tool

    steps = args.values // len(KEYS)
    ways = {"MLflow log_metric (synchronous)": (via_log_metric, max(1, steps // 10)),
            "MLflow log_batch, 10 a call": (functools.partial(via_log_batch, 10), steps),
            "MLflow log_batch, 1000 a call": (functools.partial(via_log_batch, 1000), steps),
            "Lightning MLFlowLogger": (via_lightning, steps),
            "ours, in the training process": (functools.partial(via_ours, False), steps),
            "ours, sender process": (functools.partial(via_ours, True), steps)}
    backends: dict[str, str] = {}
    postgres = None
    with tempfile.TemporaryDirectory() as name:
        where = Path(name)
        backends["sqlite"] = f"sqlite:///{where / 'ingest.db'}"
        if pg_tool("initdb") is not None:
            postgres = Postgres()
            postgres.start()
            backends["PostgreSQL"] = postgres.uri
        else:
            print("PostgreSQL is not installed: sqlite only", file=sys.stderr)
        servers = {}
        try:
            for label, backend in backends.items():
                servers[label] = start_server(backend, where)
            table: dict[str, dict[str, float]] = {}
            for way, (send, n) in ways.items():
                for label, (_, uri) in servers.items():  # interleaved: the backends see the same machine
                    table.setdefault(way, {})[label] = rate(send, uri, n)
                    print(f"  {way} into {label}: {table[way][label]:,.0f} values/s", file=sys.stderr)
            aggregate = {}
            for way in ("MLflow log_batch, 10 a call", "ours, in the training process"):
                send, n = ways[way]
                for label, (_, uri) in servers.items():
                    aggregate.setdefault(way, {})[label] = rate(send, uri, n, args.clients)
        finally:
            for server, _ in servers.values():
                os.killpg(server.pid, 15)
                server.wait(timeout=30)
            if postgres is not None:
                postgres.stop()
    labels = list(backends)
    print(f"values/s stored by mlflow server ({SERVER_WORKERS} workers), {os.cpu_count()} cores, "
          f"{len(KEYS)} values a step")
    print(f"{'':44}" + "".join(f"{label:>14}" for label in labels))
    for way, by in table.items():
        print(f"{way:44}" + "".join(f"{by[label]:>14,.0f}" for label in labels))
    for way, by in aggregate.items():
        print(f"{way + f', {args.clients} clients':44}" + "".join(f"{by[label]:>14,.0f}" for label in labels))
    ours = table["ours, in the training process"]
    for label in labels:
        print(f"ours / log_batch of 10 ({label}): {ours[label] / table['MLflow log_batch, 10 a call'][label]:.1f}x; "
              f"ours / MLFlowLogger: {ours[label] / table['Lightning MLFlowLogger'][label]:.1f}x")
    per_trial = (args.groups + 4) * args.steps_per_second  # lr per group, train_loss, kiwi/train_loss, epoch, val
    for label in labels:
        carried = aggregate["ours, in the training process"][label] / per_trial
        print(f"capacity ({label}): {carried:.0f} trials of {args.groups} groups at {args.steps_per_second:g} steps/s "
              f"({per_trial:.0f} values/s each) at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
