"""``kiwi-optim init``: the ``check``, ``schedule`` and ``train`` stages and their params groups,
added to the user's own git repository.

Nothing of the user's is rewritten: params groups and ignore lines are appended as text (comments
and formatting kept), stages are inserted as text into the ``stages:`` mapping of ``dvc.yaml``,
and each result is parsed back and compared before it is written. What is already there is left
as it is, so a second ``init`` changes nothing. This repository's own ``dvc.yaml`` is
:func:`pipeline` for the package ``kiwi_pipe_optim`` (a test holds them equal).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, Problem
from ..files import write_atomically

EXAMPLE = {"model": "kiwi_pipe_optim.examples.digits:DigitsTransformer",
           "data": "kiwi_pipe_optim.examples.digits_data:DigitsDataModule"}
CHECKED = ".kiwi-pipe-optim/checked.yaml"
# DVC's linear template with the LR axis from zero and padded: its default ends the axis at the
# extreme values, which puts a constant LR (or the peak) on the chart's frame, where it is hidden.
LR_TEMPLATE = "kiwi-lr"
UNPADDED, PADDED = '"scale": {"zero": false}', '"scale": {"zero": true, "padding": 20}'
IGNORED = ["/.kiwi-pipe-optim/", "/mlflow.db", "/mlflow.db.lock", "/mlartifacts/"]
DVC_IGNORED = ["__pycache__/", "*.pyc"]  # byte-code must not make the user's package look changed
COMMENTS = {
    "check": ["Every params group checked as `train` will (classes and their arguments, the Trainer, the",
              "files named): a mistake stops `dvc repro` here, before DVC deletes the last good outputs."],
    "schedule": ["The planned LR curve of every param group, from the params alone (no training):",
                 "`dvc plots diff` shows experiments' schedules side by side before any of them trains."],
}


def register(sub: Any) -> None:
    init = sub.add_parser("init", help="add the check, schedule and train stages and their params groups to this "
                          "git repository (dvc init first if needed)")
    init.add_argument("--model", help="your LightningModule, package.module:ClassName")
    init.add_argument("--data", help="your LightningDataModule, package.module:ClassName")
    init.add_argument("--example", action="store_true", help="the bundled digits task instead (what make run trains)")
    init.add_argument("--prefix", default="", help="put before the stage names, when dvc.yaml already has stages "
                      "called check, schedule or train")
    init.set_defaults(run=init_repository)


def _cached(path: Any) -> dict[str, Any]:
    return {str(path): {"cache": False}}


def pipeline(packages: list[str], prefix: str = "") -> dict[str, Any]:
    """The three stages, depending on the user's code in ``packages`` (paths in the repository)."""
    groups = ["data", "model", "trainer", "optimizer"]
    stages = {
        "check": {"cmd": f"kiwi-optim validate params.yaml -o {CHECKED}", "deps": list(packages),
                  "params": [*groups, "checkpoint", "plots"], "outs": [_cached(CHECKED)]},
        "schedule": {"cmd": "kiwi-optim preview params.yaml --plots-dir plots/schedule --png plots/schedule.png",
                     "deps": [CHECKED, *packages], "params": groups,
                     "plots": [{"plots/schedule": {"x": "step", "y": "lr", "template": LR_TEMPLATE, "cache": False}},
                               _cached("plots/schedule.png")]},
        "train": {"cmd": "kiwi-optim train", "deps": [CHECKED, *packages],
                  "params": [*groups, "mlflow", "checkpoint", "plots"], "metrics": [_cached("metrics.json")],
                  "plots": [{"plots/lr": {"x": "step", "y": "lr", "template": LR_TEMPLATE, "cache": False}},
                            {"plots/loss.csv": {"x": "step", "y": "train_loss", "cache": False}}]},
    }
    for stage in stages.values():
        if not stage["deps"]:
            del stage["deps"]
    return {prefix + name: stage for name, stage in stages.items()}


class _Indented(yaml.SafeDumper):
    """Sequences indented under their key, as DVC's own files and its documentation write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def stages_text(stages: dict[str, Any], prefix: str = "", indent: int = 2) -> str:
    """The stages as lines of the ``stages:`` mapping, at the indentation the file already uses."""
    step, text = " " * indent, ""
    for name, body in stages.items():
        text += f"{step}{name}:\n" + "".join(f"{step * 2}# {line}\n" for line in COMMENTS.get(name[len(prefix):], []))
        dumped = yaml.dump(body, Dumper=_Indented, indent=indent, sort_keys=False, default_flow_style=False, width=120)
        text += "".join(step * 2 + re.sub(r"^( *)- +", r"\1- ", line) + "\n" for line in dumped.splitlines())
    return text


def _fail(message: str) -> ConfigError:
    return ConfigError(Problem("", f"kiwi-optim init: {message}"))


def _package_of(module_name: str, root: Path) -> str | None:
    """The user's code the stages depend on: the top-level package (or module file) under the
    repository, or None when the class comes from an installed package."""
    top = module_name.split(".")[0]
    spec = importlib.util.find_spec(top)
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or root not in origin.parents:
        return None
    path = origin.parent if origin.name == "__init__.py" else origin
    return path.relative_to(root).as_posix()


def _init_args(cls: type) -> dict[str, Any]:
    """The constructor's arguments with plain defaults, so that the params show what can be tuned."""
    found: dict[str, Any] = {}
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            found[name] = None
        elif p.default is None or isinstance(p.default, (bool, int, float, str)):
            found[name] = p.default
    return found


def _checked_class(path: str, option: str, kind: str) -> type:
    """The class ``path`` names, imported from the repository root, and of the kind the stage builds."""
    from ..imports import import_object

    if ":" not in path and "." not in path:
        raise _fail(f"{option} {path!r}: give package.module:ClassName")
    try:
        cls = import_object(path)
    except ImportError as e:
        raise _fail(f"{option} {path!r}: cannot import it ({e})") from None
    except AttributeError:
        raise _fail(f"{option} {path!r}: the module has no such class") from None
    if not isinstance(cls, type):
        raise _fail(f"{option} {path!r} is not a class")
    flavors = [importlib.import_module(name) for name in _installed_flavors()]
    if not any(issubclass(cls, getattr(f, kind)) for f in flavors) and not (
            kind == "LightningDataModule" and hasattr(cls, "train_dataloader")):
        raise _fail(f"{option} {path!r} is not a {kind} of lightning.pytorch or pytorch_lightning")
    return cls


def _installed_flavors() -> list[str]:
    return [name for name in ("lightning.pytorch", "pytorch_lightning")
            if importlib.util.find_spec(name.split(".")[0]) is not None]


def _group_texts(model: tuple[str, type] | None, data: tuple[str, type] | None) -> dict[str, str]:
    """Each params group's text: the packaged defaults (with their comments), the user's classes."""
    template = resources.files("kiwi_pipe_optim").joinpath("templates/params.yaml").read_text()
    texts: dict[str, str] = {}
    name = None
    for line in template.splitlines(keepends=True):
        match = re.match(r"^([a-z_]+):", line)
        if match:
            name = match.group(1)
            texts[name] = ""
        if name is not None:
            texts[name] += line
    for group, chosen in (("model", model), ("data", data)):
        if chosen is not None and chosen[0] != EXAMPLE[group]:
            path, cls = chosen
            args = _init_args(cls)
            body = yaml.safe_dump({group: {"class_path": path, "init_args": args}}, sort_keys=False)
            texts[group] = body.replace("init_args: {}", "init_args: {}  # the constructor's keyword arguments")
    return texts


def _merged_params(path: Path, model: tuple[str, type] | None, data: tuple[str, type] | None,
                   report: list[str], notes: list[str]) -> str | None:
    old = path.read_text() if path.exists() else ""
    current = yaml.safe_load(old) if old.strip() else {}
    if not isinstance(current, dict):
        raise _fail(f"{path.name} is not a mapping of params groups")
    for group, chosen in (("model", model), ("data", data)):
        have = (current.get(group) or {}).get("class_path") if isinstance(current.get(group), dict) else None
        if chosen is not None and have is not None and have != chosen[0]:
            raise _fail(f"{path.name} already has {group}.class_path: {have}; edit it there, or remove the "
                        f"{group} group to let init write it")
    missing = {g: t for g, t in _group_texts(model, data).items() if g not in current}
    if not missing:
        return None
    for group in ("model", "data"):
        if group in missing and "class_path" not in current.get(group, {}) and model is None and data is None:
            raise _fail(f"{path.name} has no {group} group: give --model and --data, or --example")
    for group, text in missing.items():
        args = yaml.safe_load(text)[group]
        if isinstance(args, dict) and None in (args.get("init_args") or {}).values():
            needed = [k for k, v in args["init_args"].items() if v is None]
            notes.append(f"set {', '.join(f'{group}.init_args.{k}' for k in needed)} in {path.name} (no default)")
    report.append(f"{path.name}: added the groups {', '.join(missing)}")
    return old + ("" if not old or old.endswith("\n") else "\n") + "".join(missing.values())


def _merged_stages(path: Path, stages: dict[str, Any], prefix: str, report: list[str]) -> str | None:
    old = path.read_text() if path.exists() else ""
    current = yaml.safe_load(old) if old.strip() else {}
    if not isinstance(current, dict):
        raise _fail(f"{path.name} is not a mapping")
    existing = current.get("stages") or {}
    for name, body in stages.items():
        if name in existing and existing[name] != body:
            raise _fail(f"{path.name} already has a stage {name!r}; give --prefix (e.g. --prefix kiwi-) "
                        f"to add ours under other names")
    missing = {name: body for name, body in stages.items() if name not in existing}
    if not missing:
        return None
    lines = old.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if re.match(r"^stages:\s*(#.*)?$", line)), None)
    if at is None:
        text = old + ("" if not old or old.endswith("\n") else "\n") + "stages:\n" + stages_text(missing, prefix)
    else:
        end, indent = len(lines), 2
        for i in range(at + 1, len(lines)):
            if re.match(r"^\S", lines[i]) and not lines[i].startswith("#"):
                end = i
                break
        first = next((line for line in lines[at + 1:end] if line.strip() and not line.lstrip().startswith("#")), None)
        if first is not None:
            indent = len(first) - len(first.lstrip(" "))
        while end > at + 1 and not lines[end - 1].strip():
            end -= 1  # before the blank lines that close the block
        before = "".join(lines[:end])
        text = before + ("" if before.endswith("\n") else "\n") + stages_text(missing, prefix, indent) + "".join(lines[end:])
    merged = yaml.safe_load(text)
    if {**existing, **missing} != merged.get("stages") or {k: v for k, v in merged.items() if k != "stages"} != {
            k: v for k, v in current.items() if k != "stages"}:
        raise _fail(f"could not add the stages to {path.name} without changing what is there; add them by hand "
                    f"(kiwi-optim init in an empty repository shows them)")
    report.append(f"{path.name}: added the stages {', '.join(missing)}")
    return text


def _merged_lines(path: Path, wanted: list[str], header: str, report: list[str]) -> str | None:
    old = path.read_text() if path.exists() else ""
    have = {line.strip() for line in old.splitlines()}
    missing = [line for line in wanted if line not in have and line.lstrip("/") not in have]
    if not missing:
        return None
    report.append(f"{path.name}: added {' '.join(missing)}")
    return old + ("" if not old or old.endswith("\n") else "\n") + f"# {header}\n" + "".join(f"{m}\n" for m in missing)


def _git_root() -> Path:
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _fail(f"cannot run git ({e}); DVC pipelines live in a git repository") from None
    if out.returncode != 0:
        raise _fail(f"{Path.cwd()} is not in a git repository: run git init first")
    return Path(out.stdout.strip()).resolve()


def _dvc(root: Path, *args: str) -> str:
    dvc = shutil.which("dvc")
    command = [dvc] if dvc else [sys.executable, "-m", "dvc"]
    out = subprocess.run([*command, *args], cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise _fail(f"dvc {' '.join(args)} failed: {lines[-1] if lines else out.returncode}")
    return out.stdout


def _lr_template(root: Path, report: list[str]) -> None:
    """``.dvc/plots/kiwi-lr.json``, made from the installed DVC's own linear template."""
    path = root / ".dvc" / "plots" / f"{LR_TEMPLATE}.json"
    if path.exists():
        return
    text = _dvc(root, "plots", "templates", "linear")
    if UNPADDED not in text:
        raise _fail(f"DVC's linear template has changed; copy it to {path} by hand")
    write_atomically(path, text.replace(UNPADDED, PADDED))
    report.append(f".dvc/plots/{LR_TEMPLATE}.json: the LR charts' template (axis from zero, padded)")


def init_repository(args: argparse.Namespace) -> int:
    from ..extras import require

    require("stage", "kiwi-optim init")
    if args.example and (args.model or args.data):
        raise _fail("--example writes the bundled task: give it alone, or --model and --data")
    root = _git_root()
    if Path.cwd().resolve() != root:
        raise _fail(f"run it at the repository's root, {root}")
    paths = {"model": EXAMPLE["model"] if args.example else args.model,
             "data": EXAMPLE["data"] if args.example else args.data}
    chosen = {group: (path, _checked_class(path, f"--{group}", kind)) if path else None
              for group, path, kind in (("model", paths["model"], "LightningModule"),
                                        ("data", paths["data"], "LightningDataModule"))}
    packages = sorted({p for p in (_package_of(v.split(":")[0] if ":" in v else v.rpartition(".")[0], root)
                                   for v in paths.values() if v) if p})
    report: list[str] = []
    notes: list[str] = []
    writes = {
        root / "params.yaml": _merged_params(root / "params.yaml", chosen["model"], chosen["data"], report, notes),
        root / "dvc.yaml": _merged_stages(root / "dvc.yaml", pipeline(packages, args.prefix), args.prefix, report),
        root / ".gitignore": _merged_lines(root / ".gitignore", IGNORED, "kiwi-pipe-optim: run state and the "
                                           "local MLflow store", report),
        root / ".dvcignore": _merged_lines(root / ".dvcignore", DVC_IGNORED, "byte-code must not make a stage "
                                           "look changed", report),
    }
    if not (root / "sweep.yaml").exists():
        writes[root / "sweep.yaml"] = resources.files("kiwi_pipe_optim").joinpath("templates/sweep.yaml").read_text()
        report.append("sweep.yaml: a study of the learning rate and warm-up (kiwi-optim sweep)")
    if not (root / ".dvc").is_dir():
        _dvc(root, "init", "-q")
        report.append(".dvc/: dvc init")
    _lr_template(root, report)
    for path, text in writes.items():
        if text is not None:
            write_atomically(path, text)
    if not report:
        print("nothing to change: the stages, params groups and ignore lines are all there")
        return 0
    for line in report + notes:
        print(line)
    print("next: git add -A && git commit -m 'kiwi-pipe-optim stages', then dvc repro")
    return 0
