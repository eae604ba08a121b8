"""What each optimizer and schedule accepts, described without importing torch.

Validation (``kiwi-optim validate``, editors through the JSON Schema) must answer in a fraction of
a second, so the facts it needs live here as plain data; ``optimizers.py`` binds them to the real
torch classes, and a test checks every option against the real constructor signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class OptionSpec:
    """One keyword option of an optimizer: its kind (how a value is checked) and torch's default."""

    kind: str  # "nonneg", "positive", "beta", "betas", "bool"
    default: Any
    doc: str = ""


@dataclass(frozen=True)
class OptimizerSpec:
    """A registry entry: the torch class it builds and the keyword options it accepts."""

    name: str
    torch_class: str
    description: str
    options: Mapping[str, OptionSpec]
    presets: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: bool = True
    fused: bool = False
    foreach: bool = True
    typical_lr: tuple[float, float] = (1e-5, 1e-1)
    sparse: bool = False


@dataclass(frozen=True)
class ScheduleSpec:
    """A registry entry for an LR schedule and what it needs to be resolved."""

    name: str
    description: str
    interval: str  # "step" or "epoch"
    uses_warmup: bool = True
    needs_training_steps: bool = False
    needs_warmup: bool = False
    needs_model_size: bool = False
    options: tuple[str, ...] = ()


_BETAS = OptionSpec("betas", (0.9, 0.999), "coefficients of the running averages of the gradient and its square")
_MAXIMIZE = OptionSpec("bool", False, "maximize the objective instead of minimizing it")


def _eps(default: float) -> OptionSpec:
    return OptionSpec("positive", default, "term added to the denominator for numerical stability")


_ADAM_OPTIONS = {
    "betas": _BETAS,
    "eps": _eps(1e-8),
    "amsgrad": OptionSpec("bool", False, "use the AMSGrad variant"),
    "maximize": _MAXIMIZE,
}

_OPTIMIZERS = (
    OptimizerSpec(
        "sgd", "SGD", "stochastic gradient descent, optionally with (Nesterov) momentum",
        {
            "momentum": OptionSpec("nonneg", 0, "momentum factor"),
            "dampening": OptionSpec("nonneg", 0, "dampening for momentum"),
            "nesterov": OptionSpec("bool", False, "use Nesterov momentum"),
            "maximize": _MAXIMIZE,
        },
        fused=True, typical_lr=(1e-4, 2.0),
    ),
    OptimizerSpec(
        "averaged_sgd", "ASGD", "averaged stochastic gradient descent",
        {
            "lambd": OptionSpec("nonneg", 1e-4, "decay term"),
            "alpha": OptionSpec("nonneg", 0.75, "power for the eta update"),
            "t0": OptionSpec("nonneg", 1e6, "point at which to start averaging"),
            "maximize": _MAXIMIZE,
        },
        typical_lr=(1e-4, 2.0),
    ),
    OptimizerSpec(
        "adam", "Adam", "Adam (Kingma & Ba, 2015)",
        {**_ADAM_OPTIONS, "decoupled_weight_decay": OptionSpec("bool", False, "AdamW-style weight decay")},
        fused=True, typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "noam", "Adam",
        "Adam with betas=(0.9, 0.98), eps=1e-9 and the Noam schedule (Vaswani et al., 2017)",
        {**_ADAM_OPTIONS, "decoupled_weight_decay": OptionSpec("bool", False, "AdamW-style weight decay")},
        presets={"betas": (0.9, 0.98), "eps": 1e-9},
        # learning_rate is a scale on d^-0.5 * min(...), usually 0.5..2
        fused=True, typical_lr=(0.05, 10.0),
    ),
    OptimizerSpec(
        "sparse_adam", "SparseAdam", "Adam for sparse gradients (nn.Embedding(sparse=True))",
        {"betas": _BETAS, "eps": _eps(1e-8), "maximize": _MAXIMIZE},
        weight_decay=False, foreach=False, typical_lr=(1e-6, 1e-2), sparse=True,
    ),
    OptimizerSpec(
        "adamw", "AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter, 2019)",
        dict(_ADAM_OPTIONS), fused=True, typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "adagrad", "Adagrad", "Adagrad (Duchi et al., 2011)",
        {
            "lr_decay": OptionSpec("nonneg", 0, "learning rate decay"),
            "initial_accumulator_value": OptionSpec("nonneg", 0, "starting value of the sum of squares"),
            "eps": _eps(1e-10),
            "maximize": _MAXIMIZE,
        },
        fused=True, typical_lr=(1e-4, 1.0),
    ),
    OptimizerSpec(
        "adadelta", "Adadelta", "Adadelta (Zeiler, 2012)",
        {
            "rho": OptionSpec("beta", 0.9, "coefficient of the running average of squared gradients"),
            "eps": _eps(1e-6),
            "maximize": _MAXIMIZE,
        },
        typical_lr=(1e-2, 10.0),
    ),
    OptimizerSpec(
        "adamax", "Adamax", "Adamax, Adam with the infinity norm (Kingma & Ba, 2015)",
        {"betas": _BETAS, "eps": _eps(1e-8), "maximize": _MAXIMIZE},
        typical_lr=(1e-6, 1e-1),
    ),
    OptimizerSpec(
        "rmsprop", "RMSprop", "RMSprop (Hinton, 2012)",
        {
            "alpha": OptionSpec("beta", 0.99, "smoothing constant"),
            "eps": _eps(1e-8),
            "momentum": OptionSpec("nonneg", 0, "momentum factor"),
            "centered": OptionSpec("bool", False, "normalize by an estimate of the gradient's variance"),
            "maximize": _MAXIMIZE,
        },
        typical_lr=(1e-5, 1e-1),
    ),
)

OPTIMIZER_SPECS: Mapping[str, OptimizerSpec] = MappingProxyType({s.name: s for s in _OPTIMIZERS})

_SCHEDULES = (
    ScheduleSpec("none", "constant learning rate, no scheduler", "step", uses_warmup=False),
    ScheduleSpec("constant", "linear warm-up, then constant", "step"),
    ScheduleSpec(
        "linear", "linear warm-up from 0, then linear decay to final_lr_ratio at training_steps",
        "step", needs_training_steps=True, options=("final_lr_ratio",),
    ),
    ScheduleSpec(
        "cosine", "linear warm-up, then half-cosine decay to final_lr_ratio at training_steps",
        "step", needs_training_steps=True, options=("final_lr_ratio",),
    ),
    ScheduleSpec(
        "polynomial", "linear warm-up, then (1 - progress)^power decay to final_lr_ratio",
        "step", needs_training_steps=True, options=("power", "final_lr_ratio"),
    ),
    ScheduleSpec(
        "inverse_sqrt", "linear warm-up, then decay proportional to 1/sqrt(step)", "step",
    ),
    ScheduleSpec(
        "noam", "Vaswani et al. (2017): d^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step + 1",
        "step", needs_warmup=True, needs_model_size=True,
    ),
    ScheduleSpec(
        "plateau", "multiply the LR by learning_rate_decay after learning_rate_decay_start epochs "
        "without improvement of `monitor`", "epoch", uses_warmup=False,
    ),
)

SCHEDULE_SPECS: Mapping[str, ScheduleSpec] = MappingProxyType({s.name: s for s in _SCHEDULES})

IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")


def list_optimizers() -> list[str]:
    """Names accepted by ``optimizer.class_name``, sorted.

    Example:
        >>> "adamw" in list_optimizers()
        True
    """
    return sorted(OPTIMIZER_SPECS)


def list_schedules() -> list[str]:
    """Names accepted by ``optimizer.scheduler``, sorted.

    Example:
        >>> "noam" in list_schedules()
        True
    """
    return sorted(SCHEDULE_SPECS)
