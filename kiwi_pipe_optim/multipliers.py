"""The LR schedules as pure functions of the optimizer step: the factor multiplying the base LR.

Each takes the step (an int, or a float64 tensor of many steps) and returns the factor, the
contract of ``torch.optim.lr_scheduler.LambdaLR``. Module-level functions bound with
``functools.partial`` pickle (so checkpoints resume) and evaluate a whole run's curve in one
vectorised call. Importing this module does not import torch; the tensor path imports it.

Warm-up follows the common convention: the factor rises linearly from ``start`` (0 unless
``warmup_start_lr`` says otherwise) at step 0 and reaches 1 at step ``warmup``; with ``warmup ==
0`` there is none. The registry that binds these to a config is :mod:`kiwi_pipe_optim.schedules`.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    import torch

Step = Union[int, float, "torch.Tensor"]
# wsd's decay shapes, as written in params.yaml; 1-sqrt is the default (Hägele et al. 2024).
DECAY_SHAPES = ("1-sqrt", "cosine", "linear")
DEFAULT_DECAY_SHAPE = "1-sqrt"


class _Scalar:
    where = staticmethod(lambda cond, a, b: a if cond else b)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    cos = staticmethod(math.cos)
    sqrt = staticmethod(math.sqrt)
    floor = staticmethod(math.floor)
    log = staticmethod(math.log)

    @staticmethod
    def count_reached(step: Any, marks: tuple[int, ...]) -> int:
        return bisect.bisect_right(marks, step)


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

    @staticmethod
    def floor(x: Any) -> Any:
        return x.floor()

    @staticmethod
    def log(x: Any) -> Any:
        return x.log()

    @staticmethod
    def count_reached(step: Any, marks: tuple[int, ...]) -> Any:
        import torch

        edges = torch.tensor(marks, dtype=step.dtype)
        return torch.searchsorted(edges, step, right=True).to(step.dtype)


def _ops(step: Step) -> Any:
    return _Scalar if isinstance(step, (int, float)) else _Tensor


def _warmup(step: Step, warmup: int, start: float = 0.0) -> Step:
    return start + (1.0 - start) * step / warmup if warmup > 0 else step * 0 + 1.0


def _clamp01(x: Step) -> Step:
    ops = _ops(x)
    return ops.minimum(ops.maximum(x, 0.0), 1.0)


def _progress(step: Step, warmup: int, total: int) -> Step:
    """Fraction of the decay phase done, clamped to [0, 1]."""
    # Warm-up as long as the run leaves no decay phase: the end value from step ``total`` on.
    done = (step - warmup) / (total - warmup) if total > warmup else step - warmup + 1.0
    return _clamp01(done)


def constant(step: Step, *, warmup: int = 0, start: float = 0.0) -> Step:
    """Linear warm-up to 1, then 1."""
    ops = _ops(step)
    return ops.where(step < warmup, _warmup(step, warmup, start), step * 0 + 1.0)


def linear(step: Step, *, warmup: int, total: int, final_ratio: float = 0.0, start: float = 0.0) -> Step:
    """Linear warm-up to 1, then linear decay to ``final_ratio`` at ``total`` (and after)."""
    ops = _ops(step)
    decay = 1.0 - (1.0 - final_ratio) * _progress(step, warmup, total)
    return ops.where(step < warmup, _warmup(step, warmup, start), decay)


def cosine(step: Step, *, warmup: int, total: int, final_ratio: float = 0.0, start: float = 0.0) -> Step:
    """Linear warm-up, then half a cosine from 1 to ``final_ratio`` at ``total`` (Loshchilov &
    Hutter 2017, SGDR, without restarts)."""
    ops = _ops(step)
    cos = 0.5 * (1.0 + ops.cos(math.pi * _progress(step, warmup, total)))
    return ops.where(step < warmup, _warmup(step, warmup, start), final_ratio + (1.0 - final_ratio) * cos)


def polynomial(step: Step, *, warmup: int, total: int, power: float = 1.0, final_ratio: float = 0.0,
               start: float = 0.0) -> Step:
    """Linear warm-up, then ``final + (1 - final) * (1 - progress) ** power``."""
    ops = _ops(step)
    decay = final_ratio + (1.0 - final_ratio) * (1.0 - _progress(step, warmup, total)) ** power
    return ops.where(step < warmup, _warmup(step, warmup, start), decay)


def inverse_sqrt(step: Step, *, warmup: int = 0, timescale: int | None = None, start: float = 0.0) -> Step:
    """Linear warm-up, then decay with the inverse square root of the step (Vaswani et al., 2017).

    ``sqrt(timescale / (step - warmup + timescale))``: 1 when warm-up ends, halved after
    ``3 * timescale`` more steps. ``timescale`` defaults to the warm-up length (``sqrt(warmup /
    step)``), or 1 without warm-up (``1 / sqrt(step + 1)``); transformers' default without warm-up
    is 10,000, a much slower decay.
    """
    ops = _ops(step)
    scale = timescale or max(warmup, 1)
    decay = ops.sqrt(scale / (ops.maximum(step, warmup) - warmup + scale))
    return ops.where(step < warmup, _warmup(step, warmup, start), decay) if warmup > 0 else decay


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


# -- warmup-stable-decay --------------------------------------------------------------------------


def _shape_linear(p: Step) -> Step:
    return 1.0 - p


def _shape_cosine(p: Step) -> Step:
    return 0.5 * (1.0 + _ops(p).cos(math.pi * p))


def _shape_1_sqrt(p: Step) -> Step:
    return 1.0 - _ops(p).sqrt(p)


_SHAPES: dict[str, Callable[[Step], Step]] = {"linear": _shape_linear, "cosine": _shape_cosine,
                                              "1-sqrt": _shape_1_sqrt}


def wsd(step: Step, *, warmup: int, total: int, decay: int, shape: str = "1-sqrt", final_ratio: float = 0.0,
        start: float = 0.0) -> Step:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv:2404.06395).

    Linear warm-up, 1 until ``total - decay``, then down to ``final_ratio`` at ``total`` along
    ``shape``. The long constant stretch is what lets a run be extended, or branched into a short
    decay at any checkpoint, without retraining. ``1-sqrt`` (``1 - sqrt(progress)``) is the default
    because Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations", arXiv:2405.18392) found it best, matching a full cosine run.
    """
    ops = _ops(step)
    begin = total - decay
    done = (step - begin) / decay if decay > 0 else step - begin + 1.0
    factor = final_ratio + (1.0 - final_ratio) * _SHAPES[shape](_clamp01(done))
    return ops.where(step < warmup, _warmup(step, warmup, start), factor)


# -- SGDR -------------------------------------------------------------------------------------------


def cosine_restarts(step: Step, *, warmup: int, cycle: int, mult: float = 1.0, final_ratio: float = 0.0,
                    start: float = 0.0) -> Step:
    """Warm-up, then cosine cycles from 1 to ``final_ratio``, each ``mult`` times longer than the
    last: SGDR (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts").

    After warm-up this equals torch's ``CosineAnnealingWarmRestarts(T_0=cycle, T_mult=mult,
    eta_min=final_ratio * lr)`` at every step. torch counts cycles one step at a time; a closed form
    is needed here so that any step (a resume, a preview) is one call: cycle ``n`` starts at
    ``cycle * (mult**n - 1) / (mult - 1)``, so ``n = floor(log_mult(1 + s (mult - 1) / cycle))``.
    Non-integer ``mult`` (which torch refuses) follows the same formula.
    """
    ops = _ops(step)
    s = ops.maximum(step - warmup, 0.0)
    if mult == 1.0:
        position, length = s % cycle, cycle
    else:
        n = ops.floor(ops.log(s * (mult - 1.0) / cycle + 1.0) / math.log(mult))
        # The logarithm can land a hair off a whole number at a restart; step to the right cycle.
        n = ops.where(s < _cycle_start(n, cycle, mult), n - 1.0, n)
        n = ops.where(s >= _cycle_start(n + 1.0, cycle, mult), n + 1.0, n)
        position, length = s - _cycle_start(n, cycle, mult), cycle * mult ** n
    cos = 0.5 * (1.0 + ops.cos(math.pi * position / length))
    return ops.where(step < warmup, _warmup(step, warmup, start), final_ratio + (1.0 - final_ratio) * cos)


def _cycle_start(n: Step, cycle: int, mult: float) -> Step:
    return cycle * (mult ** n - 1.0) / (mult - 1.0)


# -- step-wise decays (torch's StepLR, MultiStepLR, ExponentialLR after a warm-up) -------------------


def step_decay(step: Step, *, warmup: int, size: int, factor: float, floor: float = 0.0,
               start: float = 0.0) -> Step:
    """Warm-up, then ``factor`` once every ``size`` steps, never below ``floor``.

    Step decay as in He et al. 2016 (ResNet: the LR divided by 10 at fixed intervals); torch's
    ``StepLR`` counted from the end of warm-up.
    """
    ops = _ops(step)
    decayed = ops.maximum(factor ** ops.floor(ops.maximum(step - warmup, 0.0) / size), floor)
    return ops.where(step < warmup, _warmup(step, warmup, start), decayed)


def multistep(step: Step, *, warmup: int, milestones: tuple[int, ...], factor: float, floor: float = 0.0,
              start: float = 0.0) -> Step:
    """Warm-up, then ``factor`` at each milestone step (counted from step 0, as torch's
    ``MultiStepLR``), never below ``floor``: the schedule of He et al. 2016 (ResNet) and Goyal et
    al. 2017 ("Accurate, Large Minibatch SGD", linear warm-up then drops at fixed epochs)."""
    ops = _ops(step)
    decayed = ops.maximum(factor ** ops.count_reached(step, milestones), floor)
    return ops.where(step < warmup, _warmup(step, warmup, start), decayed)


def exponential(step: Step, *, warmup: int, size: int = 1, factor: float, floor: float = 0.0,
                start: float = 0.0) -> Step:
    """Warm-up, then ``factor ** ((step - warmup) / size)``, never below ``floor``: the continuous
    form of Szegedy et al. 2016's decay (Inception-v3: x0.94 every two epochs), so that no single
    step changes the LR abruptly; torch's ``ExponentialLR`` when ``size == 1``."""
    ops = _ops(step)
    decayed = ops.maximum(factor ** (ops.maximum(step - warmup, 0.0) / size), floor)
    return ops.where(step < warmup, _warmup(step, warmup, start), decayed)


# -- one cycle ------------------------------------------------------------------------------------


def one_cycle(step: Step, *, warmup: int, total: int, start: float, final_ratio: float) -> Step:
    """The 1cycle policy of Smith & Topin 2018 ("Super-Convergence", arXiv:1708.07120), LR only.

    Equal to torch's ``OneCycleLR(anneal_strategy="cos", three_phase=False, pct_start=warmup /
    total, div_factor=1 / start, final_div_factor=start / final_ratio)`` at steps 0 to ``total -
    1``, off-by-one included: torch's rise ends (the peak, factor 1) at step ``warmup - 1`` and its
    fall ends at step ``total - 1``, one step earlier than the other schedules here reach theirs.
    From ``total - 1`` on the end value holds (torch raises past ``total``); with one step of
    warm-up (where torch divides by zero) the run starts at the peak. Momentum is not cycled:
    that is the optimizer's business, and not every optimizer has one.
    """
    ops = _ops(step)
    peak = warmup - 1
    rise = _clamp01(step / peak) if peak > 0 else step * 0 + 1.0
    up = 1.0 + (start - 1.0) / 2.0 * (ops.cos(math.pi * rise) + 1.0)
    fall = _clamp01((step - peak) / max(total - 1 - peak, 1))
    down = final_ratio + (1.0 - final_ratio) / 2.0 * (ops.cos(math.pi * fall) + 1.0)
    return ops.where(step <= peak, up, down)


# -- composed phases ------------------------------------------------------------------------------


def phased(step: Step, *, starts: tuple[int, ...], parts: tuple[Callable[[Step], Step], ...],
           last_length: int | None = None) -> Step:
    """Phase ``i`` (the multiplier ``parts[i]``) on ``step - starts[i]`` from ``starts[i]`` on, as
    optax's ``join_schedules``; after the last phase (``last_length`` steps, when known) its last
    value holds, as every single schedule holds its end value."""
    ops = _ops(step)
    local_last = step - starts[-1]
    if last_length is not None:
        local_last = ops.minimum(local_last, last_length - 1)
    if ops is _Scalar:  # one step: evaluate only its phase
        i = max(bisect.bisect_right(starts, step) - 1, 0)
        return parts[i](local_last if i == len(parts) - 1 else step - starts[i])
    value = parts[-1](local_last)
    for i in reversed(range(len(parts) - 1)):
        value = ops.where(step < starts[i + 1], parts[i](step - starts[i]), value)
    return value
