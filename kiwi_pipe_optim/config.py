"""``OptimizerConfig``: the ``optimizer:`` section of ``params.yaml``, validated.

Importing this module costs only pydantic: ``kiwi-optim validate`` and editors depend on that.
Every message names the dotted field, the bad value and what is allowed, and all problems of one
section are reported at once. Validation only raises; what is merely suspicious is returned by
:func:`kiwi_pipe_optim.lint.lint`, so it reaches the user once, through whoever called it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import ConfigError, Problem, choices, did_you_mean, show
from .fields import (DecayFactor, GroupLearningRate, GroupName, LearningRate, MetricName, OptionalLearningRate,
                     Patience, Problems, Scale, TrainingSteps, WeightDecay, mode_name, one_of, option_value, ranged,
                     written_as_one)
from .params_file import SECTION, find_section, missing_section, problems_from, read_params
from .phases import Phases
from .resolve import resolve, warmup_too_long
from .resolved import ResolvedSchedule
from .schedule_checks import phase_problems, schedule_problems
from .schedule_fields import ScheduleFields
from .schedules import DECAY_SCHEDULE, NO_SCHEDULE, SCHEDULE_SPECS
from .specs import IMPLEMENTATIONS, OPTIMIZER_SPECS, RETIRED, OptimizerSpec, is_import_path, optimizer_spec


ScheduleName = Annotated[Optional[str], one_of(SCHEDULE_SPECS, "schedule")]
Implementation = Annotated[str, one_of(IMPLEMENTATIONS, "implementation", ", ".join(IMPLEMENTATIONS))]
Mode = Annotated[str, BeforeValidator(mode_name)]
# The suffix of a Muon group's AdamW half (kiwi_pipe_optim.muon.ADAMW_SUFFIX; that module imports torch).
ADAMW_HALF = "/adamw"
MUON = "muon"


LayerDecay = Annotated[Optional[float], ranged("use a factor in (0, 1] such as 0.75", 0.0, 1.0, open_low=True)]
LoadPath = Annotated[Optional[Path], BeforeValidator(lambda value: _load_exists(value))]
WeightDecayExclude = Annotated[str, one_of(("auto", "none"), "weight_decay_exclude rule", "auto, none")]
# Options that have a field of their own, or that optimizer.implementation chooses.
_NOT_OPTIONS = {"lr": "set it as optimizer.learning_rate, not as an option",
                "weight_decay": "set it as optimizer.weight_decay, not as an option",
                **{k: "chosen by optimizer.implementation (auto, fused, foreach, loop)"
                   for k in ("fused", "foreach", "capturable", "differentiable")}}


class GroupRule(BaseModel):
    """One declarative param-group rule: parameters whose name (or an enclosing module's name)
    matches ``match`` get this group's LR and weight decay. The first matching rule wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: GroupName = Field(description="Group name; LR metrics are logged as lr/<name>.")
    match: Union[str, list[str]] = Field(description="Glob(s) on parameter or module names, e.g. 'encoder' or '*.bias'.")
    lr: GroupLearningRate = Field(None, description="This group's learning rate.")
    lr_scale: Scale = Field(None, description="This group's LR as a multiple of learning_rate.")
    weight_decay: WeightDecay = Field(
        None, description="This group's weight decay; default: optimizer.weight_decay, and 0 for biases "
        "and normalisation layers.")
    muon: Optional[bool] = Field(
        None, description="class_name muon only: true sends this group's parameters (2-D matrices) to Muon, false "
        "to AdamW; default: 2-D hidden matrices to Muon, embeddings, the head and 1-D parameters to AdamW.")

    @field_validator("match", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> list[str]:
        globs = [value] if isinstance(value, str) else value
        if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
            raise ValueError(f"{show(value)} is not a glob; use a pattern such as 'encoder' or '*.bias', or a list")
        return globs

    @model_validator(mode="after")
    def _one_lr(self) -> "GroupRule":
        if self.lr is not None and self.lr_scale is not None:
            raise Problems([Problem("lr_scale", "give lr or lr_scale, not both")])
        return self


class OptimizerConfig(ScheduleFields):
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

    key_order = ("class_name", "learning_rate", "encoder_learning_rate", "warmup_steps", "training_steps",
                 "learning_rate_decay", "learning_rate_decay_start", "load", "scheduler", "weight_decay",
                 "weight_decay_exclude", "options", "implementation", "monitor", "mode", "power", "final_lr_ratio",
                 "timescale")

    class_name: str = Field(description="Optimizer name, a key of OPTIMIZERS_MAPPING, or any torch.optim.Optimizer "
                            "subclass as 'package.module:ClassName'.",
                            json_schema_extra={"anyOf": [{"enum": sorted(OPTIMIZER_SPECS)},
                                                         {"pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"}]})
    learning_rate: LearningRate = Field(description="Starting learning rate (a scale for noam). Typical: sgd 1, "
                                        "adagrad 0.1, adadelta 1, adam 0.001.")
    encoder_learning_rate: OptionalLearningRate = Field(
        None, description="Learning rate of the model's `encoder` parameters; the rest keep learning_rate.")
    training_steps: TrainingSteps = Field(
        None, ge=1, description="Total optimizer steps of the run; by default what the trainer will run.")
    learning_rate_decay: DecayFactor = Field(
        1.0, description="LR factor of plateau, step, multistep and exponential (new_lr = lr * factor); absent "
        "scheduler: plateau when 0 < factor < 1.")
    learning_rate_decay_start: Patience = Field(
        2, description="Reduce-on-plateau patience: epochs without improvement before reducing.")
    load: LoadPath = Field(None, description="File written by kiwi_pipe_optim.save_state to resume optimizer "
                           "state from.")
    scheduler: ScheduleName = Field(
        None, description="LR schedule; when absent: noam for noam, linear for adamw, plateau when "
        "0 < learning_rate_decay < 1, else none.", json_schema_extra={"enum": sorted(SCHEDULE_SPECS)})
    weight_decay: WeightDecay = Field(None, description="Weight decay; absent: torch's default.")
    weight_decay_exclude: WeightDecayExclude = Field(
        "auto", description="auto: no weight decay for biases, 1-D parameters, normalisation layers and the names "
        "a module lists in no_weight_decay() (as timm and transformers); none: decay every parameter (OpenKiwi).",
        json_schema_extra={"enum": ["auto", "none"]})
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword options of the optimizer (betas, eps, momentum, ...).")
    implementation: Implementation = Field(
        "auto", description="Optimizer kernel: auto picks the fastest correct one (fused where supported).",
        json_schema_extra={"enum": list(IMPLEMENTATIONS)})
    monitor: MetricName = Field("val_loss", description="Metric watched by the plateau scheduler.")
    mode: Mode = Field(
        "min", description="Whether the monitored metric improves when it goes down or up.",
        json_schema_extra={"enum": ["min", "max"]})
    phases: Phases = None
    param_groups: Optional[list[GroupRule]] = Field(
        None, description="Ordered param-group rules, first match wins; the rest form the group 'default'.")
    layer_decay: LayerDecay = Field(
        None, description="Layer-wise LR decay (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT): with L blocks, "
        "block i gets lr * layer_decay^(L + 1 - i), embeddings (layer 0) the lowest, the head (L + 1) the full LR; "
        "groups become <group>/layer_<i>.")

    # ``warmup_steps: 1`` and ``1.0`` validate to the same value; lint tells them apart.
    _warmup_written_as_one: bool = PrivateAttr(False)
    _reported: set = PrivateAttr(default_factory=set)

    @model_validator(mode="wrap")
    @classmethod
    def _as_written(cls, data: Any, handler: Any) -> "OptimizerConfig":
        config = handler(data)
        if isinstance(data, Mapping):
            config._warmup_written_as_one = written_as_one(data.get("warmup_steps"))
        return config

    @field_validator("class_name", mode="before")
    @classmethod
    def _known_optimizer(cls, value: Any) -> str:
        if isinstance(value, str) and value in RETIRED:
            raise ValueError(RETIRED[value])
        if is_import_path(value):
            optimizer_spec(value)  # imports the module and reads the class's signature, or says why not
            return value
        if not isinstance(value, str) or value not in OPTIMIZER_SPECS:
            raise ValueError(f"unknown optimizer {show(value)}{did_you_mean(value, OPTIMIZER_SPECS)}; "
                             f"choose one of: {choices(OPTIMIZER_SPECS)}, or 'package.module:ClassName'")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        return checked_options(value, info.data.get("class_name"))

    @model_validator(mode="after")
    def _consistent(self) -> "OptimizerConfig":
        problems = _inconsistencies(self)
        if problems:
            raise Problems(problems)
        return self

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        return optimizer_spec(self.class_name)

    @property
    def schedule_name(self) -> str:
        """The explicit ``scheduler``, or OpenKiwi's rule when it is absent."""
        if self.scheduler is not None:
            return self.scheduler
        if self.optimizer_spec.default_schedule is not None:
            return self.optimizer_spec.default_schedule
        return DECAY_SCHEDULE if 0 < self.learning_rate_decay < 1 else NO_SCHEDULE

    @property
    def warmup_written_as_one(self) -> bool:
        """``warmup_steps: 1`` as an integer: OpenKiwi's "the whole run", rarely what is meant."""
        return self._warmup_written_as_one

    def group_learning_rates(self) -> dict[str, float]:
        """The base LR of every param group the config declares, ``default`` last."""
        rates: dict[str, float] = {}
        for rule in self.param_groups or ():
            rates[rule.name] = rule.lr if rule.lr is not None else self.learning_rate * (rule.lr_scale or 1.0)
        if not self.param_groups and self.encoder_learning_rate is not None:
            rates["encoder"] = self.encoder_learning_rate
        rates["default"] = self.learning_rate
        ratio = self.adamw_lr_ratio
        if ratio is not None:  # Muon: each group's AdamW half (embeddings, head, 1-D parameters)
            rates.update({f"{name}{ADAMW_HALF}": lr * ratio for name, lr in list(rates.items())})
        return rates

    @property
    def adamw_lr_ratio(self) -> float | None:
        """Muon only: the AdamW half's LR as a fraction of each group's."""
        if self.class_name != MUON:
            return None
        return float(self.options.get("adamw_lr_ratio", self.optimizer_spec.options["adamw_lr_ratio"].default))

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the torch constructor, presets first, then the user's options."""
        kwargs: dict[str, Any] = {"lr": self.learning_rate, **self.optimizer_spec.presets, **self.options}
        if self.weight_decay is not None:
            kwargs["weight_decay"] = self.weight_decay
        return kwargs

    def resolve(self, training_steps: int | None = None, model_size: int | None = None) -> ResolvedSchedule:
        """Concrete step counts for this run; see :func:`kiwi_pipe_optim.resolve.resolve`."""
        return resolve(self, training_steps, model_size)

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
            raise ConfigError(Problem(section, f"expected a mapping of optimizer fields, got {got}; "
                                               f"write at least 'class_name:' and 'learning_rate:' under it"))
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ConfigError(problems_from(e, cls, section)) from None


def _load_exists(value: Any) -> Optional[Path]:
    fix = "give a file written by kiwi_pipe_optim.save_state"
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ValueError(f"{show(value)} is not a file path; {fix}")
    if not Path(value).is_file():
        raise ValueError(f"{show(str(value))} does not exist; {fix}")
    return Path(value)


def checked_options(value: Any, class_name: str | None) -> dict[str, Any]:
    """``optimizer.options`` checked against what the class accepts, every problem at once."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{show(value)} is not a mapping; use keyword options such as {{eps: 1e-08}}")
    if class_name is None:  # the class name is wrong; that is reported on its own
        return dict(value)
    spec = optimizer_spec(class_name)
    problems, checked = [], {}
    for key, option in value.items():
        if key in _NOT_OPTIONS:
            problems.append(Problem(str(key), _NOT_OPTIONS[key]))
        elif key not in spec.options and not spec.open_options:
            problems.append(Problem(str(key), f"not an option of {spec.name}{did_you_mean(key, spec.options)}; "
                                              f"{spec.name} accepts: {choices(spec.options)}"))
        else:
            try:
                checked[key] = option_value(spec.options[key].kind if key in spec.options else "any", option)
            except ValueError as e:
                problems.append(Problem(str(key), str(e)))
    if problems:
        raise Problems(problems)
    return checked


def _inconsistencies(config: OptimizerConfig) -> list[Problem]:
    """Fields that are valid alone but not together."""
    problems: list[Problem] = []
    spec, schedule, sspec = config.optimizer_spec, config.schedule_name, config.schedule_spec
    if config.weight_decay is not None and not spec.weight_decay:
        problems.append(Problem("weight_decay", f"{spec.name} has no weight decay; remove the key"))
    if config.implementation in ("fused", "foreach") and not getattr(spec, config.implementation):
        able = [s.name for s in OPTIMIZER_SPECS.values() if getattr(s, config.implementation)]
        problems.append(Problem("implementation", f"{spec.name} has no {config.implementation} implementation; use "
                                f"auto or loop, or an optimizer that has one: {choices(able)}"))
    if sspec.needs_decay_factor and not 0 < config.learning_rate_decay < 1:
        problems.append(Problem("learning_rate_decay", f"{show(config.learning_rate_decay)} does not reduce the LR; "
                                f"the {schedule} scheduler needs a factor in (0, 1) such as 0.5"))
    if sspec.needs_warmup and config.warmup_steps is None:
        problems.append(Problem("warmup_steps", f"required by the {schedule} schedule; use a step count such as 4000"))
    if isinstance(config.warmup_steps, int) and config.training_steps is not None \
            and config.warmup_steps > config.training_steps:
        problems.append(warmup_too_long(config.warmup_steps, config.training_steps))
    split = [k for k in ("param_groups", "encoder_learning_rate", "layer_decay") if getattr(config, k) is not None]
    if spec.single_group and split:
        problems.append(Problem(split[0], f"{spec.name} takes one param group; remove {' and '.join(split)}, or "
                                          f"choose another optimizer"))
    for i, rule in enumerate(config.param_groups or ()):
        if rule.muon is not None and config.class_name != MUON:
            problems.append(Problem(f"param_groups.{i}.muon", f"only class_name muon splits groups between Muon "
                                    f"and AdamW; remove the key for {config.class_name}"))
    names = [rule.name for rule in config.param_groups or ()]
    for i, name in enumerate(names):
        if name in names[:i] or name == "default":
            problems.append(Problem(f"param_groups.{i}.name", f"{show(name)} is used twice (the parameters no rule "
                                    f"matches form 'default'); give every rule its own name"))
    if names and config.encoder_learning_rate is not None:
        problems.append(Problem("encoder_learning_rate", "set together with param_groups; use a rule "
                                "{name: encoder, match: encoder, lr: ...} instead"))
    problems.extend(schedule_problems(config, config.learning_rate, config.training_steps))
    problems.extend(phase_problems(config))
    return problems


def load_config(path: str | Path = "params.yaml", section: str = SECTION) -> OptimizerConfig:
    """Read and validate the ``optimizer`` section of a params file.

    ``section`` may be a dotted location: OpenKiwi's own files keep it at ``system.optimizer``.

    Example:
        >>> cfg = load_config("params.yaml")  # doctest: +SKIP
        >>> cfg = load_config("openkiwi/predictor.yaml", section="system.optimizer")  # doctest: +SKIP

    Raises:
        ConfigError: with ``file:line: optimizer.field: message`` lines for every problem.
    """
    data, lines = read_params(path)
    try:
        value = find_section(data, section)
    except KeyError:
        raise ConfigError(missing_section(data, section)).with_source(str(path), lines) from None
    try:
        return OptimizerConfig.parse(value, section)
    except ConfigError as e:
        raise e.with_source(str(path), lines) from None
