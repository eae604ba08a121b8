"""The LR schedules as pure functions of the optimizer step: the factor multiplying the base LR.

Each takes the step (an int, or a float64 tensor of many steps) and returns the factor, the
contract of ``torch.optim.lr_scheduler.LambdaLR``. Module-level functions bound with
``functools.partial`` pickle (so checkpoints resume) and evaluate a whole run's curve in one
vectorised call. Importing this module does not import torch; the tensor path imports it.

Warm-up follows the common convention: the factor rises linearly from ``warmup_start`` (0 unless
``warmup_start_lr`` says otherwise) at step 0 and reaches 1 at step ``warmup_steps``; with
``warmup_steps == 0`` there is none. It is written once, :func:`linear_warmup`, and joined before
a decay by :func:`phased` (as optax's ``join_schedules``), so each decay counts its steps from the
end of warm-up and knows warm-up only where its own length or marks depend on it. Keywords are
named as the fields of :class:`kiwi_pipe_optim.resolved.ResolvedSchedule`, so the registry
(:mod:`kiwi_pipe_optim.schedules`) binds any of them the same way.
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


def linear_warmup(step: Step, *, warmup_steps: int, warmup_start: float = 0.0) -> Step:
    """From ``warmup_start`` at step 0 up to 1 at step ``warmup_steps``, linearly."""
    return warmup_start + (1.0 - warmup_start) * step / warmup_steps if warmup_steps > 0 else step * 0 + 1.0


def _clamp01(x: Step) -> Step:
    ops = _ops(x)
    return ops.minimum(ops.maximum(x, 0.0), 1.0)


def _progress(step: Step, warmup_steps: int, training_steps: int) -> Step:
    """Fraction of the decay done, clamped to [0, 1]; ``step`` counts from the end of warm-up."""
    length = training_steps - warmup_steps
    # Warm-up as long as the run leaves no decay: the end value from the end of warm-up on.
    return _clamp01(step / length if length > 0 else step + 1.0)


# -- the decays: each counts its steps from the end of warm-up ------------------------------------


def linear(step: Step, *, warmup_steps: int, training_steps: int, final_lr_ratio: float = 0.0) -> Step:
    """Linear decay from 1 to ``final_lr_ratio`` at ``training_steps`` (and after)."""
    return 1.0 - (1.0 - final_lr_ratio) * _progress(step, warmup_steps, training_steps)


def cosine(step: Step, *, warmup_steps: int, training_steps: int, final_lr_ratio: float = 0.0) -> Step:
    """Half a cosine from 1 to ``final_lr_ratio`` at ``training_steps`` (Loshchilov & Hutter 2017,
    SGDR, without restarts)."""
    cos = 0.5 * (1.0 + _ops(step).cos(math.pi * _progress(step, warmup_steps, training_steps)))
    return final_lr_ratio + (1.0 - final_lr_ratio) * cos


def polynomial(step: Step, *, warmup_steps: int, training_steps: int, power: float = 1.0,
               final_lr_ratio: float = 0.0) -> Step:
    """``final + (1 - final) * (1 - progress) ** power``."""
    return final_lr_ratio + (1.0 - final_lr_ratio) * (1.0 - _progress(step, warmup_steps, training_steps)) ** power


def inverse_sqrt(step: Step, *, warmup_steps: int = 0, timescale: int | None = None) -> Step:
    """Decay with the inverse square root of the step (Vaswani et al., 2017).

    ``sqrt(timescale / (step + timescale))``: 1 when warm-up ends, halved after ``3 * timescale``
    more steps. ``timescale`` defaults to the warm-up length (``sqrt(warmup / step)`` counted from
    step 0), or 1 without warm-up (``1 / sqrt(step + 1)``); transformers' default without warm-up
    is 10,000, a much slower decay.
    """
    ops = _ops(step)
    scale = timescale or max(warmup_steps, 1)
    return ops.sqrt(scale / (ops.maximum(step, 0.0) + scale))


def noam(step: Step, *, warmup_steps: int, model_size: int) -> Step:
    """The schedule of "Attention Is All You Need" (Vaswani et al., 2017, eq. 3), warm-up included.

    ``d^-0.5 * min(s^-0.5, s * warmup^-1.5)`` with ``s = step + 1``: linear growth for the first
    ``warmup`` steps, peak at ``s == warmup``, then decay with the inverse square root of the step.
    The base LR multiplies this factor, so it acts as a scale (OpenKiwi used 1 to 2).
    """
    ops = _ops(step)
    s = step + 1.0
    return model_size ** -0.5 * ops.minimum(s ** -0.5, s * warmup_steps ** -1.5)


def no_schedule(step: Step) -> Step:
    """A constant factor of 1."""
    return step * 0 + 1.0


constant = no_schedule  # after its warm-up, the constant schedule is no schedule


# -- warmup-stable-decay --------------------------------------------------------------------------


def _shape_linear(p: Step) -> Step:
    return 1.0 - p


def _shape_cosine(p: Step) -> Step:
    return 0.5 * (1.0 + _ops(p).cos(math.pi * p))


def _shape_1_sqrt(p: Step) -> Step:
    return 1.0 - _ops(p).sqrt(p)


_SHAPES: dict[str, Callable[[Step], Step]] = {"linear": _shape_linear, "cosine": _shape_cosine,
                                              "1-sqrt": _shape_1_sqrt}


def wsd(step: Step, *, warmup_steps: int, training_steps: int, decay_steps: int, decay_shape: str = "1-sqrt",
        final_lr_ratio: float = 0.0) -> Step:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv:2404.06395), after warm-up.

    1 until ``training_steps - decay_steps``, then down to ``final_lr_ratio`` at ``training_steps``
    along ``decay_shape``. The long constant stretch is what lets a run be extended, or branched
    into a short decay at any checkpoint, without retraining. ``1-sqrt`` (``1 - sqrt(progress)``)
    is the default because Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations", arXiv:2405.18392) found it best, matching a full cosine run.
    """
    begin = training_steps - decay_steps - warmup_steps
    done = (step - begin) / decay_steps if decay_steps > 0 else step - begin + 1.0
    return final_lr_ratio + (1.0 - final_lr_ratio) * _SHAPES[decay_shape](_clamp01(done))


# -- SGDR -------------------------------------------------------------------------------------------


def cosine_restarts(step: Step, *, cycle_steps: int, cycle_mult: float = 1.0, final_lr_ratio: float = 0.0) -> Step:
    """Cosine cycles from 1 to ``final_lr_ratio``, each ``cycle_mult`` times longer than the last:
    SGDR (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts").

    This equals torch's ``CosineAnnealingWarmRestarts(T_0=cycle_steps, T_mult=cycle_mult,
    eta_min=final_lr_ratio * lr)`` at every step. torch counts cycles one step at a time; a closed
    form is needed here so that any step (a resume, a preview) is one call: cycle ``n`` starts at
    ``cycle * (mult**n - 1) / (mult - 1)``, so ``n = floor(log_mult(1 + s (mult - 1) / cycle))``.
    Non-integer ``mult`` (which torch refuses) follows the same formula.
    """
    ops = _ops(step)
    s, cycle, mult = ops.maximum(step, 0.0), cycle_steps, cycle_mult
    if mult == 1.0:
        position, length = s % cycle, cycle
    else:
        n = ops.floor(ops.log(s * (mult - 1.0) / cycle + 1.0) / math.log(mult))
        # The logarithm can land a hair off a whole number at a restart; step to the right cycle.
        n = ops.where(s < _cycle_start(n, cycle, mult), n - 1.0, n)
        n = ops.where(s >= _cycle_start(n + 1.0, cycle, mult), n + 1.0, n)
        position, length = s - _cycle_start(n, cycle, mult), cycle * mult ** n
    cos = 0.5 * (1.0 + ops.cos(math.pi * position / length))
    return final_lr_ratio + (1.0 - final_lr_ratio) * cos


def _cycle_start(n: Step, cycle: int, mult: float) -> Step:
    return cycle * (mult ** n - 1.0) / (mult - 1.0)


# -- step-wise decays (torch's StepLR, MultiStepLR, ExponentialLR after a warm-up) -------------------


def step_decay(step: Step, *, step_size: int, factor: float, final_lr_ratio: float = 0.0) -> Step:
    """``factor`` once every ``step_size`` steps, never below ``final_lr_ratio`` (a floor).

    Step decay as in He et al. 2016 (ResNet: the LR divided by 10 at fixed intervals); torch's
    ``StepLR`` counted from the end of warm-up.
    """
    ops = _ops(step)
    return ops.maximum(factor ** ops.floor(ops.maximum(step, 0.0) / step_size), final_lr_ratio)


def multistep(step: Step, *, warmup_steps: int, milestones: tuple[int, ...], factor: float,
              final_lr_ratio: float = 0.0) -> Step:
    """``factor`` at each milestone (counted from step 0 of the run, warm-up included, as torch's
    ``MultiStepLR``), never below ``final_lr_ratio``: the schedule of He et al. 2016 (ResNet) and
    Goyal et al. 2017 ("Accurate, Large Minibatch SGD", linear warm-up then drops at fixed epochs)."""
    ops = _ops(step)
    return ops.maximum(factor ** ops.count_reached(step + warmup_steps, milestones), final_lr_ratio)


def exponential(step: Step, *, step_size: int = 1, factor: float, final_lr_ratio: float = 0.0) -> Step:
    """``factor ** (step / step_size)``, never below ``final_lr_ratio``: the continuous form of
    Szegedy et al. 2016's decay (Inception-v3: x0.94 every two epochs), so that no single step
    changes the LR abruptly; torch's ``ExponentialLR`` when ``step_size == 1``."""
    ops = _ops(step)
    return ops.maximum(factor ** (ops.maximum(step, 0.0) / step_size), final_lr_ratio)


# -- one cycle ------------------------------------------------------------------------------------


def one_cycle(step: Step, *, warmup_steps: int, training_steps: int, warmup_start: float,
              final_lr_ratio: float) -> Step:
    """The 1cycle policy of Smith & Topin 2018 ("Super-Convergence", arXiv:1708.07120), LR only.

    Its own warm-up (a cosine rise from ``warmup_start``), not the linear one of the decays above.
    Equal to torch's ``OneCycleLR(anneal_strategy="cos", three_phase=False, pct_start=warmup /
    total, div_factor=1 / start, final_div_factor=start / final_ratio)`` at steps 0 to ``total -
    1``, off-by-one included: torch's rise ends (the peak, factor 1) at step ``warmup - 1`` and its
    fall ends at step ``total - 1``, one step earlier than the other schedules here reach theirs.
    From ``total - 1`` on the end value holds (torch raises past ``total``); with one step of
    warm-up (where torch divides by zero) the run starts at the peak. Momentum is not cycled:
    that is the optimizer's business, and not every optimizer has one.
    """
    ops = _ops(step)
    peak = warmup_steps - 1
    rise = _clamp01(step / peak) if peak > 0 else step * 0 + 1.0
    up = 1.0 + (warmup_start - 1.0) / 2.0 * (ops.cos(math.pi * rise) + 1.0)
    fall = _clamp01((step - peak) / max(training_steps - 1 - peak, 1))
    down = final_lr_ratio + (1.0 - final_lr_ratio) / 2.0 * (ops.cos(math.pi * fall) + 1.0)
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
