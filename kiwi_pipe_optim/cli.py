"""``kiwi-optim``: check, preview and inspect the ``optimizer`` section of a params file.

Subcommands parse their arguments and call library functions. ``validate``, ``list`` and
``schema`` must answer in well under a second, so this module imports neither torch, Lightning
nor MLflow at the top; ``preview`` needs torch, ``groups`` builds the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .config import SECTION, load_config
from .errors import ConfigError, Finding, Problem
from .params_file import read_params
from .schedules import SCHEDULE_SPECS
from .specs import OPTIMIZER_SPECS

EXIT_INVALID = 2
SECTION_OPTION = {"default": SECTION, "help": "where the optimizer section is, dotted: OpenKiwi's files keep it at "
                  "system.optimizer (default: optimizer)"}


def _print_findings(findings: list[Finding], source: str | None = None, lines: dict[str, int] | None = None) -> bool:
    """Every finding once, located in the params file; True if any is an error."""
    for finding in findings:
        print(finding.located(source, lines), file=sys.stderr)
    return any(f.level == "error" for f in findings)


def _validate(args: argparse.Namespace) -> int:
    import yaml

    from .lint import lint

    data, lines = read_params(args.params)
    whole = not args.optimizer_only and {"data", "model"} <= set(data)
    if whole:  # as the train stage will check it, before it trains: needs Lightning (seconds)
        from .integrations.preflight import check_all

        config, findings = check_all(args.params, args.section)
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
    failed = _print_findings(findings, args.params, lines)
    if args.output:  # the pipeline's check stage: schedule and train then do not repeat these
        from .integrations.shown import remember_shown

        remember_shown(args.params, [] if failed else findings)
    if args.output and not failed:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    elif not args.output:
        sys.stdout.write(text)
    return EXIT_INVALID if failed else 0


def _list(args: argparse.Namespace) -> int:
    print("optimizers (optimizer.class_name):")
    for name, spec in sorted(OPTIMIZER_SPECS.items()):
        where = spec.path.replace(":", ".") if spec.path else f"torch.optim.{spec.torch_class}"
        print(f"  {name:<16} {where:<35} {spec.description}")
    print("  or any torch.optim.Optimizer subclass as 'package.module:ClassName'")
    print("schedules (optimizer.scheduler):")
    for name, sspec in sorted(SCHEDULE_SPECS.items()):
        print(f"  {name:<16} per {sspec.interval:<6} {sspec.description}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .integrations.params import params_schema

    text = json.dumps(params_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from .lint import lint, resolve_errors
    from .preview import curves, plot_png, write_csv, write_unknown

    _, lines = read_params(args.params)
    params = None
    if args.training_steps is not None:
        config = load_config(args.params, args.section)
        steps, how = args.training_steps, "given with --training-steps"
    else:
        from .integrations.params import load_stage_params
        from .integrations.steps import run_steps_from_params

        params = load_stage_params(args.params, args.section)
        config = params.optimizer
        steps, how = run_steps_from_params(params, args.train_size)
        if steps is None and config.training_steps is not None:
            steps, how = config.training_steps, f"optimizer.training_steps; {how}"
    if steps is None:
        write_unknown(args.csv, args.png, how)
        print(f"no preview: {how}; set trainer.max_steps or optimizer.training_steps to see the curve")
        return 0
    model_size = args.model_size
    if params is not None:
        from .integrations.classes import model_on_meta
        from .param_groups import assign
        from .resolve import model_size_of

        model = model_on_meta(params)
        assign(model, config)  # the groups the run will form: a rule that fits nothing stops here too
        if model_size is None and config.schedule_spec.needs_model_size:
            model_size = model_size_of(model)
    if model_size is None and config.schedule_spec.needs_model_size:
        raise ConfigError(Problem("optimizer.scheduler", f"the {config.schedule_name} schedule needs the model size; "
                                  f"pass --model-size, or let preview read the params' model"))
    findings = resolve_errors(config, steps, model_size) + lint(config, steps)
    if params is not None:
        from .integrations.model_lint import lint_model
        from .integrations.classes import import_class

        findings += lint_model(config, import_class(params.model, "model"))
    if _print_findings([f for f in findings if f.level == "error"], args.params, lines):
        return EXIT_INVALID
    result = curves(config, steps, model_size)
    r = result.resolved
    print(f"schedule: {r.name}, {steps} optimizer steps ({how})")
    if result.metric_driven:
        print(f"the LR follows {r.monitor} during training (x{r.factor:g} after {r.patience} epochs without "
              f"improvement): the curve shows where it starts")
    peak = result.peak_step
    print(f"warm-up: {r.warmup_steps} steps; peak at step {peak}: "
          + ", ".join(f"lr/{g} {float(v[peak]):.4g}" for g, v in result.lrs.items()))
    print("last step: " + ", ".join(f"lr/{g} {float(v[-1]):.4g}" for g, v in result.lrs.items()))
    if args.csv:
        print(f"wrote {write_csv(args.csv, result, args.max_points)}")
    if args.png:
        print(f"wrote {plot_png(args.png, result)}")
    from .integrations.shown import already_shown

    shown = already_shown(args.params)
    _print_findings([f for f in findings if f.level != "error" and str(f) not in shown], args.params, lines)
    return 0


def _groups(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .integrations.params import load_stage_params
    from .integrations.classes import import_class, instantiate
    from .param_groups import assign

    params = load_stage_params(args.params, args.section)
    model = instantiate(import_class(params.model, "model"), params.model, "model")
    table = Table("parameter", "shape", "group", "lr", "weight_decay", title=f"{type(model).__name__} param groups")
    for a in assign(model, params.optimizer):
        table.add_row(a.parameter, "x".join(map(str, a.shape)) or "scalar", a.group, f"{a.lr:g}",
                      "default" if a.weight_decay is None else f"{a.weight_decay:g}")
    Console(width=max(100, Console().width)).print(table)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from .integrations import compare

    uri = args.tracking_uri or compare.default_uri()
    client = MlflowClient(tracking_uri=uri)
    summaries = compare.summarize(client, compare.find_runs(client, args.experiment, args.runs, args.limit))
    if not summaries:
        print(f"no runs in experiment {args.experiment!r} of {uri}", file=sys.stderr)
        return 1
    console = Console()
    (console if console.is_terminal else Console(width=220)).print(compare.table(summaries))
    if args.png:
        print(f"wrote {compare.plot(summaries, args.png)}")
    return 0


def _send_spool(args: argparse.Namespace) -> int:
    from .integrations.mlflow import send_spool

    for path in args.files:
        run_id, count = send_spool(path, args.tracking_uri)
        print(f"sent {count} values of run {run_id} from {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiwi-optim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check the optimizer section and print it resolved")
    validate.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    validate.add_argument("--section", **SECTION_OPTION)
    validate.add_argument("-o", "--output", help="write the resolved section here (only when the file is valid)")
    validate.add_argument("--optimizer-only", action="store_true", help="check the optimizer section alone "
                          "(a fraction of a second; by default a file with data and model is checked whole)")
    validate.set_defaults(run=_validate)

    preview = sub.add_parser("preview", help="the LR curve of every param group, from the params alone")
    preview.add_argument("params", nargs="?", default="params.yaml")
    preview.add_argument("--section", **SECTION_OPTION)
    preview.add_argument("--csv", help="write step + one LR column per group here")
    preview.add_argument("--png", help="write a plot here")
    preview.add_argument("--training-steps", type=int, help="the run's optimizer steps (default: from the params)")
    preview.add_argument("--train-size", type=int, help="training examples (default: asked from the data class)")
    preview.add_argument("--model-size", type=int, help="d_model for noam (default: the model's init_args)")
    preview.add_argument("--max-points", type=int, default=5000, help="rows of the CSV at most (default 5000)")
    preview.set_defaults(run=_preview)

    schema = sub.add_parser("schema", help="JSON Schema of the params file, for editors")
    schema.add_argument("-o", "--output", help="write it here instead of stdout")
    schema.set_defaults(run=_schema)

    groups = sub.add_parser("groups", help="which parameter goes to which group, with its LR and weight decay")
    groups.add_argument("params", nargs="?", default="params.yaml")
    groups.add_argument("--section", **SECTION_OPTION)
    groups.set_defaults(run=_groups)

    comp = sub.add_parser("compare", help="runs side by side from the MLflow store, LR curves overlaid")
    comp.add_argument("runs", nargs="*", metavar="RUN_OR_EXP", help="run ids, run names or DVC experiment names "
                      "(default: the latest runs)")
    comp.add_argument("--experiment", default="kiwi-pipe-optim", help="MLflow experiment (default: kiwi-pipe-optim)")
    comp.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    comp.add_argument("--limit", type=int, default=10, help="runs shown when none is named (default 10)")
    comp.add_argument("--png", default="lr_compare.png", help="plot of the LR curves (default lr_compare.png; '' for none)")
    comp.set_defaults(run=_compare)

    spool = sub.add_parser("send-spool", help="send what a run kept locally while its MLflow server was down")
    spool.add_argument("files", nargs="+", help=".kiwi-pipe-optim/spool/<run id>.jsonl")
    spool.add_argument("--tracking-uri", help="default: the server the run was logging to")
    spool.set_defaults(run=_send_spool)

    listing = sub.add_parser("list", help="list the optimizers and schedules")
    listing.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        if not e.source and getattr(args, "params", None):  # found on the model: locate it in the file
            with contextlib.suppress(ConfigError):
                e = e.with_source(args.params, read_params(args.params)[1])
        print(str(e), file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
