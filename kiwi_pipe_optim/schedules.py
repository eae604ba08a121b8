"""LR schedules: their registry, from a resolved schedule to a multiplier and a torch scheduler.

The schedules themselves are pure multiplier functions of the optimizer step
(:mod:`kiwi_pipe_optim.multipliers`, re-exported here). Each is one :class:`ScheduleSpec` in
:data:`SCHEDULE_SPECS`: what it needs, which optional fields it reads, how it is built and whether
its curve is known before training. Nothing else in the package looks at a schedule's name.
Importing this module does not import torch (validation must answer fast); the functions import
it when they are given tensors or an optimizer.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

# Re-exported: the schedules were defined here before they had a module of their own.
from .multipliers import (DECAY_SHAPES, Step, constant, cosine, cosine_restarts, exponential,  # noqa: F401
                          inverse_sqrt, linear, linear_warmup, multistep, no_schedule, noam, one_cycle, phased,
                          polynomial, step_decay, wsd)
from .resolved import ResolvedSchedule

if TYPE_CHECKING:
    import torch


def lambda_scheduler(optimizer: Any, resolved: ResolvedSchedule) -> Any:
    """A ``LambdaLR`` stepping the resolved schedule's multiplier every optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(resolved))


def plateau_scheduler(optimizer: Any, resolved: ResolvedSchedule) -> Any:
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=resolved.mode, factor=resolved.factor, patience=resolved.patience
    )


@dataclass(frozen=True)
class ScheduleSpec:
    """A registry entry: how an LR schedule is resolved, built and previewed.

    ``curve`` is its multiplier of the step (vectorised), whose keywords :func:`multiplier` takes
    from the resolved schedule's fields of the same names; ``after_warmup`` says it starts where
    the linear warm-up ends (:func:`~kiwi_pipe_optim.multipliers.phased` joins the two). ``None``
    means the LR follows a metric during training (reduce-on-plateau), so the curve is unknown
    beforehand and a restored LR cannot be checked against a step. ``build`` makes the
    torch scheduler; ``None`` means no scheduler at all. ``options`` are the optional fields of
    the section the schedule reads (any other one set is an error), ``requires`` those it cannot
    do without.
    """

    name: str
    description: str
    interval: str  # "step" or "epoch"
    curve: Optional[Callable[..., Step]]
    build: Optional[Callable[[Any, ResolvedSchedule], Any]] = lambda_scheduler
    after_warmup: bool = True
    uses_warmup: bool = True
    needs_training_steps: bool = False
    needs_warmup: bool = False
    needs_model_size: bool = False
    needs_decay_factor: bool = False  # learning_rate_decay must be in (0, 1)
    monitored: bool = False  # Lightning must be told which logged metric drives it
    options: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    default_warmup: Optional[float] = None  # warm-up when warmup_steps is absent, a fraction of training_steps
    start_ratio: float = 0.0  # the factor at step 0 when warmup_start_lr is absent
    end_over_start: Optional[float] = None  # without min_lr / final_lr_ratio: the end factor, per start factor
    in_phases: bool = True  # may be one phase of `phases`

    @property
    def previewable(self) -> bool:
        """Whether the LR at every step is known before training (and checkable after a resume)."""
        return self.curve is not None


_WARM = ("warmup_start_lr",)
_END = ("final_lr_ratio", "min_lr") + _WARM
_FLOOR = ("min_lr",) + _WARM
_SCHEDULES = (
    ScheduleSpec("none", "constant learning rate, no scheduler", "step", no_schedule, build=None, uses_warmup=False,
                 after_warmup=False),
    ScheduleSpec("constant", "linear warm-up, then constant", "step", constant, options=_WARM),
    ScheduleSpec(
        "linear", "linear warm-up from 0, then linear decay to final_lr_ratio at training_steps",
        "step", linear, needs_training_steps=True, options=_END,
    ),
    ScheduleSpec(
        "cosine", "linear warm-up, then half-cosine decay to final_lr_ratio at training_steps",
        "step", cosine, needs_training_steps=True, options=_END,
    ),
    ScheduleSpec(
        "polynomial", "linear warm-up, then (1 - progress)^power decay to final_lr_ratio",
        "step", polynomial, needs_training_steps=True, options=("power",) + _END,
    ),
    ScheduleSpec(
        "inverse_sqrt", "linear warm-up, then decay proportional to 1/sqrt(step) over timescale", "step",
        inverse_sqrt, options=("timescale",) + _WARM,
    ),
    ScheduleSpec(
        "noam", "Vaswani et al. (2017): d^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step + 1",
        "step", noam, needs_warmup=True, needs_model_size=True, in_phases=False, after_warmup=False,
    ),
    ScheduleSpec(
        "plateau", "multiply the LR by learning_rate_decay after learning_rate_decay_start epochs "
        "without improvement of `monitor`", "epoch", None, build=plateau_scheduler, uses_warmup=False,
        needs_decay_factor=True, monitored=True, in_phases=False,
    ),
    ScheduleSpec(
        "wsd", "Hu et al. (2024): linear warm-up, constant, then decay (decay_shape) over the last decay_steps "
        "to final_lr_ratio", "step", wsd, needs_training_steps=True,
        options=("decay_steps", "decay_shape") + _END,
    ),
    ScheduleSpec(
        "cosine_restarts", "SGDR (Loshchilov & Hutter 2017): warm-up, then cosine cycles from 1 to final_lr_ratio, "
        "cycle_steps long, each cycle_mult times longer", "step", cosine_restarts,
        options=("cycle_steps", "cycle_mult") + _END, requires=("cycle_steps",),
    ),
    ScheduleSpec(
        "step", "warm-up, then multiply by learning_rate_decay every step_size steps", "step", step_decay,
        needs_decay_factor=True, options=("step_size",) + _FLOOR, requires=("step_size",),
    ),
    ScheduleSpec(
        "multistep", "warm-up, then multiply by learning_rate_decay at each of milestones", "step",
        multistep, needs_decay_factor=True, options=("milestones",) + _FLOOR, requires=("milestones",),
    ),
    ScheduleSpec(
        "exponential", "warm-up, then learning_rate_decay^((step - warmup) / step_size)", "step",
        exponential, needs_decay_factor=True, options=("step_size",) + _FLOOR,
    ),
    ScheduleSpec(
        "one_cycle", "Smith & Topin (2018), torch's OneCycleLR: cosine from lr/25 up to lr over warmup_steps "
        "(default 0.3), then down to lr/25e4", "step", one_cycle, needs_training_steps=True,
        options=_END, default_warmup=0.3, start_ratio=1 / 25, end_over_start=1e-4, after_warmup=False,
    ),
    ScheduleSpec(
        "phases", "a list of schedules run one after the other, each on its own steps", "step", phased,
        uses_warmup=False, after_warmup=False, options=("phases",), requires=("phases",), in_phases=False,
    ),
)

SCHEDULE_SPECS: Mapping[str, ScheduleSpec] = MappingProxyType({s.name: s for s in _SCHEDULES})
# OpenKiwi's rule: with no explicit schedule, 0 < learning_rate_decay < 1 means reduce-on-plateau
# (named, since other schedules need the factor too).
DECAY_SCHEDULE = "plateau"
NO_SCHEDULE = "none"
# The optional fields of the section that belong to some schedules only.
SCHEDULE_OPTIONS = ("power", "final_lr_ratio", "timescale", "warmup_start_lr", "min_lr", "decay_steps", "decay_shape",
                    "cycle_steps", "cycle_mult", "step_size", "milestones", "phases")


def list_schedules() -> list[str]:
    """Names accepted by ``optimizer.scheduler``, sorted.

    Example:
        >>> "noam" in list_schedules()
        True
    """
    return sorted(SCHEDULE_SPECS)


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
    spec = SCHEDULE_SPECS[resolved.name]
    if spec.curve is None:
        raise ValueError(f"schedule {resolved.name!r} is not a per-step multiplier")
    if spec.curve is phased:  # each phase is a resolved schedule of its own
        return functools.partial(phased, starts=tuple(p.start for p in resolved.phases),
                                 parts=tuple(multiplier(p.schedule) for p in resolved.phases),
                                 last_length=resolved.phases[-1].steps)
    curve = _bound(spec.curve, resolved)
    if not spec.after_warmup or resolved.warmup_steps == 0:
        return curve
    return functools.partial(phased, starts=(0, resolved.warmup_steps),
                             parts=(_bound(linear_warmup, resolved), curve))


@functools.lru_cache(maxsize=None)
def _keywords(fn: Callable[..., Step]) -> tuple[str, ...]:
    return tuple(n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _bound(fn: Callable[..., Step], resolved: ResolvedSchedule) -> Callable[[Step], Step]:
    """``fn`` with each keyword set to the resolved field of that name."""
    return functools.partial(fn, **{name: getattr(resolved, name) for name in _keywords(fn)})


def evaluate(resolved: ResolvedSchedule, steps: "int | torch.Tensor") -> "torch.Tensor":
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


def build_scheduler(optimizer: Any, resolved: ResolvedSchedule) -> Any:
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
        optimizer, functools.partial(noam, warmup_steps=int(num_warmup_steps), model_size=int(model_size))
    )
