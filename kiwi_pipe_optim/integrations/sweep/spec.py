"""The sweep file (``sweep.yaml``): which params keys to search, over what, towards which metric.

It is not a DVC param: a trial's values reach the pipeline as ``dvc exp run -S key=value``, so
its params stay the user's file plus what the trial chose. Everything is checked before any trial
starts, down to each bound and choice against the section that will receive it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...errors import ConfigError, Problem, choices, did_you_mean, show
from ...params_file import find_section, problems_from, read_params
from ..stage.params import _SECTION_MODELS

Scalar = Union[bool, int, float, str, None]
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "threshold", "none")
DEFAULT_FILE = "sweep.yaml"
# a DVC experiment is a git ref named "<name>-<trial number>"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Dimension(BaseModel):
    """One params key's range: exactly one of ``log_uniform``, ``uniform``, ``int``, ``choice``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    log_uniform: Optional[tuple[float, float]] = Field(None, description="[low, high], low > 0, sampled on a log scale")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high]")
    int_: Optional[tuple[int, int]] = Field(None, alias="int", description="[low, high], both included")
    choice: Optional[list[Scalar]] = Field(None, description="the values to choose from")
    step: Optional[float] = Field(None, gt=0, description="with uniform or int: the grid spacing")
    log: bool = Field(False, description="with int: sample on a log scale")
    when: Optional[dict[str, Union[Scalar, list[Scalar]]]] = Field(
        None, description="only when these space keys take these values, e.g. {optimizer.class_name: muon}")

    @property
    def kind(self) -> str:
        return next(k for k in ("log_uniform", "uniform", "int", "choice") if self.bounds_of(k) is not None)

    def bounds_of(self, kind: str) -> Any:
        return getattr(self, "int_" if kind == "int" else kind)

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        kinds = [k for k in ("log_uniform", "uniform", "int", "choice") if self.bounds_of(k) is not None]
        if len(kinds) != 1:
            got = "none" if not kinds else " and ".join(kinds)
            raise ValueError(f"give exactly one of log_uniform, uniform, int or choice (got {got})")
        kind = kinds[0]
        if kind == "choice":
            values = self.choice or []
            if not values:
                raise ValueError("choice: the list is empty; give at least one value")
            if len({json.dumps(v) for v in values}) != len(values):
                raise ValueError(f"choice: {show(values)} repeats a value; give each once")
        else:
            low, high = self.bounds_of(kind)
            if not low < high:
                raise ValueError(f"{kind}: low {show(low)} is not below high {show(high)}; give [low, high] with "
                                 f"low < high (a fixed value belongs in params.yaml)")
            if kind == "log_uniform" and low <= 0:
                raise ValueError(f"log_uniform: low {show(low)} is not above 0; a log scale needs low > 0")
            if kind == "int" and self.log and low < 1:
                raise ValueError(f"int: low {show(low)} with log: true; a log scale needs low >= 1")
        if self.step is not None and kind not in ("uniform", "int"):
            raise ValueError(f"step applies to uniform or int, not {kind}")
        if self.step is not None and self.log:
            raise ValueError("step and log cannot be combined (Optuna samples a log scale without steps)")
        if kind == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"step {show(self.step)} with int: use a whole number")
        if self.log and kind != "int":
            raise ValueError(f"log applies to int; use log_uniform instead of {kind} with log")
        return self

    def candidates(self) -> list[Any]:
        """The values to check against the params before any trial: the bounds, or every choice."""
        if self.kind == "choice":
            return list(self.choice or [])
        low, high = self.bounds_of(self.kind)
        return [low, high]

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous range."""
        if self.kind == "choice":
            return list(self.choice or [])
        low, high = self.bounds_of(self.kind)
        if self.kind == "int":
            return list(range(low, high + 1, int(self.step or 1)))
        if self.step is not None:
            count = int((high - low) / self.step + 1e-9)
            return [low + i * self.step for i in range(count + 1)]
        return None


class PrunerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "median"
    options: dict[str, Any] = Field(default_factory=dict)


class SweepSpec(BaseModel):
    """``sweep.yaml``: the study's name, its objective, its budget and its search space."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="kiwi-pipe-optim sweep.yaml")

    name: str = Field(description="the study's name; trial N is the DVC experiment '<name>-<N>'")
    metric: str = Field(description="a key of metrics.json (or a metric the run logs), e.g. val_loss")
    direction: Literal["minimize", "maximize"] = "minimize"
    trials: int = Field(ge=1, le=100_000, description="trials that finish (COMPLETE or PRUNED)")
    space: dict[str, Dimension] = Field(description="params keys by their DVC name: their ranges")
    sampler: str = Field("tpe", json_schema_extra={"enum": list(SAMPLERS)})
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, description=f"one of {', '.join(PRUNERS)}, or "
                               "{name: {option: value}}, e.g. {median: {n_startup_trials: 2}}")
    seed: Optional[int] = Field(None, description="the sampler's seed, for a study that can be run again alike")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or re.fullmatch(NAME_PATTERN, value) is None:
            raise ValueError(f"{show(value)} is not a study name; use letters, digits, '-' and '_' (up to 64), "
                             f"such as lr-search")
        return value

    @field_validator("trials", mode="before")
    @classmethod
    def _trials(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
            raise ValueError(f"{show(value)} is not a number of trials; use a whole number from 1 to 100000")
        return value

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{show(value)} is not a metric name; use a key of metrics.json such as val_loss")
        return value

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: Any) -> Any:
        if value not in ("minimize", "maximize"):
            raise ValueError(f"{show(value)} is not a direction; use minimize or maximize")
        return value

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler(cls, value: Any) -> Any:
        if value not in SAMPLERS:
            hint = did_you_mean(value, SAMPLERS) if isinstance(value, str) else ""
            raise ValueError(f"unknown sampler {show(value)}{hint}; choose one of: {choices(SAMPLERS)}")
        return value

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner(cls, value: Any) -> Any:
        if isinstance(value, str) or value is None:
            name, options = value or "none", {}
        elif isinstance(value, dict) and set(value) == {"name", "options"}:  # as a study records it
            name, options = value["name"], value["options"]
        elif isinstance(value, dict) and len(value) == 1:
            name, options = next(iter(value.items()))
            options = options or {}
        else:
            raise ValueError(f"{show(value)} is not a pruner; use a name ({', '.join(PRUNERS)}) or "
                             f"{{name: {{option: value}}}}")
        if name not in PRUNERS:
            hint = did_you_mean(name, PRUNERS) if isinstance(name, str) else ""
            raise ValueError(f"unknown pruner {show(name)}{hint}; choose one of: {choices(PRUNERS)}")
        if not isinstance(options, dict):
            raise ValueError(f"the options of {name} are {show(options)}; give a mapping such as {{n_startup_trials: 2}}")
        from ..study.storage import make_pruner

        try:
            make_pruner(name, options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} does not take {show(options)} ({str(e).splitlines()[0][:160]})") from None
        return {"name": name, "options": options}

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, Dimension]) -> dict[str, Dimension]:
        if not value:
            raise ValueError("the space is empty; name at least one params key, such as optimizer.learning_rate")
        return value

    @model_validator(mode="after")
    def _conditions(self) -> "SweepSpec":
        for key, dim in self.space.items():
            for other, wanted in (dim.when or {}).items():
                target = self.space.get(other)
                if target is None or target.kind != "choice" or other == key:
                    raise ValueError(f"space.{key}.when: {other!r} is not a choice of this space; 'when' names "
                                     f"another key with a choice list, such as optimizer.class_name")
                for w in wanted if isinstance(wanted, list) else [wanted]:
                    if w not in (target.choice or []):
                        raise ValueError(f"space.{key}.when: {show(w)} is not a choice of {other} "
                                         f"({show(target.choice)})")
                if target.when:
                    raise ValueError(f"space.{key}.when: {other} has a 'when' of its own; one level is allowed")
        if self.sampler == "grid":
            continuous = [k for k, d in self.space.items() if d.grid() is None]
            if continuous:
                raise ValueError(f"sampler: grid needs a finite set of values, and {', '.join(continuous)} is a "
                                 f"continuous range; give it a step or a choice list, or use tpe")
        return self

    def ordered(self) -> list[tuple[str, Dimension]]:
        """Keys without a condition first, so the choices a condition reads are drawn before it."""
        return sorted(self.space.items(), key=lambda item: item[1].when is not None)

    def digest(self) -> str:
        """What a study is bound to: a study resumed under a changed objective or space would mix
        trials that answer different questions."""
        document = self.model_dump(mode="json", include={"metric", "direction", "space"}, by_alias=True)
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def sweep_schema() -> dict[str, Any]:
    return SweepSpec.model_json_schema(by_alias=True)


def load_sweep(path: str | Path, params_path: str | Path = "params.yaml") -> SweepSpec:
    """Read and check a sweep file, and every key, bound and choice of its space against the
    params file the trials will change.

    Raises:
        ConfigError: each problem in one line, ``sweep.yaml:line: dotted.path: message``.
    """
    data, lines = read_params(path)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e)).with_source(str(path), lines) from None
    params, _ = read_params(params_path)
    problems = check_against(spec, params, str(params_path))
    if problems:
        raise ConfigError(problems).with_source(str(path), lines)
    return spec


def _problems(error: ValidationError) -> list[Problem]:
    """pydantic's errors in our words; an unknown key of a range lists a range's keys."""
    problems = []
    for err, problem in zip(error.errors(), problems_from(error, SweepSpec, "")):
        path = problem.path.strip(".")
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 3 and err["loc"][0] == "space":
            allowed = ["log_uniform", "uniform", "int", "choice", "step", "log", "when"]
            name = str(err["loc"][-1])
            problem = Problem(path, f"unknown key{did_you_mean(name, allowed)}; allowed keys: {', '.join(allowed)}")
        problems.append(Problem(path, problem.message))
    return problems


def in_params(params: dict[str, Any], key: str) -> bool:
    try:
        find_section(params, key)
        return True
    except KeyError:
        return False


def _section_model(key: str) -> tuple[str, Any] | None:
    section = key.split(".", 1)[0]
    model = _SECTION_MODELS.get(section)
    return (section, model) if model is not None else None


def is_field(key: str) -> bool:
    """Whether ``key`` is a field the params' section accepts though the file does not set it
    (``optimizer.momentum``): DVC then needs ``-S +key=value``."""
    found = _section_model(key)
    if found is None or key.count(".") != 1:
        return False
    return key.split(".", 1)[1] in found[1].model_fields


def check_against(spec: SweepSpec, params: dict[str, Any], params_name: str) -> list[Problem]:
    """Every space key is a key of the params (or a field of its section), and every bound or
    choice is a value its section accepts, with the values its condition implies."""
    problems: list[Problem] = []
    flat_keys = _dotted_keys(params)
    for key, dim in spec.space.items():
        path = f"space.{key}"
        if not in_params(params, key) and not is_field(key):
            problems.append(Problem(path, f"not a key of {params_name}{did_you_mean(key, flat_keys)}; name a key "
                                          f"it holds, by its DVC name (section.field)"))
            continue
        found = _section_model(key)
        if found is None:
            continue  # a group of the user's own: nothing here knows its types
        section, model = found
        for value in dim.candidates():
            trial = {**{k: (v if not isinstance(v, list) else v[0]) for k, v in (dim.when or {}).items()}, key: value}
            body = _with_values(params, trial).get(section)
            if not isinstance(body, dict):
                continue
            try:
                model.model_validate(body)
            except ValidationError as e:
                errors = problems_from(e, model, section)
                own = [p for p in errors if p.path == key] or errors
                problems.append(Problem(path, f"{show(value)} is refused by {params_name}: {own[0]}"))
                break
    return problems


def _with_values(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(params, default=str))
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[last] = value
    return out


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix[:-1]] if prefix else []
    keys: list[str] = []
    for k, v in node.items():
        keys.extend(_dotted_keys(v, f"{prefix}{k}."))
    return keys
