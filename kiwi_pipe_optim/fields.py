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
from .multipliers import DECAY_SHAPES


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


def float_in(value: Any, allowed: str, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
             open_high: bool = False, wrong: str = "", fix: str = "") -> float:
    """``value`` as a finite float within ``low`` and ``high`` (excluded when open), or a message.

    Every bounded number of the section and of the optimizer options is checked here, so that
    they all say the same things in the same words: what is wrong (``wrong``, by default the
    interval missed), then how to fix it (``fix``, by default ``allowed``, which also follows a
    value that is no number or not finite).
    """
    result = _as_float(value, allowed)
    if not math.isfinite(result):
        raise ValueError(f"{show(result)} is not a finite number; {allowed}")
    if result < low or result > high or (open_low and result == low) or (open_high and result == high):
        raise ValueError(f"{show(value)} {wrong or _missed(low, high, open_low, open_high)}; {fix or allowed}")
    return result


def _missed(low: float, high: float, open_low: bool, open_high: bool) -> str:
    if math.isinf(high):
        return "is not positive" if low == 0 and open_low else f"is below {low:g}"
    return f"is outside {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def ranged(allowed: str, low: float = -math.inf, high: float = math.inf, **how: Any) -> Any:
    """An optional field checked by :func:`float_in`."""
    return BeforeValidator(lambda value: None if value is None else float_in(value, allowed, low, high, **how))


def positive_float(example: str) -> Any:
    return ranged(f"use a positive float such as {example}", 0.0, open_low=True)


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


_DECAY_FACTOR = "use a factor in (0, 1) to reduce on plateau, or 1.0 for none"


def _decay_factor(value: Any) -> float:
    return float_in(value, _DECAY_FACTOR, 0.0, 1.0)


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
WeightDecay = Annotated[Optional[float], ranged("use a number >= 0 such as 0.01", 0.0, wrong="is not a number >= 0",
                                                 fix="use a number such as 0.01")]
Ratio = Annotated[Optional[float], ranged("use a number in [0, 1]", 0.0, 1.0)]
DecayFactor = Annotated[float, BeforeValidator(_decay_factor)]
Patience = Annotated[int, whole(0, "a whole number of epochs >= 0 such as 2")]
Timescale = Annotated[Optional[int], whole(1, "a whole number of steps >= 1 such as 10000")]
TrainingSteps = Annotated[Optional[int], whole(1, "a whole number of optimizer steps >= 1")]
MetricName = Annotated[str, _text("a metric name", "the name the model logs, such as val_loss")]
GroupName = Annotated[str, BeforeValidator(_group_name)]


# -- the schedule-specific fields ----------------------------------------------------------------


def steps_of(value: Union[int, float], total: int) -> int:
    """A value read by :func:`cast_steps` as steps: a fraction of ``total`` rounds to whole steps."""
    return int(round(value * total)) if isinstance(value, float) else int(value)


def milestone_problems(values: list, total: Optional[int] = None) -> list[Problem]:
    """Milestones not after the one before them, paths being their index. Without ``total`` only
    counts are compared with counts and fractions with fractions."""
    problems: list[Problem] = []
    last: dict[Any, tuple[int | float, str]] = {}
    for i, value in enumerate(values):
        kind = "step" if total is not None else type(value)
        where = value if total is None else steps_of(value, total)
        said = show(value) if total is None or isinstance(value, int) else f"{show(value)} (step {where} of {total})"
        before = last.get(kind)
        if before is not None and where <= before[0]:
            problems.append(Problem(str(i), f"{said} is not after the milestone before it ({before[1]}); list the "
                                            f"milestones in ascending order, each once"))
        last[kind] = (where, said)
    return problems


def _milestones(value: Any) -> Optional[list[Union[int, float]]]:
    if value is None:
        return None
    allowed = "use ascending steps such as [3000, 6000], or fractions of training_steps such as [0.5, 0.75]"
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{show(value)} is not a list of steps; {allowed}")
    if not value:
        raise ValueError(f"[] has no milestone; {allowed}, or choose another scheduler")
    result, problems = [], []
    for i, item in enumerate(value):
        try:
            if item is None:
                raise ValueError(f"{show(item)} is not a step count; use a whole number of steps, or a fraction "
                                 f"in [0, 1] of training_steps")
            result.append(cast_steps(item))
        except ValueError as e:
            problems.append(Problem(str(i), str(e)))
    problems = problems or milestone_problems(result)
    if problems:
        raise Problems(problems)
    return result


Steps = Annotated[Optional[Union[int, float]], BeforeValidator(cast_steps)]
AbsoluteLR = Annotated[Optional[float], ranged("use a learning rate >= 0 such as 1e-06", 0.0,
                                                wrong="is not a learning rate")]
StepCount = Annotated[Optional[int], whole(1, "a whole number of steps >= 1 such as 1000")]
CycleMult = Annotated[Optional[float], ranged("use a number >= 1 such as 2 (1: cycles of equal length)", 1.0)]
Milestones = Annotated[Optional[list[Union[int, float]]], BeforeValidator(_milestones)]
DecayShape = Annotated[Optional[str], one_of(DECAY_SHAPES, "decay shape", ", ".join(DECAY_SHAPES))]
OptionalDecayFactor = Annotated[Optional[float], ranged(_DECAY_FACTOR, 0.0, 1.0)]


def option_value(kind: str, value: Any) -> Any:
    """One optimizer keyword option of the given kind, in the type torch expects.

    Kinds: ``bool``, ``beta``, ``betas``, ``positive``, ``nonneg``, ``number``, ``count`` (a whole
    number >= 1), ``pair`` / ``triple`` (numbers), ``optional_pair`` (first may be null: Adafactor's
    eps), ``choice:a|b`` (a name, or null when ``null`` is listed), ``any`` (passed as written: an
    import-path optimizer's option of no declared type).
    """
    if kind == "any":
        return value
    if kind.startswith("choice:"):
        allowed = kind[len("choice:"):].split("|")
        if (value is None and "null" in allowed) or (isinstance(value, str) and value in allowed):
            return value
        raise ValueError(f"{show(value)} is not one of: {', '.join(allowed)}")
    if kind in ("pair", "triple", "optional_pair"):
        size = 3 if kind == "triple" else 2
        if not isinstance(value, (list, tuple)) or len(value) != size:
            raise ValueError(f"{show(value)} is not a list of {size} numbers")
        if kind == "optional_pair" and value[0] is None:
            return (None, option_value("positive", value[1]))
        return tuple(option_value("number", v) for v in value)
    if kind == "count":
        whole_value = value if isinstance(value, int) and not isinstance(value, bool) else None
        if whole_value is None or whole_value < 1:
            raise ValueError(f"{show(value)} is not a whole number >= 1")
        return whole_value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{show(value)} is not a boolean; use true or false")
        return value
    if kind == "betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{show(value)} is not a pair; use two numbers in [0, 1) such as [0.9, 0.999]")
        return tuple(option_value("beta", v) for v in value)
    bounds = {"beta": dict(high=1.0, open_high=True, fix="use a number such as 0.9"),
              "positive": dict(open_low=True, fix="use a small positive number such as 1e-08"),
              "nonneg": dict(wrong="is negative", fix="use a number >= 0")}
    return float_in(value, "use a number", 0.0, **bounds[kind]) if kind in bounds else float_in(value, "use a number")
