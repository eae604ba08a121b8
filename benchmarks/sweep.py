"""What ``kiwi-optim sweep`` costs per trial, against the same experiments run by hand, and what
``-j 2`` gains over ``-j 1``, measured side by side in one run.

    python benchmarks/sweep.py [--trials 4] [--rounds 1]

Three ways run the same trials (the values a seeded random sampler draws) on the bundled task,
each in a fresh copy of one repository:

- by hand: ``dvc exp run --temp -n NAME -S ...`` for each trial, one after the other;
- ``kiwi-optim sweep`` with ``-j 1``;
- ``kiwi-optim sweep`` with ``-j 2``.

A figure is wall seconds per trial; the ratios are the sweep's against by hand (target <= 1.1)
and ``-j 2`` against ``-j 1`` (trials that spend most of their time starting Python and DVC leave
room on a second core). Rounds alternate the ways, so drift of a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = {"optimizer.learning_rate": {"log_uniform": [1.0e-3, 1.0e-1]},
         "optimizer.warmup_steps": {"uniform": [0.0, 0.2]}}


def repository(where: Path) -> Path:
    from tests.e2e.conftest import make_repo

    return make_repo(where)


def values(trials: int) -> list[dict[str, float]]:
    import optuna

    from kiwi_pipe_optim.integrations.sweep.spec import SweepSpec
    from kiwi_pipe_optim.integrations.sweep.study import suggest

    spec = SweepSpec.model_validate({"name": "b", "metric": "val_loss", "trials": trials, "space": SPACE})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [suggest(study.ask(), spec) for _ in range(trials)]


def by_hand(repo: Path, drawn: list[dict[str, float]]) -> float:
    from kiwi_pipe_optim.integrations.sweep.study import cli_value
    from tests.e2e.conftest import sh

    started = time.perf_counter()
    for i, trial in enumerate(drawn):
        sets = [arg for k, v in trial.items() for arg in ("-S", f"{k}={cli_value(v)}")]
        sh(["dvc", "exp", "run", "--temp", "-n", f"hand-{i}", *sets], repo, timeout=600)
    return (time.perf_counter() - started) / len(drawn)


def swept(repo: Path, trials: int, jobs: int) -> float:
    from tests.e2e.conftest import sh

    (repo / "sweep.yaml").write_text(yaml.safe_dump({"name": f"j{jobs}", "metric": "val_loss", "trials": trials,
                                                     "sampler": "random", "seed": 0, "pruner": "none",
                                                     "space": SPACE}))
    started = time.perf_counter()
    sh(["kiwi-optim", "sweep", "-j", str(jobs)], repo, timeout=1200)
    return (time.perf_counter() - started) / trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    drawn = values(args.trials)
    figures: dict[str, list[float]] = {"by hand": [], "sweep -j 1": [], "sweep -j 2": []}
    where = Path(tempfile.mkdtemp(prefix="kiwi-bench-sweep-"))
    try:
        for r in range(args.rounds):
            order = list(figures) if r % 2 == 0 else list(reversed(figures))
            for way in order:
                repo = repository(where / f"{way.replace(' ', '_')}-{r}")
                if way == "by hand":
                    figures[way].append(by_hand(repo, drawn))
                else:
                    figures[way].append(swept(repo, args.trials, int(way[-1])))
                print(f"round {r + 1}: {way}: {figures[way][-1]:.2f} s per trial", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    med = {way: statistics.median(v) for way, v in figures.items()}
    print(f"\n{'way':<12} {'s per trial':>12}")
    for way, value in med.items():
        print(f"{way:<12} {value:>12.2f}")
    overhead = med["sweep -j 1"] / med["by hand"]
    speedup = med["sweep -j 1"] / med["sweep -j 2"]
    print(f"\nsweep -j 1 / by hand: {overhead:.3f} (target <= 1.1: {'PASS' if overhead <= 1.1 else 'MISS'})")
    print(f"sweep -j 1 / sweep -j 2 (wall per trial): {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
