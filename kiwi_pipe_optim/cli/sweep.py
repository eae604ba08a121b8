"""``kiwi-optim sweep``: search the params with Optuna, every trial a DVC experiment and an
MLflow run under the sweep's parent run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..extras import require


def register(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="search the params with Optuna: each trial a DVC experiment and an MLflow "
                           "run (kiwi-optim sweep --help)",
                           description="Run (or resume) the study a sweep file declares; --show prints its trials.")
    sweep.add_argument("sweep", nargs="?", default="sweep.yaml", help="the sweep file (default: sweep.yaml)")
    sweep.add_argument("-j", "--jobs", type=_jobs, default=1, help="trials at once on this machine, each in its own "
                       "temporary copy of the workspace (default 1)")
    sweep.add_argument("--storage", help="the study's storage: a postgresql:// URL for workers on many machines "
                       "(default: a journal file under .kiwi-pipe-optim/sweeps/)")
    sweep.add_argument("--params", default="params.yaml", help="the params file trials change (default: params.yaml)")
    sweep.add_argument("--show", action="store_true", help="print the trials and the best one's `dvc exp apply` "
                       "line, write the study's plots, and log them to the parent run; runs nothing")
    sweep.add_argument("--plots-dir", help="where --show writes its PNGs and trials.csv (default: sweeps/<name>)")
    sweep.set_defaults(run=run)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs; use a whole number >= 1")
    return value


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ConfigError as e:
        if e.source:
            raise
        raise ConfigError(e.problems, source="kiwi-optim sweep") from None  # not a line of the params file


def _run(args: argparse.Namespace) -> int:
    require("sweep", "kiwi-optim sweep")
    from ..integrations.sweep.spec import load_sweep

    spec = load_sweep(args.sweep, args.params)  # every problem of the file before anything starts
    from ..integrations.sweep.driver import start

    sweep = start(spec, Path(args.params), args.storage, say, reopen=not args.show)
    if args.show:
        return show(sweep, Path(args.plots_dir or Path("sweeps") / spec.name))
    say(f"sweep {spec.name}: {spec.trials} trials of {', '.join(spec.space)}, {spec.metric} to {spec.direction}, "
        f"{args.jobs} at a time; study in {sweep.storage_url}")
    code = sweep.run(args.jobs)
    if code == 0:
        from ..integrations.sweep.results import best_line, table

        print(table(sweep.study, spec))
        say(best_line(sweep.study, spec))
    return code


def show(sweep: Any, folder: Path) -> int:
    from ..integrations.sweep.results import best_line, table, write_csv, write_plots

    print(table(sweep.study, sweep.spec))
    written = write_plots(sweep.study, folder)
    write_csv(sweep.study, sweep.spec, folder / "trials.csv")
    if sweep.parent is not None:
        for path in [*written, folder / "trials.csv"]:
            sweep.parent.log_artifact(path, "sweep")
        sweep.parent.record_best(sweep.study, sweep.spec)
    say(f"plots: {', '.join(str(p) for p in written) or 'none yet'}; table: {folder / 'trials.csv'}")
    say(best_line(sweep.study, sweep.spec))
    return 0
