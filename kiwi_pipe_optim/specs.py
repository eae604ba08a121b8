"""What each optimizer accepts, described without importing torch.

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
    # OpenKiwi's rule: the schedule used when optimizer.scheduler is absent.
    default_schedule: str | None = None
    # Another name for a registered class with other presets (noam is Adam): optimizer_name skips it.
    alias: bool = False


_BETAS = OptionSpec("betas", (0.9, 0.999))
_MAXIMIZE = OptionSpec("bool", False)


def _eps(default: float) -> OptionSpec:
    return OptionSpec("positive", default)


_ADAM_OPTIONS = {
    "betas": _BETAS,
    "eps": _eps(1e-8),
    "amsgrad": OptionSpec("bool", False),
    "maximize": _MAXIMIZE,
}

_OPTIMIZERS = (
    OptimizerSpec(
        "sgd", "SGD", "stochastic gradient descent, optionally with (Nesterov) momentum",
        {
            "momentum": OptionSpec("nonneg", 0),
            "dampening": OptionSpec("nonneg", 0),
            "nesterov": OptionSpec("bool", False),
            "maximize": _MAXIMIZE,
        },
        fused=True, typical_lr=(1e-4, 2.0),
    ),
    OptimizerSpec(
        "averaged_sgd", "ASGD", "averaged stochastic gradient descent",
        {
            "lambd": OptionSpec("nonneg", 1e-4),
            "alpha": OptionSpec("nonneg", 0.75),
            "t0": OptionSpec("nonneg", 1e6),
            "maximize": _MAXIMIZE,
        },
        typical_lr=(1e-4, 2.0),
    ),
    OptimizerSpec(
        "adam", "Adam", "Adam (Kingma & Ba, 2015)",
        {**_ADAM_OPTIONS, "decoupled_weight_decay": OptionSpec("bool", False)},
        fused=True, typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "noam", "Adam",
        "Adam with betas=(0.9, 0.98), eps=1e-9 and the Noam schedule (Vaswani et al., 2017)",
        {**_ADAM_OPTIONS, "decoupled_weight_decay": OptionSpec("bool", False)},
        presets={"betas": (0.9, 0.98), "eps": 1e-9},
        # learning_rate is a scale on d^-0.5 * min(...), usually 0.5..2
        fused=True, typical_lr=(0.05, 10.0), default_schedule="noam", alias=True,
    ),
    OptimizerSpec(
        "sparse_adam", "SparseAdam", "Adam for sparse gradients (nn.Embedding(sparse=True))",
        {"betas": _BETAS, "eps": _eps(1e-8), "maximize": _MAXIMIZE},
        weight_decay=False, foreach=False, typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "adamw", "AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter, 2019)",
        dict(_ADAM_OPTIONS), fused=True, typical_lr=(1e-6, 1e-2), default_schedule="linear",
    ),
    OptimizerSpec(
        "adagrad", "Adagrad", "Adagrad (Duchi et al., 2011)",
        {
            "lr_decay": OptionSpec("nonneg", 0),
            "initial_accumulator_value": OptionSpec("nonneg", 0),
            "eps": _eps(1e-10),
            "maximize": _MAXIMIZE,
        },
        fused=True, typical_lr=(1e-4, 1.0),
    ),
    OptimizerSpec(
        "adadelta", "Adadelta", "Adadelta (Zeiler, 2012)",
        {
            "rho": OptionSpec("beta", 0.9),
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
            "alpha": OptionSpec("beta", 0.99),
            "eps": _eps(1e-8),
            "momentum": OptionSpec("nonneg", 0),
            "centered": OptionSpec("bool", False),
            "maximize": _MAXIMIZE,
        },
        typical_lr=(1e-5, 1e-1),
    ),
)

OPTIMIZER_SPECS: Mapping[str, OptimizerSpec] = MappingProxyType({s.name: s for s in _OPTIMIZERS})

IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")

# Names OpenKiwi accepted that have no counterpart here, with what to write instead.
RETIRED = MappingProxyType({
    "dense_sparse_adam": "OpenKiwi 2.0's dense_sparse_adam (Adam for dense parameters, SparseAdam for sparse "
                         "embeddings) has no counterpart here; use adam, and nn.Embedding(sparse=False) "
                         "(sparse_adam alone fails on any dense layer)",
})


def list_optimizers() -> list[str]:
    """Names accepted by ``optimizer.class_name``, sorted.

    Example:
        >>> "adamw" in list_optimizers()
        True
    """
    return sorted(OPTIMIZER_SPECS)

