"""The params groups the training stage reads (``data``, ``model``, ``trainer``, ``optimizer``,
``mlflow``), validated together so one run reports every mistake in the file at once.

Pure pydantic: checking a params file never waits for torch, Lightning or MLflow to import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...config import OptimizerConfig
from ...errors import ConfigError, Problem, show
from ...params_file import find_section, missing_section, problems_from, read_params

_CLASS_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*[:.][A-Za-z_][\w]*$")
STAGE_SECTIONS = ("data", "model", "trainer", "optimizer", "mlflow", "checkpoint", "plots")
# Trainer arguments the stage sets itself: the logging and checkpointing it does are its job.
RESERVED_TRAINER_KEYS = ("logger", "callbacks", "enable_checkpointing", "default_root_dir")


class ImportedParams(BaseModel):
    """A class to import by path and the keyword arguments to build it with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_path: str = Field(description="Import path of the class, 'package.module:Class'.")
    init_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class.")

    @field_validator("class_path", mode="before")
    @classmethod
    def _import_path(cls, value: Any) -> str:
        if not isinstance(value, str) or not _CLASS_PATH.match(value):
            raise ValueError(f"{show(value)} is not an import path; use 'package.module:ClassName'")
        return value

    @field_validator("init_args", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"{show(value)} is not a mapping; use keyword arguments such as {{batch_size: 64}}")
        return value


class TrainerParams(BaseModel):
    """Arguments of ``Trainer`` plus ``seed``: every other key is checked against the Trainer's
    signature, and the values by building a Trainer, so what Lightning accepts is accepted here
    (``max_steps: -1``, ``limit_train_batches: 0.5`` or ``10``, ``val_check_interval`` ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    seed: int = Field(0, description="Seed of torch, numpy and Python's random, for a deterministic run.")
    max_epochs: Optional[int] = Field(None, description="Epochs to train; -1 for no limit (then set max_steps), "
                                      "as in Lightning.")
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches per optimizer step.")

    @field_validator("max_epochs")
    @classmethod
    def _epochs(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value != -1 and value < 1:
            raise ValueError(f"{value} trains nothing; use a number of epochs >= 1, or -1 for no epoch limit "
                             f"(with max_steps), as Lightning takes it")
        return value

    def trainer_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.model_dump().items() if k != "seed" and v is not None}
        return kwargs


class MlflowParams(BaseModel):
    """Where and under which experiment the run is logged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Log to MLflow; false trains without any tracking.")
    tracking_uri: Optional[str] = Field(
        None, description="Tracking URI; default sqlite:///mlflow.db at the repository root. "
        "MLFLOW_TRACKING_URI overrides it.")
    experiment_name: str = Field("kiwi-pipe-optim", min_length=1, description="MLflow experiment of the runs.")
    flush_interval_s: float = Field(
        5.0, ge=0, description="Send logged values to MLflow at most this many seconds after they were logged, at "
        "any point of an epoch (0: at every logging call); always at the end and on failure.")
    sender: Literal["auto", "process", "inline"] = Field(
        "auto", description="What sends the logged values: 'process', a second process that follows the run's "
        "journal (training only appends to it); 'inline', the training process, in batches; 'auto', inline "
        "until the first send, then a process if the run has more than ~3 s left (short runs would pay more "
        "for its start than they save).")


class CheckpointParams(BaseModel):
    """How often the stage saves what a crashed run resumes from, and whether it resumes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_n_steps: int = Field(
        100, ge=0, description="Save model, optimizer, scheduler and loop state every this many optimizer steps "
        "(0: never), so that the next run of the stage after a crash resumes from there.")
    resume: bool = Field(
        True, description="Resume from the checkpoint an interrupted run left; false starts afresh and "
        "overwrites it.")


class PlotsParams(BaseModel):
    """How the stage's DVC plots are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_points: int = Field(
        5000, ge=2, description="Rows per plot file at most: longer runs are thinned evenly, keeping the last step "
        "(MLflow keeps every value).")


class ParamsFile(BaseModel):
    """The params file as the stage reads it; other top-level groups are allowed."""

    model_config = ConfigDict(extra="allow", title="kiwi-pipe-optim params.yaml")

    data: ImportedParams
    model: ImportedParams
    trainer: TrainerParams = Field(default_factory=TrainerParams)
    optimizer: OptimizerConfig
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    checkpoint: CheckpointParams = Field(default_factory=CheckpointParams)
    plots: PlotsParams = Field(default_factory=PlotsParams)


class StageParams(ParamsFile):
    """Everything the training stage reads from ``params.yaml``, and the groups as written."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    raw: dict[str, Any] = Field(default_factory=dict, exclude=True)
    lines: dict[str, int] = Field(default_factory=dict, exclude=True)  # dotted key: its line in the file


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "data": ImportedParams, "model": ImportedParams, "trainer": TrainerParams,
    "optimizer": OptimizerConfig, "mlflow": MlflowParams, "checkpoint": CheckpointParams, "plots": PlotsParams,
}
_REQUIRED = ("data", "model", "optimizer")


def load_stage_params(path: str | Path = "params.yaml", optimizer_section: str = "optimizer") -> StageParams:
    """Read and validate every section the stage uses.

    ``optimizer_section`` is where the optimizer section is: a dotted location such as
    ``system.optimizer`` reads an OpenKiwi file's own.

    Raises:
        ConfigError: every problem of every section, as ``file:line: section.field: message``.
    """
    data, lines = read_params(path)
    problems: list[Problem] = []
    parsed: dict[str, Any] = {}
    for name, model in _SECTION_MODELS.items():
        section = optimizer_section if name == "optimizer" else name
        try:
            value = find_section(data, section)
        except KeyError:
            if name == "optimizer":
                problems.append(missing_section(data, section))
            elif name in _REQUIRED:
                problems.append(Problem(section, f"missing section; add '{section}:' (see the README's params.yaml)"))
            continue
        if value is None and name not in _REQUIRED:
            continue
        if not isinstance(value, dict):
            got = "nothing" if value is None else type(value).__name__
            problems.append(Problem(section, f"expected a mapping of fields, got {got}"))
            continue
        if name == "trainer":
            problems.extend(Problem(f"trainer.{key}", "set by the stage itself; remove it from params")
                            for key in RESERVED_TRAINER_KEYS if key in value)
        try:
            parsed[name] = model.model_validate(value)
        except ValidationError as e:
            problems.extend(problems_from(e, model, section))
    if problems:
        raise ConfigError(problems).with_source(str(path), lines)
    groups = {*STAGE_SECTIONS, optimizer_section.split(".")[0]}
    return StageParams(**parsed, raw={k: data[k] for k in data if k in groups}, lines=lines)


def params_schema() -> dict[str, Any]:
    """JSON Schema of ``params.yaml`` (descriptions, enums of optimizer and schedule names)."""
    return ParamsFile.model_json_schema()
