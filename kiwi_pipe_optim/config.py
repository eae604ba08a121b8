"""``OptimizerConfig``: the ``optimizer:`` section of ``params.yaml``, validated.

Importing this module costs only pydantic: ``kiwi-optim validate`` and editors depend on that.
Every message names the dotted field, the bad value and what is allowed, and all problems of one
section are reported at once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ConfigError, Problem, choices, did_you_mean
from .specs import IMPLEMENTATIONS, OPTIMIZER_SPECS, SCHEDULE_SPECS, OptimizerSpec

logger = logging.getLogger("kiwi_pipe_optim")

SECTION = "optimizer"


class _Problems(ValueError):
    """Several problems found by one validator, each with a path relative to the section."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def show(value: Any) -> str:
    """A value as a user wrote it, short enough for a one-line message."""
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
    elif isinstance(value, float):
        text = str(value)  # nan, inf, -inf
    return text if len(text) <= 200 else text[:197] + "..."


def _number(value: Any) -> float | int:
    """A number, also from the strings YAML 1.1 loaders produce for ``1e-5`` or DVC's ``-S``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{show(value)} is not a number")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{show(value)} is not a number") from None
    return value


def _positive_float(value: Any, example: str) -> float:
    try:
        number = float(_number(value))
    except ValueError as e:
        raise ValueError(f"{e}; use a positive float such as {example}") from None
    except OverflowError:
        raise ValueError(f"{show(value)} is too large; use a positive float such as {example}") from None
    if not math.isfinite(number):
        raise ValueError(f"{show(number)} is not a finite number; use a positive float such as {example}")
    if number <= 0:
        raise ValueError(f"{show(value)} is not positive; use a positive float such as {example}")
    return number


def _whole(value: Any, minimum: int, what: str) -> int:
    try:
        number = _number(value)
    except ValueError as e:
        raise ValueError(f"{e}; use {what}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{show(value)} is not a whole number; use {what}")
        number = int(number)
    if number < minimum:
        raise ValueError(f"{show(value)} is below {minimum}; use {what}")
    return number


def _ratio(value: Any, low_open: bool = False) -> float:
    allowed = "a number in (0, 1]" if low_open else "a number in [0, 1]"
    try:
        number = float(_number(value))
    except ValueError as e:
        raise ValueError(f"{e}; use {allowed}") from None
    if not (0.0 < number <= 1.0 if low_open else 0.0 <= number <= 1.0):
        raise ValueError(f"{show(value)} is outside {allowed[9:]}; use {allowed}")
    return number


def _option(spec_kind: str, value: Any) -> Any:
    """Check one optimizer keyword option; return it in the type torch expects."""
    if spec_kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{show(value)} is not a boolean; use true or false")
        return value
    if spec_kind == "betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{show(value)} is not a pair; use two numbers in [0, 1) such as [0.9, 0.999]")
        return tuple(_option("beta", v) for v in value)
    try:
        number = float(_number(value))
    except ValueError as e:
        raise ValueError(f"{e}; use a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{show(number)} is not a finite number")
    if spec_kind == "beta" and not 0.0 <= number < 1.0:
        raise ValueError(f"{show(value)} is outside [0, 1); use a number such as 0.9")
    if spec_kind == "positive" and number <= 0:
        raise ValueError(f"{show(value)} is not positive; use a small positive number such as 1e-08")
    if spec_kind == "nonneg" and number < 0:
        raise ValueError(f"{show(value)} is negative; use a number >= 0")
    return number


class GroupRule(BaseModel):
    """One declarative param-group rule: parameters whose name (or an enclosing module's name)
    matches ``match`` get this group's LR and weight decay. The first matching rule wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Group name; LR metrics are logged as lr/<name>.")
    match: Union[str, list[str]] = Field(description="Glob(s) on parameter or module names, e.g. 'encoder' or '*.bias'.")
    lr: Optional[float] = Field(None, description="This group's learning rate.")
    lr_scale: Optional[float] = Field(None, description="This group's LR as a multiple of learning_rate.")
    weight_decay: Optional[float] = Field(
        None, description="This group's weight decay; default: optimizer.weight_decay, and 0 for biases "
        "and normalisation layers.")

    @field_validator("name", mode="before")
    @classmethod
    def _group_name(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or "/" in value:
            raise ValueError(f"{show(value)} is not a group name; use a short name without '/' such as encoder")
        return value

    @field_validator("match", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> list[str]:
        globs = [value] if isinstance(value, str) else value
        if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
            raise ValueError(f"{show(value)} is not a glob; use a pattern such as 'encoder' or '*.bias', or a list")
        return globs

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, value: Any) -> Optional[float]:
        return None if value is None else _positive_float(value, "0.001")

    @field_validator("lr_scale", mode="before")
    @classmethod
    def _scale(cls, value: Any) -> Optional[float]:
        return None if value is None else _positive_float(value, "0.1")

    @field_validator("weight_decay", mode="before")
    @classmethod
    def _decay(cls, value: Any) -> Optional[float]:
        return None if value is None else OptimizerConfig._weight_decay(value)

    @model_validator(mode="after")
    def _one_lr(self) -> "GroupRule":
        if self.lr is not None and self.lr_scale is not None:
            raise _Problems([Problem("lr_scale", "give lr or lr_scale, not both")])
        return self


class OptimizerConfig(BaseModel):
    """The ``optimizer:`` section of ``params.yaml`` (OpenKiwi's format, plus explicit choices).

    Unknown keys are rejected. Numbers written as strings (``"1e-5"``, as YAML 1.1 loaders and
    DVC's ``--set-param`` produce them) are accepted. The model is frozen: ``from_config`` and
    everything else only read it.

    Example:
        >>> cfg = OptimizerConfig(class_name="adamw", learning_rate="1e-5", warmup_steps=0.1,
        ...                       training_steps=12000)
        >>> cfg.schedule_name, cfg.resolve().warmup_steps
        ('linear', 1200)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_name: str = Field(
        description="Optimizer name, a key of OPTIMIZERS_MAPPING.",
        json_schema_extra={"enum": sorted(OPTIMIZER_SPECS)},
    )
    learning_rate: float = Field(
        description="Starting learning rate (a scale for noam). Typical: sgd 1, adagrad 0.1, "
        "adadelta 1, adam 0.001."
    )
    encoder_learning_rate: Optional[float] = Field(
        None, description="Learning rate of the model's `encoder` parameters; the rest keep learning_rate."
    )
    warmup_steps: Optional[Union[int, float]] = Field(
        None,
        description="Warm-up length: a whole number of optimizer steps, or a fraction in [0, 1] "
        "of training_steps (1 means the whole run).",
    )
    training_steps: Optional[int] = Field(
        None, description="Total optimizer steps of the run; by default what the trainer will run.", ge=1
    )
    learning_rate_decay: float = Field(
        1.0, description="Reduce-on-plateau factor (new_lr = lr * factor); used when 0 < factor < 1."
    )
    learning_rate_decay_start: int = Field(
        2, description="Reduce-on-plateau patience: epochs without improvement before reducing."
    )
    load: Optional[Path] = Field(
        None, description="File written by kiwi_pipe_optim.save_state to resume optimizer state from."
    )
    scheduler: Optional[str] = Field(
        None,
        description="LR schedule; when absent: noam for noam, linear for adamw, plateau when "
        "0 < learning_rate_decay < 1, else none.",
        json_schema_extra={"enum": sorted(SCHEDULE_SPECS)},
    )
    weight_decay: Optional[float] = Field(None, description="Weight decay; absent: torch's default.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword options of the optimizer (betas, eps, momentum, ...)."
    )
    implementation: str = Field(
        "auto",
        description="Optimizer kernel: auto picks the fastest correct one (fused where supported).",
        json_schema_extra={"enum": list(IMPLEMENTATIONS)},
    )
    monitor: str = Field("val_loss", description="Metric watched by the plateau scheduler.")
    mode: str = Field("min", description="Whether the monitored metric improves when it goes down or up.",
                      json_schema_extra={"enum": ["min", "max"]})
    power: Optional[float] = Field(None, description="Exponent of the polynomial schedule (default 1).")
    final_lr_ratio: Optional[float] = Field(
        None, description="LR at the end of linear/cosine/polynomial decay, as a fraction of the peak (default 0)."
    )
    param_groups: Optional[list[GroupRule]] = Field(
        None, description="Ordered param-group rules, first match wins; the rest form the group 'default'."
    )

    # -- fields -----------------------------------------------------------------------------

    @field_validator("class_name", mode="before")
    @classmethod
    def _known_optimizer(cls, value: Any) -> str:
        if value not in OPTIMIZER_SPECS:
            raise ValueError(
                f"unknown optimizer {show(value)}{did_you_mean(value, OPTIMIZER_SPECS)}; "
                f"choose one of: {choices(OPTIMIZER_SPECS)}"
            )
        return value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _known_schedule(cls, value: Any) -> Optional[str]:
        if value is not None and value not in SCHEDULE_SPECS:
            raise ValueError(
                f"unknown schedule {show(value)}{did_you_mean(value, SCHEDULE_SPECS)}; "
                f"choose one of: {choices(SCHEDULE_SPECS)}"
            )
        return value

    @field_validator("implementation", mode="before")
    @classmethod
    def _known_implementation(cls, value: Any) -> str:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {show(value)}; choose one of: {', '.join(IMPLEMENTATIONS)}")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> str:
        if value not in ("min", "max"):
            raise ValueError(f"{show(value)} is not a mode; use min (lower is better) or max")
        return value

    @field_validator("monitor", mode="before")
    @classmethod
    def _metric_name(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{show(value)} is not a metric name; use the name the model logs, such as val_loss")
        return value

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _learning_rate(cls, value: Any) -> float:
        return _positive_float(value, "0.001")

    @field_validator("encoder_learning_rate", mode="before")
    @classmethod
    def _encoder_learning_rate(cls, value: Any) -> Optional[float]:
        return None if value is None else _positive_float(value, "1e-05")

    @field_validator("weight_decay", mode="before")
    @classmethod
    def _weight_decay(cls, value: Any) -> Optional[float]:
        if value is None:
            return None
        try:
            number = float(_number(value))
        except ValueError as e:
            raise ValueError(f"{e}; use a number >= 0 such as 0.01") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{show(value)} is not a number >= 0; use a number such as 0.01")
        return number

    @field_validator("learning_rate_decay", mode="before")
    @classmethod
    def _decay(cls, value: Any) -> float:
        try:
            number = float(_number(value))
        except ValueError as e:
            raise ValueError(f"{e}; use a factor in (0, 1) to reduce on plateau, or 1.0 for none") from None
        if not (0.0 <= number <= 1.0):
            raise ValueError(
                f"{show(value)} is outside [0, 1]; use a factor in (0, 1) to reduce on plateau, or 1.0 for none"
            )
        return number

    @field_validator("learning_rate_decay_start", mode="before")
    @classmethod
    def _patience(cls, value: Any) -> int:
        return _whole(value, 0, "a whole number of epochs >= 0 such as 2")

    @field_validator("training_steps", mode="before")
    @classmethod
    def _training_steps(cls, value: Any) -> Optional[int]:
        return None if value is None else _whole(value, 1, "a whole number of optimizer steps >= 1")

    @field_validator("power", mode="before")
    @classmethod
    def _power(cls, value: Any) -> Optional[float]:
        return None if value is None else _positive_float(value, "1.0")

    @field_validator("final_lr_ratio", mode="before")
    @classmethod
    def _final_ratio(cls, value: Any) -> Optional[float]:
        return None if value is None else _ratio(value)

    @field_validator("load", mode="before")
    @classmethod
    def _load_exists(cls, value: Any) -> Optional[Path]:
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"{show(value)} is not a file path; give a file written by kiwi_pipe_optim.save_state")
        if not Path(value).is_file():
            raise ValueError(f"{show(str(value))} does not exist; give a file written by kiwi_pipe_optim.save_state")
        return Path(value)

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def cast_steps(cls, value: Any) -> Optional[Union[int, float]]:
        """OpenKiwi's rule: a value in [0, 1] is a fraction of training_steps, else whole steps."""
        if value is None:
            return None
        allowed = "use a whole number of steps, or a fraction in [0, 1] of training_steps"
        try:
            number = _number(value)
        except ValueError as e:
            raise ValueError(f"{e}; {allowed}") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{show(value)} is not a step count; {allowed}")
        if 0 <= number <= 1:
            if number == 1 and isinstance(number, int):
                logger.warning(
                    "optimizer.warmup_steps: 1 means a fraction of 1.0, i.e. warm-up over the whole "
                    "run (OpenKiwi's rule); write 1.0 to keep it without this warning, or a step count >= 2"
                )
            return float(number)
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(f"{show(value)} is neither a whole number of steps nor a fraction in [0, 1]; {allowed}")
        return int(number)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{show(value)} is not a mapping; use keyword options such as {{eps: 1e-08}}")
        spec = OPTIMIZER_SPECS.get(info.data.get("class_name"))
        if spec is None:  # the class name is wrong; that is reported on its own
            return dict(value)
        problems, checked = [], {}
        for key, option_value in value.items():
            path = str(key)
            if key in ("lr", "weight_decay"):
                field = "learning_rate" if key == "lr" else "weight_decay"
                problems.append(Problem(path, f"set it as optimizer.{field}, not as an option"))
            elif key in ("fused", "foreach", "capturable", "differentiable"):
                problems.append(Problem(path, "chosen by optimizer.implementation (auto, fused, foreach, loop)"))
            elif key not in spec.options:
                problems.append(Problem(
                    path,
                    f"not an option of {spec.name}{did_you_mean(key, spec.options)}; "
                    f"{spec.name} accepts: {choices(spec.options)}",
                ))
            else:
                try:
                    checked[key] = _option(spec.options[key].kind, option_value)
                except ValueError as e:
                    problems.append(Problem(path, str(e)))
        if problems:
            raise _Problems(problems)
        return checked

    # -- the section as a whole ---------------------------------------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> "OptimizerConfig":
        problems: list[Problem] = []
        spec = self.optimizer_spec
        schedule = self.schedule_name
        schedule_spec = SCHEDULE_SPECS[schedule]
        if self.weight_decay is not None and not spec.weight_decay:
            problems.append(Problem("weight_decay", f"{spec.name} has no weight decay; remove the key"))
        if self.implementation in ("fused", "foreach") and not getattr(spec, self.implementation):
            able = [s.name for s in OPTIMIZER_SPECS.values() if getattr(s, self.implementation)]
            problems.append(Problem(
                "implementation",
                f"{spec.name} has no {self.implementation} implementation; use auto or loop, "
                f"or an optimizer that has one: {choices(able)}",
            ))
        if schedule == "plateau" and not 0 < self.learning_rate_decay < 1:
            problems.append(Problem(
                "learning_rate_decay",
                f"{show(self.learning_rate_decay)} does not reduce the LR; the plateau scheduler "
                f"needs a factor in (0, 1) such as 0.5",
            ))
        if schedule_spec.needs_warmup and self.warmup_steps is None:
            problems.append(Problem(
                "warmup_steps", f"required by the {schedule} schedule; use a step count such as 4000"
            ))
        if self.warmup_steps is not None and not schedule_spec.uses_warmup:
            # Safe to ignore, and common after `dvc exp run -S optimizer.class_name=...`: warn only.
            logger.warning(
                "optimizer.warmup_steps: %s is not used by the %s schedule; remove it or choose a schedule "
                "with warm-up: %s", show(self.warmup_steps), schedule,
                choices(n for n, s in SCHEDULE_SPECS.items() if s.uses_warmup),
            )
        if (
            isinstance(self.warmup_steps, int)
            and self.training_steps is not None
            and self.warmup_steps > self.training_steps
        ):
            problems.append(_warmup_too_long(self.warmup_steps, self.training_steps))
        if self.param_groups:
            names = [rule.name for rule in self.param_groups]
            for i, name in enumerate(names):
                if name in names[:i] or name == "default":
                    problems.append(Problem(f"param_groups.{i}.name", f"{show(name)} is used twice (the parameters "
                                            f"no rule matches form 'default'); give every rule its own name"))
            if self.encoder_learning_rate is not None:
                problems.append(Problem("encoder_learning_rate", "set together with param_groups; use a rule "
                                        "{name: encoder, match: encoder, lr: ...} instead"))
        for option in ("power", "final_lr_ratio"):
            if getattr(self, option) is not None and option not in schedule_spec.options:
                users = [n for n, s in SCHEDULE_SPECS.items() if option in s.options]
                problems.append(Problem(
                    option, f"not used by the {schedule} schedule; it applies to: {choices(users)}"
                ))
        if problems:
            raise _Problems(problems)
        return self

    # -- derived values -----------------------------------------------------------------------

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        return OPTIMIZER_SPECS[self.class_name]

    @property
    def schedule_name(self) -> str:
        """The explicit ``scheduler``, or OpenKiwi's rule when it is absent."""
        if self.scheduler is not None:
            return self.scheduler
        if self.class_name == "noam":
            return "noam"
        if self.class_name == "adamw":
            return "linear"
        if 0 < self.learning_rate_decay < 1:
            return "plateau"
        return "none"

    def group_learning_rates(self) -> dict[str, float]:
        """The base LR of every param group the config declares, ``default`` last."""
        rates: dict[str, float] = {}
        if self.param_groups:
            for rule in self.param_groups:
                rates[rule.name] = rule.lr if rule.lr is not None else self.learning_rate * (rule.lr_scale or 1.0)
        elif self.encoder_learning_rate is not None:
            rates["encoder"] = self.encoder_learning_rate
        rates["default"] = self.learning_rate
        return rates

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the torch constructor, presets first, then the user's options."""
        kwargs: dict[str, Any] = {"lr": self.learning_rate, **self.optimizer_spec.presets, **self.options}
        if self.weight_decay is not None:
            kwargs["weight_decay"] = self.weight_decay
        return kwargs

    def resolve(self, training_steps: int | None = None, model_size: int | None = None) -> "ResolvedSchedule":
        """Turn the config into concrete step counts, given what the run knows.

        ``training_steps`` here is the run's own count (what the trainer will step); the config's
        ``training_steps`` wins when set. Fractions of warm-up are rounded to whole steps.

        Raises:
            ConfigError: a value the schedule needs is unknown, or warm-up exceeds training.
        """
        schedule = self.schedule_name
        spec = SCHEDULE_SPECS[schedule]
        total = self.training_steps if self.training_steps is not None else training_steps
        problems: list[Problem] = []
        if total is not None and (isinstance(total, bool) or int(total) != total or total < 1):
            problems.append(Problem(
                "training_steps", f"{show(total)} from the run is not a step count; pass a whole number >= 1"
            ))
            total = None
        total = None if total is None else int(total)
        warmup = 0
        if not spec.uses_warmup:
            pass  # ignored (validation warned); must not demand a step count it will not use
        elif isinstance(self.warmup_steps, float):
            if total is None:
                problems.append(Problem(
                    "warmup_steps",
                    f"{show(self.warmup_steps)} is a fraction of training_steps, which is unknown; "
                    f"set optimizer.training_steps or give warm-up in steps",
                ))
            else:
                warmup = int(round(self.warmup_steps * total))
        elif isinstance(self.warmup_steps, int):
            warmup = self.warmup_steps
            if total is not None and warmup > total:
                problems.append(_warmup_too_long(warmup, total))
        if spec.needs_training_steps and total is None:
            problems.append(Problem(
                "training_steps",
                f"required by the {schedule} schedule and not known; set optimizer.training_steps, "
                f"or pass the run's step count (training_data_size)",
            ))
        if spec.needs_warmup and warmup < 1 and not problems:
            problems.append(Problem(
                "warmup_steps", f"{show(self.warmup_steps)} gives {warmup} steps; the {schedule} schedule "
                f"needs at least 1 step of warm-up",
            ))
        if spec.needs_model_size and (model_size is None or model_size < 1):
            problems.append(Problem(
                "model_size", f"{show(model_size)} is not a model size; the {schedule} schedule needs "
                f"the model's hidden size (an integer >= 1)",
            ))
        if problems:
            raise ConfigError([Problem(f"{SECTION}.{p.path}", p.message) for p in problems])
        return ResolvedSchedule(
            name=schedule,
            interval=spec.interval,
            warmup_steps=warmup,
            training_steps=total,
            model_size=model_size if spec.needs_model_size else None,
            power=1.0 if self.power is None else self.power,
            final_lr_ratio=0.0 if self.final_lr_ratio is None else self.final_lr_ratio,
            factor=self.learning_rate_decay,
            patience=self.learning_rate_decay_start,
            monitor=self.monitor,
            mode=self.mode,
        )

    @classmethod
    def parse(cls, data: Any, section: str = SECTION) -> "OptimizerConfig":
        """Validate a mapping (one section of a params file) into a config.

        Unlike the constructor, failures raise :class:`ConfigError` with one line per problem,
        each path prefixed by ``section``.

        Example:
            >>> OptimizerConfig.parse({"class_name": "adam", "learning_rate": "1e-3"}).learning_rate
            0.001
        """
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else type(data).__name__
            raise ConfigError(Problem(
                section, f"expected a mapping of optimizer fields, got {got}; "
                f"write at least 'class_name:' and 'learning_rate:' under it"
            ))
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ConfigError(problems_from(e, cls, section)) from None


def _warmup_too_long(warmup: int, total: int) -> Problem:
    return Problem(
        "warmup_steps",
        f"{warmup} steps is longer than training_steps ({total}); use at most {total} steps, "
        f"or a fraction in [0, 1]",
    )


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with every step count known: what the run will do, and what gets logged."""

    name: str
    interval: str
    warmup_steps: int
    training_steps: int | None
    model_size: int | None
    power: float = 1.0
    final_lr_ratio: float = 0.0
    factor: float = 1.0
    patience: int = 2
    monitor: str = "val_loss"
    mode: str = "min"


_MISSING_HINTS = {
    "class_name": f"choose one of: {choices(OPTIMIZER_SPECS)}",
    "learning_rate": "use a positive float such as 0.001",
}


def problems_from(error: ValidationError, model: type[BaseModel], section: str) -> list[Problem]:
    """pydantic's errors, rewritten as ``section.field: what is wrong; what is allowed``."""
    problems: list[Problem] = []
    allowed = list(model.model_fields)
    for err in error.errors():
        loc = ".".join(str(part) for part in err["loc"])
        path = f"{section}.{loc}" if loc else section
        kind = err["type"]
        value = err.get("input")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            problems.extend(Problem(f"{path}.{p.path}", p.message) for p in cause.problems)
        elif kind == "extra_forbidden":
            name = str(err["loc"][-1])
            problems.append(Problem(path, f"unknown key{did_you_mean(name, allowed)}; allowed keys: {', '.join(allowed)}"))
        elif kind == "missing":
            hint = _MISSING_HINTS.get(loc, "give a value")
            problems.append(Problem(path, f"required; {hint}"))
        elif cause is not None:
            problems.append(Problem(path, str(cause)))
        elif kind.startswith("int"):
            problems.append(Problem(path, f"{show(value)} is not a whole number; use an integer"))
        elif kind.startswith("float"):
            problems.append(Problem(path, f"{show(value)} is not a number; use a float"))
        elif kind.startswith("string"):
            problems.append(Problem(path, f"{show(value)} is not text; use a string"))
        elif kind.startswith("path"):
            problems.append(Problem(path, f"{show(value)} is not a file path; use a path such as state.pt"))
        else:
            problems.append(Problem(path, f"{show(value)}: {err['msg']}"))
    return problems


# -- reading params files ------------------------------------------------------------------------


def read_params(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML params file; return its data and the line of every dotted key.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text, is not valid YAML, or is not a
            mapping at the top level. The message names the file and, for syntax errors, the line.
    """
    import yaml  # a params file is read rarely; keep the import off the package's import path

    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(Problem("", f"cannot read the params file ({e.strerror or e}); "
                                      f"pass an existing YAML file")) .with_source(source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(Problem("", f"not a text file (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                                      f"a params file is UTF-8 YAML")).with_source(source) from None
    if "\x00" in text:
        raise ConfigError(Problem("", "not a text file (it contains NUL bytes); a params file is UTF-8 YAML")
                          ).with_source(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        problem = Problem("", f"invalid YAML: {what}; fix the syntax (indentation, ':' after keys, closed quotes)",
                          line=mark.line + 1 if mark else None)
        raise ConfigError(problem, source=source) from None
    if data is None:
        raise ConfigError(Problem("", "the file is empty; expected sections such as 'optimizer:'")
                          ).with_source(source)
    if not isinstance(data, dict):
        raise ConfigError(Problem("", f"expected a mapping of sections at the top level, got "
                                      f"{type(data).__name__}")).with_source(source)
    return data, _key_lines(node)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    import yaml

    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            lines[name] = key.start_mark.line + 1
            lines.update(_key_lines(value, name + "."))
    return lines


def load_config(path: str | Path = "params.yaml", section: str = SECTION) -> OptimizerConfig:
    """Read and validate the ``optimizer`` section of a params file.

    Example:
        >>> cfg = load_config("params.yaml")  # doctest: +SKIP

    Raises:
        ConfigError: with ``file:line: optimizer.field: message`` lines for every problem.
    """
    data, lines = read_params(path)
    if section not in data:
        raise ConfigError(Problem(section, f"missing section; add '{section}:' with class_name and "
                                           f"learning_rate")).with_source(str(path))
    try:
        return OptimizerConfig.parse(data[section], section)
    except ConfigError as e:
        raise e.with_source(str(path), lines) from None
