"""``kiwi-optim preview`` (the pipeline's ``schedule`` stage) and ``groups``: what a run will do
with its LR and its parameters, from the params alone, without training."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError, Problem
from ..params_file import read_params
from .check import EXIT_INVALID, print_findings


def preview(args: argparse.Namespace) -> int:
    from ..lint import lint, resolve_errors
    from ..preview import curves, write_csv, write_group_csvs, write_unknown_csv

    params = None
    if args.training_steps is not None:
        config = load_config(args.params, args.section)
        lines = read_params(args.params)[1]
        steps, how = args.training_steps, "given with --training-steps"
    else:
        from ..integrations.stage.params import load_stage_params
        from ..integrations.stage.steps import run_steps_from_params

        params = load_stage_params(args.params, args.section)
        config, lines = params.optimizer, params.lines
        steps, how = run_steps_from_params(params, args.train_size)
        if steps is None and config.training_steps is not None:
            steps, how = config.training_steps, f"optimizer.training_steps; {how}"
    if steps is None:
        if args.csv:
            write_unknown_csv(args.csv, how)
        if args.plots_dir:
            write_unknown_csv(Path(args.plots_dir) / "unknown.csv", how, header="step,lr")
        if args.png:
            from .plots import unknown_chart

            unknown_chart(args.png, how)
        print(f"no preview: {how}; set trainer.max_steps or optimizer.training_steps to see the curve")
        return 0
    model_size, model_cls = args.model_size, None
    if params is not None:
        from ..integrations.stage.classes import import_class, model_on_meta
        from ..param_groups import assign
        from ..resolve import model_size_of

        model_cls = import_class(params.model, "model")
        model = model_on_meta(model_cls, params.model)
        assign(model, config)  # the groups the run will form: a rule that fits nothing stops here too
        if model_size is None and config.schedule_spec.needs_model_size:
            model_size = model_size_of(model)
    if model_size is None and config.schedule_spec.needs_model_size:
        raise ConfigError(Problem("optimizer.scheduler", f"the {config.schedule_name} schedule needs the model size; "
                                  f"pass --model-size, or let preview read the params' model"))
    findings = resolve_errors(config, steps, model_size) + lint(config, steps)
    if model_cls is not None:
        from ..integrations.stage.model_lint import lint_model

        findings += lint_model(config, model_cls)
    if print_findings([f for f in findings if f.level == "error"], args.params, lines):
        return EXIT_INVALID
    result = curves(config, steps, model_size)
    _describe(result, steps, how)
    if args.csv:
        print(f"wrote {write_csv(args.csv, result, args.max_points)}")
    if args.plots_dir:
        print(f"wrote {write_group_csvs(args.plots_dir, result, args.max_points)}/<group>.csv")
    if args.png:
        from .plots import preview_chart

        print(f"wrote {preview_chart(args.png, result)}")
    from ..integrations.stage.shown import already_shown

    shown = already_shown(args.params)
    print_findings([f for f in findings if f.level != "error" and str(f) not in shown], args.params, lines)
    return 0


def _describe(result: object, steps: int, how: str) -> None:
    r = result.resolved
    print(f"schedule: {r.name}, {steps} optimizer steps ({how})")
    if result.metric_driven:
        print(f"the LR follows {r.monitor} during training (x{r.factor:g} after {r.patience} epochs without "
              f"improvement): the curve shows where it starts")
    peak = result.peak_step
    print(f"warm-up: {r.warmup_steps} steps; peak at step {peak}: "
          + ", ".join(f"lr/{g} {float(v[peak]):.4g}" for g, v in result.lrs.items()))
    print("last step: " + ", ".join(f"lr/{g} {float(v[-1]):.4g}" for g, v in result.lrs.items()))


def groups(args: argparse.Namespace) -> int:
    from ..extras import require

    require("stage", "kiwi-optim groups")
    from rich.console import Console
    from rich.table import Table

    from ..integrations.stage.classes import import_class, instantiate
    from ..integrations.stage.params import load_stage_params
    from ..param_groups import assign

    params = load_stage_params(args.params, args.section)
    model = instantiate(import_class(params.model, "model"), params.model, "model")
    table = Table("parameter", "shape", "group", "lr", "weight_decay", title=f"{type(model).__name__} param groups")
    for a in assign(model, params.optimizer):
        table.add_row(a.parameter, "x".join(map(str, a.shape)) or "scalar", a.group, f"{a.lr:g}",
                      "default" if a.weight_decay is None else f"{a.weight_decay:g}")
    Console(width=max(100, Console().width)).print(table)
    return 0
