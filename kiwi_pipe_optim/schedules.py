"""LR schedules as pure multiplier functions of the optimizer step.

Each function takes the step (an int, or a float64 tensor of many steps) and returns the factor
that multiplies the base learning rate, the contract of ``torch.optim.lr_scheduler.LambdaLR``.
Being module-level functions bound with ``functools.partial``, they pickle (so checkpoints resume)
and evaluate a whole run's curve in one vectorised call, without any optimizer.

Warm-up follows the common convention: the factor rises linearly from 0 at step 0 and reaches 1
at step ``warmup``; with ``warmup == 0`` there is none.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Union

import torch

from .config import ResolvedSchedule

Step = Union[int, float, torch.Tensor]


class _Scalar:
    where = staticmethod(lambda cond, a, b: a if cond else b)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    cos = staticmethod(math.cos)
    sqrt = staticmethod(math.sqrt)


class _Tensor:
    where = staticmethod(torch.where)
    minimum = staticmethod(lambda a, b: torch.clamp(a, max=b) if isinstance(a, torch.Tensor) else torch.clamp(b, max=a))
    maximum = staticmethod(lambda a, b: torch.clamp(a, min=b) if isinstance(a, torch.Tensor) else torch.clamp(b, min=a))
    cos = staticmethod(torch.cos)
    sqrt = staticmethod(torch.sqrt)


def _ops(step: Step) -> Any:
    return _Tensor if isinstance(step, torch.Tensor) else _Scalar


def _warmup(step: Step, warmup: int) -> Step:
    return step / warmup if warmup > 0 else step * 0 + 1.0


def _progress(step: Step, warmup: int, total: int) -> Step:
    """Fraction of the decay phase done, clamped to [0, 1]."""
    ops = _ops(step)
    done = (step - warmup) / max(1, total - warmup)
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


def inverse_sqrt(step: Step, *, warmup: int = 0) -> Step:
    """Linear warm-up, then ``sqrt(warmup / step)``; without warm-up ``1 / sqrt(step + 1)``."""
    ops = _ops(step)
    if warmup > 0:
        return ops.where(step < warmup, _warmup(step, warmup), ops.sqrt(warmup / ops.maximum(step, warmup)))
    return 1.0 / ops.sqrt(step + 1.0)


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


def multiplier(resolved: ResolvedSchedule) -> Callable[[Step], Step]:
    """The picklable multiplier function of a resolved step-wise schedule.

    Example:
        >>> from kiwi_pipe_optim.config import OptimizerConfig
        >>> cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3, scheduler="linear",
        ...                       warmup_steps=10, training_steps=110)
        >>> f = multiplier(cfg.resolve())
        >>> f(5), f(10), f(60), f(110)
        (0.5, 1.0, 0.5, 0.0)
    """
    r = resolved
    if r.name == "none":
        return no_schedule
    if r.name == "constant":
        return functools.partial(constant, warmup=r.warmup_steps)
    if r.name == "inverse_sqrt":
        return functools.partial(inverse_sqrt, warmup=r.warmup_steps)
    if r.name == "noam":
        return functools.partial(noam, warmup=r.warmup_steps, model_size=r.model_size)
    if r.name in ("linear", "cosine"):
        fn = linear if r.name == "linear" else cosine
        return functools.partial(fn, warmup=r.warmup_steps, total=r.training_steps, final_ratio=r.final_lr_ratio)
    if r.name == "polynomial":
        return functools.partial(
            polynomial, warmup=r.warmup_steps, total=r.training_steps, power=r.power, final_ratio=r.final_lr_ratio
        )
    raise ValueError(f"schedule {r.name!r} is not a per-step multiplier")


def evaluate(resolved: ResolvedSchedule, steps: int | torch.Tensor) -> torch.Tensor:
    """The multiplier at every step in one vectorised call (``steps``: a count or a tensor).

    Example:
        >>> from kiwi_pipe_optim.config import OptimizerConfig
        >>> cfg = OptimizerConfig(class_name="noam", learning_rate=2.0, warmup_steps=4000)
        >>> curve = evaluate(cfg.resolve(model_size=512), 1_000_000)
        >>> int(curve.argmax()) + 1  # the peak is at s = step + 1 = warmup
        4000
    """
    if not isinstance(steps, torch.Tensor):
        steps = torch.arange(int(steps), dtype=torch.float64)
    values = multiplier(resolved)(steps.to(torch.float64))
    return values if isinstance(values, torch.Tensor) else torch.full_like(steps, float(values), dtype=torch.float64)


def lr_lambda_scheduler(optimizer: torch.optim.Optimizer, resolved: ResolvedSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(resolved))


def plateau_scheduler(optimizer: torch.optim.Optimizer, resolved: ResolvedSchedule) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=resolved.mode, factor=resolved.factor, patience=resolved.patience
    )


def get_noam_decay_schedule(optimizer: torch.optim.Optimizer, num_warmup_steps: int, model_size: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The Noam schedule of Vaswani et al. (2017) as a ``LambdaLR``, to be stepped every optimizer step.

    Args:
        optimizer: the wrapped optimizer; its LR is the scale of the schedule.
        num_warmup_steps: steps of linear increase; the peak is at the ``num_warmup_steps``-th step.
        model_size: the hidden size that dominates the parameter count (d_model).

    Example:
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
        >>> sched = get_noam_decay_schedule(opt, num_warmup_steps=4000, model_size=512)
    """
    if int(num_warmup_steps) != num_warmup_steps or num_warmup_steps < 1:
        raise ValueError(f"num_warmup_steps: {num_warmup_steps!r} is not a step count; use an integer >= 1")
    if int(model_size) != model_size or model_size < 1:
        raise ValueError(f"model_size: {model_size!r} is not a model size; use an integer >= 1")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(noam, warmup=int(num_warmup_steps), model_size=int(model_size))
    )


SCHEDULER_BUILDERS: dict[str, Callable[[torch.optim.Optimizer, ResolvedSchedule], Any]] = {
    "constant": lr_lambda_scheduler,
    "linear": lr_lambda_scheduler,
    "cosine": lr_lambda_scheduler,
    "polynomial": lr_lambda_scheduler,
    "inverse_sqrt": lr_lambda_scheduler,
    "noam": lr_lambda_scheduler,
    "plateau": plateau_scheduler,
}
