"""LR schedules: pure multiplier functions of the optimizer step, and their registry.

Each function takes the step (an int, or a float64 tensor of many steps) and returns the factor
that multiplies the base learning rate, the contract of ``torch.optim.lr_scheduler.LambdaLR``.
Being module-level functions bound with ``functools.partial``, they pickle (so checkpoints resume)
and evaluate a whole run's curve in one vectorised call, without any optimizer.

Every schedule is one :class:`ScheduleSpec` in :data:`SCHEDULE_SPECS`: what it needs, how it is
built and whether its curve is known before training. Nothing else in the package looks at a
schedule's name. Importing this module does not import torch (validation must answer fast); the
functions import it when they are given tensors or an optimizer.

Warm-up follows the common convention: the factor rises linearly from 0 at step 0 and reaches 1
at step ``warmup``; with ``warmup == 0`` there is none.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

if TYPE_CHECKING:
    import torch

    from .resolve import ResolvedSchedule

Step = Union[int, float, "torch.Tensor"]


class _Scalar:
    where = staticmethod(lambda cond, a, b: a if cond else b)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    cos = staticmethod(math.cos)
    sqrt = staticmethod(math.sqrt)


class _Tensor:
    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        import torch

        return torch.where(cond, a, b)

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        import torch

        return torch.clamp(a, max=b) if isinstance(a, torch.Tensor) else torch.clamp(b, max=a)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        import torch

        return torch.clamp(a, min=b) if isinstance(a, torch.Tensor) else torch.clamp(b, min=a)

    @staticmethod
    def cos(x: Any) -> Any:
        return x.cos()

    @staticmethod
    def sqrt(x: Any) -> Any:
        return x.sqrt()


def _ops(step: Step) -> Any:
    return _Scalar if isinstance(step, (int, float)) else _Tensor


def _warmup(step: Step, warmup: int) -> Step:
    return step / warmup if warmup > 0 else step * 0 + 1.0


def _progress(step: Step, warmup: int, total: int) -> Step:
    """Fraction of the decay phase done, clamped to [0, 1]."""
    ops = _ops(step)
    # Warm-up as long as the run leaves no decay phase: the end value from step ``total`` on.
    done = (step - warmup) / (total - warmup) if total > warmup else step - warmup + 1.0
    return ops.minimum(ops.maximum(done, 0.0), 1.0)


def constant(step: Step, *, warmup: int = 0) -> Step:
    """Linear warm-up to 1, then 1."""
    ops = _ops(step)
    return ops.where(step < warmup, _warmup(step, warmup), step * 0 + 1.0)


def linear(step: Step, *, warmup: int, total: int, final_ratio: float = 0.0) -> Step:
    """Linear warm-up to 1, then linear decay to ``final_ratio`` at ``total`` (and after)."""
    ops = _ops(step)
    decay = 1.0 - (1.0 - final_ratio) * _progress(step, warmup, total)
    return ops.where(step < warmup, _warmup(step, warmup), decay)


def cosine(step: Step, *, warmup: int, total: int, final_ratio: float = 0.0) -> Step:
    """Linear warm-up, then half a cosine from 1 to ``final_ratio`` at ``total`` (Loshchilov &
    Hutter 2017, SGDR, without restarts)."""
    ops = _ops(step)
    cos = 0.5 * (1.0 + ops.cos(math.pi * _progress(step, warmup, total)))
    return ops.where(step < warmup, _warmup(step, warmup), final_ratio + (1.0 - final_ratio) * cos)


def polynomial(step: Step, *, warmup: int, total: int, power: float = 1.0, final_ratio: float = 0.0) -> Step:
    """Linear warm-up, then ``final + (1 - final) * (1 - progress) ** power``."""
    ops = _ops(step)
    decay = final_ratio + (1.0 - final_ratio) * (1.0 - _progress(step, warmup, total)) ** power
    return ops.where(step < warmup, _warmup(step, warmup), decay)


def inverse_sqrt(step: Step, *, warmup: int = 0, timescale: int | None = None) -> Step:
    """Linear warm-up, then decay with the inverse square root of the step (Vaswani et al., 2017).

    ``sqrt(timescale / (step - warmup + timescale))``: 1 when warm-up ends, halved after
    ``3 * timescale`` more steps. ``timescale`` defaults to the warm-up length (``sqrt(warmup /
    step)``), or 1 without warm-up (``1 / sqrt(step + 1)``); transformers' default without warm-up
    is 10,000, a much slower decay.
    """
    ops = _ops(step)
    scale = timescale or max(warmup, 1)
    decay = ops.sqrt(scale / (ops.maximum(step, warmup) - warmup + scale))
    return ops.where(step < warmup, _warmup(step, warmup), decay) if warmup > 0 else decay


def noam(step: Step, *, warmup: int, model_size: int) -> Step:
    """The schedule of "Attention Is All You Need" (Vaswani et al., 2017, eq. 3).

    ``d^-0.5 * min(s^-0.5, s * warmup^-1.5)`` with ``s = step + 1``: linear growth for the first
    ``warmup`` steps, peak at ``s == warmup``, then decay with the inverse square root of the step.
    The base LR multiplies this factor, so it acts as a scale (OpenKiwi used 1 to 2).
    """
    ops = _ops(step)
    s = step + 1.0
    return model_size ** -0.5 * ops.minimum(s ** -0.5, s * warmup ** -1.5)


def no_schedule(step: Step) -> Step:
    """A constant factor of 1."""
    return step * 0 + 1.0


# -- binding a resolved schedule to its multiplier ---------------------------------------------


def _bind_none(r: "ResolvedSchedule") -> Callable[[Step], Step]:
    return no_schedule


def _bind_warmup(fn: Callable[..., Step]) -> Callable[["ResolvedSchedule"], Callable[[Step], Step]]:
    return lambda r: functools.partial(fn, warmup=r.warmup_steps)


def _bind_decay(fn: Callable[..., Step]) -> Callable[["ResolvedSchedule"], Callable[[Step], Step]]:
    return lambda r: functools.partial(fn, warmup=r.warmup_steps, total=r.training_steps,
                                       final_ratio=r.final_lr_ratio)


def _bind_polynomial(r: "ResolvedSchedule") -> Callable[[Step], Step]:
    return functools.partial(polynomial, warmup=r.warmup_steps, total=r.training_steps, power=r.power,
                             final_ratio=r.final_lr_ratio)


def _bind_inverse_sqrt(r: "ResolvedSchedule") -> Callable[[Step], Step]:
    return functools.partial(inverse_sqrt, warmup=r.warmup_steps, timescale=r.timescale)


def _bind_noam(r: "ResolvedSchedule") -> Callable[[Step], Step]:
    return functools.partial(noam, warmup=r.warmup_steps, model_size=r.model_size)


def lambda_scheduler(optimizer: Any, resolved: "ResolvedSchedule") -> Any:
    """A ``LambdaLR`` stepping the resolved schedule's multiplier every optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(resolved))


def plateau_scheduler(optimizer: Any, resolved: "ResolvedSchedule") -> Any:
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=resolved.mode, factor=resolved.factor, patience=resolved.patience
    )


@dataclass(frozen=True)
class ScheduleSpec:
    """A registry entry: how an LR schedule is resolved, built and previewed.

    ``bind`` turns a resolved schedule into its multiplier of the step (its vectorised curve);
    ``None`` means the LR follows a metric during training (reduce-on-plateau), so the curve is
    unknown beforehand and a restored LR cannot be checked against a step. ``build`` makes the
    torch scheduler; ``None`` means no scheduler at all.
    """

    name: str
    description: str
    interval: str  # "step" or "epoch"
    bind: Optional[Callable[["ResolvedSchedule"], Callable[[Step], Step]]]
    build: Optional[Callable[[Any, "ResolvedSchedule"], Any]] = lambda_scheduler
    uses_warmup: bool = True
    needs_training_steps: bool = False
    needs_warmup: bool = False
    needs_model_size: bool = False
    needs_decay_factor: bool = False  # reduce-on-plateau: learning_rate_decay must be in (0, 1)
    monitored: bool = False  # Lightning must be told which logged metric drives it
    options: tuple[str, ...] = ()

    @property
    def previewable(self) -> bool:
        """Whether the LR at every step is known before training (and checkable after a resume)."""
        return self.bind is not None


_SCHEDULES = (
    ScheduleSpec("none", "constant learning rate, no scheduler", "step", _bind_none, build=None, uses_warmup=False),
    ScheduleSpec("constant", "linear warm-up, then constant", "step", _bind_warmup(constant)),
    ScheduleSpec(
        "linear", "linear warm-up from 0, then linear decay to final_lr_ratio at training_steps",
        "step", _bind_decay(linear), needs_training_steps=True, options=("final_lr_ratio",),
    ),
    ScheduleSpec(
        "cosine", "linear warm-up, then half-cosine decay to final_lr_ratio at training_steps",
        "step", _bind_decay(cosine), needs_training_steps=True, options=("final_lr_ratio",),
    ),
    ScheduleSpec(
        "polynomial", "linear warm-up, then (1 - progress)^power decay to final_lr_ratio",
        "step", _bind_polynomial, needs_training_steps=True, options=("power", "final_lr_ratio"),
    ),
    ScheduleSpec(
        "inverse_sqrt", "linear warm-up, then decay proportional to 1/sqrt(step) over timescale", "step",
        _bind_inverse_sqrt, options=("timescale",),
    ),
    ScheduleSpec(
        "noam", "Vaswani et al. (2017): d^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step + 1",
        "step", _bind_noam, needs_warmup=True, needs_model_size=True,
    ),
    ScheduleSpec(
        "plateau", "multiply the LR by learning_rate_decay after learning_rate_decay_start epochs "
        "without improvement of `monitor`", "epoch", None, build=plateau_scheduler, uses_warmup=False,
        needs_decay_factor=True, monitored=True,
    ),
)

SCHEDULE_SPECS: Mapping[str, ScheduleSpec] = MappingProxyType({s.name: s for s in _SCHEDULES})
# OpenKiwi's rule: with no explicit schedule, 0 < learning_rate_decay < 1 means this one.
DECAY_SCHEDULE = next(s.name for s in _SCHEDULES if s.needs_decay_factor)
NO_SCHEDULE = "none"


def list_schedules() -> list[str]:
    """Names accepted by ``optimizer.scheduler``, sorted.

    Example:
        >>> "noam" in list_schedules()
        True
    """
    return sorted(SCHEDULE_SPECS)


def multiplier(resolved: "ResolvedSchedule") -> Callable[[Step], Step]:
    """The picklable multiplier function of a resolved step-wise schedule.

    Example:
        >>> from kiwi_pipe_optim.config import OptimizerConfig
        >>> cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3, scheduler="linear",
        ...                       warmup_steps=10, training_steps=110)
        >>> f = multiplier(cfg.resolve())
        >>> f(5), f(10), f(60), f(110)
        (0.5, 1.0, 0.5, 0.0)
    """
    spec = SCHEDULE_SPECS[resolved.name]
    if spec.bind is None:
        raise ValueError(f"schedule {resolved.name!r} is not a per-step multiplier")
    return spec.bind(resolved)


def evaluate(resolved: "ResolvedSchedule", steps: "int | torch.Tensor") -> "torch.Tensor":
    """The multiplier at every step in one vectorised call (``steps``: a count or a tensor).

    Example:
        >>> from kiwi_pipe_optim.config import OptimizerConfig
        >>> cfg = OptimizerConfig(class_name="noam", learning_rate=2.0, warmup_steps=4000)
        >>> curve = evaluate(cfg.resolve(model_size=512), 1_000_000)
        >>> int(curve.argmax()) + 1  # the peak is at s = step + 1 = warmup
        4000
    """
    import torch

    if not isinstance(steps, torch.Tensor):
        steps = torch.arange(int(steps), dtype=torch.float64)
    values = multiplier(resolved)(steps.to(torch.float64))
    return values if isinstance(values, torch.Tensor) else torch.full_like(steps, float(values), dtype=torch.float64)


def build_scheduler(optimizer: Any, resolved: "ResolvedSchedule") -> Any:
    """The torch scheduler of a resolved schedule, or None when it has none."""
    build = SCHEDULE_SPECS[resolved.name].build
    return None if build is None else build(optimizer, resolved)


def get_noam_decay_schedule(optimizer: "torch.optim.Optimizer", num_warmup_steps: int, model_size: int) -> Any:
    """The Noam schedule of Vaswani et al. (2017) as a ``LambdaLR``, to be stepped every optimizer step.

    Args:
        optimizer: the wrapped optimizer; its LR is the scale of the schedule.
        num_warmup_steps: steps of linear increase; the peak is at the ``num_warmup_steps``-th step.
        model_size: the hidden size that dominates the parameter count (d_model).

    Example:
        >>> import torch
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
        >>> sched = get_noam_decay_schedule(opt, num_warmup_steps=4000, model_size=512)
    """
    import torch

    if int(num_warmup_steps) != num_warmup_steps or num_warmup_steps < 1:
        raise ValueError(f"num_warmup_steps: {num_warmup_steps!r} is not a step count; use an integer >= 1")
    if int(model_size) != model_size or model_size < 1:
        raise ValueError(f"model_size: {model_size!r} is not a model size; use an integer >= 1")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(noam, warmup=int(num_warmup_steps), model_size=int(model_size))
    )
