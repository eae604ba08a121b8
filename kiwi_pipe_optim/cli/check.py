"""``kiwi-optim validate``, ``list`` and ``schema``: answered in well under a second unless a whole
params file is validated (then as the train stage prepares it, which needs Lightning)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import load_config
from ..errors import Finding
from ..files import write_atomically
from ..params_file import read_params
from ..schedules import SCHEDULE_SPECS
from ..specs import OPTIMIZER_SPECS

EXIT_INVALID = 2


def print_findings(findings: list[Finding], source: str | None = None, lines: dict[str, int] | None = None) -> bool:
    """Every finding once, located in the params file; True if any is an error."""
    for finding in findings:
        print(finding.located(source, lines), file=sys.stderr)
    return any(f.level == "error" for f in findings)


def validate(args: argparse.Namespace) -> int:
    import yaml

    from ..lint import lint

    data, lines = read_params(args.params)
    whole = not args.optimizer_only and {"data", "model"} <= set(data)
    if whole:  # as the train stage will check it, before it trains: needs Lightning (seconds)
        from ..integrations.stage.prepare import check

        config, findings = check(args.params, args.section)
    else:
        config = load_config(args.params, args.section)
        findings = lint(config)
    body: dict = config.model_dump(mode="json", exclude_none=True)
    for part in reversed(args.section.split(".")):
        body = {part: body}
    how = "set by optimizer.scheduler" if config.scheduler else "chosen from class_name / learning_rate_decay"
    text = yaml.safe_dump(body, sort_keys=False) + f"# schedule: {config.schedule_name} ({how})\n"
    if whole:
        text += ("# checked as the train stage will: every params group, the classes and their arguments, the "
                 "Trainer, the files named\n")
    failed = print_findings(findings, args.params, lines)
    if args.output:  # the pipeline's check stage: schedule and train then do not repeat these
        from ..integrations.stage.shown import remember_shown

        remember_shown(args.params, [] if failed else findings)
    if args.output and not failed:
        write_atomically(args.output, text)
        print(f"wrote {args.output}")
    elif not args.output:
        sys.stdout.write(text)
    return EXIT_INVALID if failed else 0


def listing(args: argparse.Namespace) -> int:
    print("optimizers (optimizer.class_name):")
    for name, spec in sorted(OPTIMIZER_SPECS.items()):
        where = spec.path.replace(":", ".") if spec.path else f"torch.optim.{spec.torch_class}"
        print(f"  {name:<16} {where:<35} {spec.description}")
    print("  or any torch.optim.Optimizer subclass as 'package.module:ClassName'")
    print("schedules (optimizer.scheduler):")
    for name, sspec in sorted(SCHEDULE_SPECS.items()):
        print(f"  {name:<16} per {sspec.interval:<6} {sspec.description}")
    return 0


def schema(args: argparse.Namespace) -> int:
    if getattr(args, "sweep", False):
        from ..integrations.sweep.spec import sweep_schema as make
    else:
        from ..integrations.stage.params import params_schema as make

    text = json.dumps(make(), indent=2) + "\n"
    if args.output:
        write_atomically(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0
