"""Field types of the optimizer section: numbers as users write them, checked with one-line messages.

YAML 1.1 loaders and ``dvc exp run -S`` hand numbers over as strings (``"1e-5"``), so every
numeric field accepts those. Each type's message says the bad value and what is allowed; pydantic
carries it to :func:`kiwi_pipe_optim.params_file.problems_from`, which adds the dotted path.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional, Union

from pydantic import BeforeValidator

from .errors import Problem, choices, did_you_mean, show


class Problems(ValueError):
    """Several problems found by one validator, each with a path relative to the field."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def number(value: Any) -> float | int:
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


def _as_float(value: Any, allowed: str) -> float:
    """``value`` as a float, or a message that ends with what is allowed."""
    try:
        return float(number(value))
    except ValueError as e:
        raise ValueError(f"{e}; {allowed}") from None
    except OverflowError:
        raise ValueError(f"{show(value)} is too large; {allowed}") from None


def positive_float(example: str) -> Any:
    def check(value: Any) -> Optional[float]:
        if value is None:
            return None
        result = _as_float(value, f"use a positive float such as {example}")
        if not math.isfinite(result):
            raise ValueError(f"{show(result)} is not a finite number; use a positive float such as {example}")
        if result <= 0:
            raise ValueError(f"{show(value)} is not positive; use a positive float such as {example}")
        return result

    return BeforeValidator(check)


def whole(minimum: int, what: str) -> Any:
    def check(value: Any) -> Optional[int]:
        if value is None:
            return None
        try:
            result = number(value)
        except ValueError as e:
            raise ValueError(f"{e}; use {what}") from None
        if isinstance(result, float):
            if not math.isfinite(result) or not result.is_integer():
                raise ValueError(f"{show(value)} is not a whole number; use {what}")
            result = int(result)
        if result < minimum:
            raise ValueError(f"{show(value)} is below {minimum}; use {what}")
        return result

    return BeforeValidator(check)


def _ratio(value: Any) -> Optional[float]:
    if value is None:
        return None
    result = _as_float(value, "use a number in [0, 1]")
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{show(value)} is outside [0, 1]; use a number in [0, 1]")
    return result


def _weight_decay(value: Any) -> Optional[float]:
    if value is None:
        return None
    result = _as_float(value, "use a number >= 0 such as 0.01")
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{show(value)} is not a number >= 0; use a number such as 0.01")
    return result


def _decay_factor(value: Any) -> float:
    allowed = "use a factor in (0, 1) to reduce on plateau, or 1.0 for none"
    result = _as_float(value, allowed)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{show(value)} is outside [0, 1]; {allowed}")
    return result


def cast_steps(value: Any) -> Optional[Union[int, float]]:
    """OpenKiwi's rule: a value in [0, 1] is a fraction of training_steps, else whole steps."""
    if value is None:
        return None
    allowed = "use a whole number of steps, or a fraction in [0, 1] of training_steps"
    try:
        result = number(value)
    except ValueError as e:
        raise ValueError(f"{e}; {allowed}") from None
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{show(value)} is not a step count; {allowed}")
    if result <= 1:
        return float(result)
    if isinstance(result, float) and not result.is_integer():
        raise ValueError(f"{show(value)} is neither a whole number of steps nor a fraction in [0, 1]; {allowed}")
    return int(result)


def written_as_one(value: Any) -> bool:
    """``warmup_steps: 1`` (or ``"1"``), which OpenKiwi reads as the fraction 1.0, not one step."""
    try:
        return isinstance(number(value), int) and number(value) == 1
    except ValueError:
        return False


def one_of(names: Any, what: str, hint: str = "") -> Any:
    """A name from ``names`` (a mapping or a tuple), or a message with the choices and a close match."""
    def check(value: Any) -> Any:
        if value is None or value in names:
            return value
        close = did_you_mean(value, names) if isinstance(value, str) else ""
        listed = choices(names) if hint == "" else hint
        raise ValueError(f"unknown {what} {show(value)}{close}; choose one of: {listed}")

    return BeforeValidator(check)


def mode_name(value: Any) -> str:
    if value not in ("min", "max"):
        raise ValueError(f"{show(value)} is not a mode; use min (lower is better) or max")
    return value


def _text(what: str, example: str) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{show(value)} is not {what}; use {example}")
        return value

    return BeforeValidator(check)


def _group_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise ValueError(f"{show(value)} is not a group name; use a short name without '/' such as encoder")
    return value


LearningRate = Annotated[float, positive_float("0.001")]
OptionalLearningRate = Annotated[Optional[float], positive_float("1e-05")]
GroupLearningRate = Annotated[Optional[float], positive_float("0.001")]
Scale = Annotated[Optional[float], positive_float("0.1")]
Power = Annotated[Optional[float], positive_float("1.0")]
WeightDecay = Annotated[Optional[float], BeforeValidator(_weight_decay)]
Ratio = Annotated[Optional[float], BeforeValidator(_ratio)]
DecayFactor = Annotated[float, BeforeValidator(_decay_factor)]
Patience = Annotated[int, whole(0, "a whole number of epochs >= 0 such as 2")]
Timescale = Annotated[Optional[int], whole(1, "a whole number of steps >= 1 such as 10000")]
TrainingSteps = Annotated[Optional[int], whole(1, "a whole number of optimizer steps >= 1")]
WarmupSteps = Annotated[Optional[Union[int, float]], BeforeValidator(cast_steps)]
MetricName = Annotated[str, _text("a metric name", "the name the model logs, such as val_loss")]
GroupName = Annotated[str, BeforeValidator(_group_name)]


def option_value(kind: str, value: Any) -> Any:
    """One optimizer keyword option of the given kind, in the type torch expects."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{show(value)} is not a boolean; use true or false")
        return value
    if kind == "betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{show(value)} is not a pair; use two numbers in [0, 1) such as [0.9, 0.999]")
        return tuple(option_value("beta", v) for v in value)
    result = _as_float(value, "use a number")
    if not math.isfinite(result):
        raise ValueError(f"{show(result)} is not a finite number")
    if kind == "beta" and not 0.0 <= result < 1.0:
        raise ValueError(f"{show(value)} is outside [0, 1); use a number such as 0.9")
    if kind == "positive" and result <= 0:
        raise ValueError(f"{show(value)} is not positive; use a small positive number such as 1e-08")
    if kind == "nonneg" and result < 0:
        raise ValueError(f"{show(value)} is negative; use a number >= 0")
    return result
