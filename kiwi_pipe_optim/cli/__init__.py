"""``kiwi-optim``: check, preview and inspect the ``optimizer`` section of a params file.

The app layer, the only one that imports from every other. Subcommands parse their arguments
and call library functions. ``validate``, ``list`` and ``schema`` must answer in well under a
second, so nothing here imports torch, Lightning or MLflow at the top; ``preview`` needs torch,
``groups`` builds the model.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Sequence

from ..config import SECTION
from ..errors import ConfigError
from ..extras import MissingExtra
from ..params_file import read_params
from . import check, init, preview, runs, sweep, train, ui
from .check import EXIT_INVALID

SECTION_OPTION = {"default": SECTION, "help": "where the optimizer section is, dotted: OpenKiwi's files keep it at "
                  "system.optimizer (default: optimizer)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-optim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check the optimizer section and print it resolved")
    validate.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    validate.add_argument("--section", **SECTION_OPTION)
    validate.add_argument("-o", "--output", help="write the resolved section here (only when the file is valid)")
    validate.add_argument("--optimizer-only", action="store_true", help="check the optimizer section alone "
                          "(a fraction of a second; by default a file with data and model is checked whole)")
    validate.set_defaults(run=check.validate)

    previewing = sub.add_parser("preview", help="the LR curve of every param group, from the params alone")
    previewing.add_argument("params", nargs="?", default="params.yaml")
    previewing.add_argument("--section", **SECTION_OPTION)
    previewing.add_argument("--csv", help="write step + one LR column per group here")
    previewing.add_argument("--plots-dir", help="write one step,lr file per group here, as DVC plots draw them")
    previewing.add_argument("--png", help="write a plot here")
    previewing.add_argument("--training-steps", type=int, help="the run's optimizer steps (default: from the params)")
    previewing.add_argument("--train-size", type=int, help="training examples (default: asked from the data class)")
    previewing.add_argument("--model-size", type=int, help="d_model for noam (default: the model's init_args)")
    previewing.add_argument("--max-points", type=int, default=5000, help="rows of the CSV at most (default 5000)")
    previewing.set_defaults(run=preview.preview)

    schema = sub.add_parser("schema", help="JSON Schema of the params file (or of the sweep file), for editors")
    schema.add_argument("-o", "--output", help="write it here instead of stdout")
    schema.add_argument("--sweep", action="store_true", help="the schema of sweep.yaml instead")
    schema.set_defaults(run=check.schema)

    groups = sub.add_parser("groups", help="which parameter goes to which group, with its LR and weight decay")
    groups.add_argument("params", nargs="?", default="params.yaml")
    groups.add_argument("--section", **SECTION_OPTION)
    groups.set_defaults(run=preview.groups)

    comp = sub.add_parser("compare", help="runs side by side from the MLflow store, LR curves overlaid")
    comp.add_argument("runs", nargs="*", metavar="RUN_OR_EXP", help="run ids, run names or DVC experiment names "
                      "(default: the latest runs)")
    comp.add_argument("--experiment", default="kiwi-pipe-optim", help="MLflow experiment (default: kiwi-pipe-optim)")
    comp.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    comp.add_argument("--limit", type=int, default=10, help="runs shown when none is named (default 10)")
    comp.add_argument("--png", default="lr_compare.png", help="plot of the LR curves (default lr_compare.png; '' for none)")
    comp.set_defaults(run=runs.compare)

    spool = sub.add_parser("send-spool", help="send what a run kept locally while its MLflow server was down")
    spool.add_argument("files", nargs="+", help=".kiwi-pipe-optim/spool/<run id>.jsonl")
    spool.add_argument("--tracking-uri", help="default: the server the run was logging to")
    spool.set_defaults(run=runs.send_spool)

    init.register(sub)
    train.register(sub)
    sweep.register(sub)
    ui.register(sub)

    listing = sub.add_parser("list", help="list the optimizers and schedules")
    listing.set_defaults(run=check.listing)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the stage's own parser reads the rest, --help included
        return train.run(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except ConfigError as e:
        if not e.source and getattr(args, "params", None):  # found on the model: locate it in the file
            with contextlib.suppress(ConfigError):
                e = e.with_source(args.params, read_params(args.params)[1])
        print(str(e), file=sys.stderr)
        return EXIT_INVALID
    except MissingExtra as e:
        print(f"kiwi-optim {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
