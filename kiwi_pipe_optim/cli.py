"""``kiwi-optim``: check, preview and inspect the ``optimizer`` section of a params file.

Subcommands parse their arguments and call library functions. ``validate``, ``list`` and
``schema`` must answer in well under a second, so this module imports neither torch, Lightning
nor MLflow at the top; ``preview`` needs torch, ``groups`` builds the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import SECTION, load_config, read_params
from .errors import ConfigError, Problem
from .specs import OPTIMIZER_SPECS, SCHEDULE_SPECS

EXIT_INVALID = 2


def _print_findings(findings: list[Any]) -> bool:
    for finding in findings:
        print(finding, file=sys.stderr)
    return any(f.level == "error" for f in findings)


def _validate(args: argparse.Namespace) -> int:
    import yaml

    from .lint import lint

    config = load_config(args.params, args.section)
    raw, _ = read_params(args.params)
    body = {args.section: config.model_dump(mode="json", exclude_none=True)}
    print(yaml.safe_dump(body, sort_keys=False).rstrip())
    how = "set by optimizer.scheduler" if config.scheduler else "chosen from class_name / learning_rate_decay"
    print(f"# schedule: {config.schedule_name} ({how})")
    return EXIT_INVALID if _print_findings(lint(config, raw.get(args.section))) else 0


def _list(args: argparse.Namespace) -> int:
    print("optimizers (optimizer.class_name):")
    for name, spec in sorted(OPTIMIZER_SPECS.items()):
        print(f"  {name:<13} torch.optim.{spec.torch_class:<11} {spec.description}")
    print("schedules (optimizer.scheduler):")
    for name, spec in sorted(SCHEDULE_SPECS.items()):
        print(f"  {name:<13} per {spec.interval:<6} {spec.description}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .stage_params import params_schema

    text = json.dumps(params_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _import_data(params: Any) -> Any:
    from .integrations.stage import import_class, instantiate

    return instantiate(import_class(params.data, "data"), params.data, "data")


def run_steps_from_params(params: Any, train_size: int | None = None) -> tuple[int, str]:
    """The run's optimizer steps from the params, counted as the trainer will; and how."""
    from .preview import stepping_batches

    data = None
    if train_size is None:
        data = _import_data(params)
        train_size = getattr(data, "train_size", None)
        if train_size is None:
            data.setup("fit")
            train_size = len(data.train_dataloader().dataset)
    batch_size = params.data.init_args.get("batch_size", getattr(data, "batch_size", None))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(Problem("data.init_args.batch_size", f"{batch_size!r} is not known or not a batch size; "
                                  f"set it, or pass --training-steps"))
    trainer = params.trainer.trainer_kwargs()
    devices = trainer.get("devices", 1)
    world = (len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) and devices > 0
             else 1) * int(trainer.get("num_nodes", 1))
    max_steps = int(trainer.get("max_steps", -1))
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's own default
    steps = stepping_batches(train_size, batch_size, max_epochs, int(trainer.get("accumulate_grad_batches", 1)),
                             world, max_steps, trainer.get("limit_train_batches"),
                             bool(getattr(data, "drop_last", False)))
    how = (f"{train_size} examples, batch {batch_size}, {max_epochs} epochs, accumulate "
           f"{trainer.get('accumulate_grad_batches', 1)}, {world} process(es)")
    return steps, how


def _model_size(params: Any, given: int | None) -> int | None:
    if given is not None:
        return given
    for key in ("model_size", "d_model", "hidden_size", "hidden"):
        value = params.model.init_args.get(key) if params is not None else None
        if isinstance(value, int):
            return value
    return None


def _preview(args: argparse.Namespace) -> int:
    from .lint import lint, resolve_errors
    from .preview import curves, plot_png, write_csv

    raw, _ = read_params(args.params)
    params = None
    if args.training_steps is not None:
        config = load_config(args.params)
        steps, how = args.training_steps, "given with --training-steps"
    else:
        from .stage_params import load_stage_params

        params = load_stage_params(args.params)
        config = params.optimizer
        steps, how = run_steps_from_params(params, args.train_size)
    model_size = _model_size(params, args.model_size)
    if config.schedule_name == "noam" and model_size is None:
        raise ConfigError(Problem("model.init_args.d_model", "the noam schedule needs the model size; set d_model "
                                  "in the model's init_args or pass --model-size"))
    model_cls = None
    if params is not None and (config.schedule_name == "plateau" or config.encoder_learning_rate is not None):
        from .integrations.stage import import_class

        model_cls = import_class(params.model, "model")
    findings = resolve_errors(config, steps, model_size) + lint(config, raw.get(SECTION), steps, model_cls)
    if _print_findings([f for f in findings if f.level == "error"]):
        return EXIT_INVALID
    result = curves(config, steps, model_size)
    r = result.resolved
    print(f"schedule: {r.name}, {steps} optimizer steps ({how})")
    peak = result.peak_step
    print(f"warm-up: {r.warmup_steps} steps; peak at step {peak}: "
          + ", ".join(f"lr/{g} {float(v[peak]):.4g}" for g, v in result.lrs.items()))
    print("last step: " + ", ".join(f"lr/{g} {float(v[-1]):.4g}" for g, v in result.lrs.items()))
    if args.csv:
        print(f"wrote {write_csv(args.csv, result, args.max_points)}")
    if args.png:
        print(f"wrote {plot_png(args.png, result)}")
    _print_findings([f for f in findings if f.level != "error"])
    return 0


def _groups(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .integrations.stage import import_class, instantiate
    from .param_groups import assign
    from .stage_params import load_stage_params

    params = load_stage_params(args.params)
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
    validate.add_argument("--section", default=SECTION, help="section to read (default: optimizer)")
    validate.set_defaults(run=_validate)

    preview = sub.add_parser("preview", help="the LR curve of every param group, from the params alone")
    preview.add_argument("params", nargs="?", default="params.yaml")
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
    # lint reports the config's warnings, once, with the rest
    logging.getLogger("kiwi_pipe_optim").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
