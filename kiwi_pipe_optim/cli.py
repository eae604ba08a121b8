"""``kiwi-optim``: check and inspect the ``optimizer`` section of a params file.

Subcommands parse their arguments and call one library function. ``validate`` and ``list`` must
answer in well under a second, so this module imports neither torch, Lightning nor MLflow.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .config import SECTION, load_config
from .errors import ConfigError
from .specs import OPTIMIZER_SPECS, SCHEDULE_SPECS

EXIT_INVALID = 2


def _validate(args: argparse.Namespace) -> int:
    import yaml

    config = load_config(args.params, args.section)
    body = {args.section: config.model_dump(mode="json")}
    print(yaml.safe_dump(body, sort_keys=False).rstrip())
    how = "set by optimizer.scheduler" if config.scheduler else "chosen from class_name / learning_rate_decay"
    print(f"# schedule: {config.schedule_name} ({how})")
    return 0


def _list(args: argparse.Namespace) -> int:
    print("optimizers (optimizer.class_name):")
    for name, spec in sorted(OPTIMIZER_SPECS.items()):
        print(f"  {name:<13} torch.optim.{spec.torch_class:<11} {spec.description}")
    print("schedules (optimizer.scheduler):")
    for name, spec in sorted(SCHEDULE_SPECS.items()):
        print(f"  {name:<13} per {spec.interval:<6} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-optim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check the optimizer section and print it resolved")
    validate.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    validate.add_argument("--section", default=SECTION, help="section to read (default: optimizer)")
    validate.set_defaults(run=_validate)
    listing = sub.add_parser("list", help="list the optimizers and schedules")
    listing.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
