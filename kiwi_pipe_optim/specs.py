"""What each optimizer accepts, described without importing torch.

Validation (``kiwi-optim validate``, editors through the JSON Schema) must answer in a fraction of
a second, so the facts it needs live here as plain data; ``optimizers.py`` binds them to the real
torch classes, and a test checks every option against the real constructor signature.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .imports import import_module, import_object, split_path


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
    # "module:Class" when the class is not torch.optim.<torch_class> (our Muon with AdamW, or a
    # user's class named by import path).
    path: str | None = None
    # The class takes one param group only (LBFGS).
    single_group: bool = False
    # The constructor takes **kwargs: options cannot be checked before it runs.
    open_options: bool = False

    def load_class(self) -> type:
        """The optimizer class (imports torch, and the module of an import path)."""
        if self.path is None:
            import torch

            return getattr(torch.optim, self.torch_class)
        return import_object(self.path)


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

_NEWER = (
    OptimizerSpec(
        "nadam", "NAdam", "Adam with Nesterov momentum (Dozat, 2016)",
        {"betas": _BETAS, "eps": _eps(1e-8), "momentum_decay": OptionSpec("nonneg", 0.004),
         "decoupled_weight_decay": OptionSpec("bool", False), "maximize": _MAXIMIZE},
        typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "radam", "RAdam", "Adam with a rectified warm-up of the adaptive term (Liu et al., 2020)",
        {"betas": _BETAS, "eps": _eps(1e-8), "decoupled_weight_decay": OptionSpec("bool", False),
         "maximize": _MAXIMIZE},
        typical_lr=(1e-6, 1e-2),
    ),
    OptimizerSpec(
        "adafactor", "Adafactor", "Adafactor, factored second moments in sub-linear memory (Shazeer & Stern, 2018)",
        {"beta2_decay": OptionSpec("number", -0.8), "eps": OptionSpec("optional_pair", (None, 1e-3)),
         "d": OptionSpec("positive", 1.0), "maximize": _MAXIMIZE},
        typical_lr=(1e-5, 1e-1),
    ),
    OptimizerSpec(
        "rprop", "Rprop", "resilient backpropagation, sign-based full-batch steps (Riedmiller & Braun, 1993)",
        {"etas": OptionSpec("pair", (0.5, 1.2)), "step_sizes": OptionSpec("pair", (1e-6, 50)), "maximize": _MAXIMIZE},
        weight_decay=False, typical_lr=(1e-4, 1e-1),
    ),
    OptimizerSpec(
        "lbfgs", "LBFGS",
        "limited-memory BFGS (Liu & Nocedal, 1989); re-evaluates the loss through Lightning's closure, one param group",
        {"max_iter": OptionSpec("count", 20), "max_eval": OptionSpec("any", None),
         "tolerance_grad": OptionSpec("nonneg", 1e-7), "tolerance_change": OptionSpec("nonneg", 1e-9),
         "history_size": OptionSpec("count", 100), "line_search_fn": OptionSpec("choice:strong_wolfe|null", None)},
        weight_decay=False, foreach=False, typical_lr=(1e-2, 2.0), single_group=True,
    ),
    OptimizerSpec(
        "muon", "Muon",
        "Muon on 2-D hidden matrices, AdamW on the rest (Jordan et al., 2024; Liu et al., 2025)",
        {"momentum": OptionSpec("beta", 0.95), "nesterov": OptionSpec("bool", True),
         "ns_coefficients": OptionSpec("triple", (3.4445, -4.775, 2.0315)), "eps": _eps(1e-7),
         "ns_steps": OptionSpec("count", 5), "adjust_lr_fn": OptionSpec("choice:original|match_rms_adamw|null", None),
         "adamw_lr_ratio": OptionSpec("positive", 0.1), "adamw_betas": OptionSpec("betas", (0.9, 0.95)),
         "adamw_eps": _eps(1e-8)},
        foreach=False, typical_lr=(1e-3, 0.1), path="kiwi_pipe_optim.muon:MuonWithAdamW",
    ),
)

OPTIMIZER_SPECS: Mapping[str, OptimizerSpec] = MappingProxyType({s.name: s for s in _OPTIMIZERS + _NEWER})

IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")

# Names OpenKiwi accepted that have no counterpart here, with what to write instead.
RETIRED = MappingProxyType({
    "dense_sparse_adam": "OpenKiwi 2.0's dense_sparse_adam (Adam for dense parameters, SparseAdam for sparse "
                         "embeddings) has no counterpart here; use adam, and nn.Embedding(sparse=False) "
                         "(sparse_adam alone fails on any dense layer)",
})


# The stage's class_path convention, "package.module:ClassName"; the colon keeps a typo of a
# registry name ("adam.w") from being read as a module.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
# Options with a field of their own, or chosen by optimizer.implementation: never options.
_OWN_FIELDS = ("params", "lr", "weight_decay", "fused", "foreach", "capturable", "differentiable")


def is_import_path(name: Any) -> bool:
    """``package.module:ClassName``: an optimizer class outside the registry."""
    return isinstance(name, str) and name not in OPTIMIZER_SPECS and bool(_IMPORT_PATH.match(name))


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec of a registry name, or of ``package.module:ClassName`` read from its signature.

    Raises:
        KeyError: not a registry name.
        ValueError: an import path that does not name a ``torch.optim.Optimizer`` subclass.
    """
    if name in OPTIMIZER_SPECS:
        return OPTIMIZER_SPECS[name]
    if not is_import_path(name):
        raise KeyError(name)
    return _spec_from_path(name)


def _option_kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    return "number" if isinstance(default, (int, float)) else "any"


@functools.lru_cache(maxsize=32)
def _spec_from_path(path: str) -> OptimizerSpec:
    import torch

    module_name, class_name = split_path(path)
    try:
        module = import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a broken user module is a params mistake too
        raise ValueError(f"cannot import '{module_name}' ({type(e).__name__}: {e}); give 'package.module:ClassName' "
                         f"importable from the repository root") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        what = "has no attribute" if cls is None else "is not a torch.optim.Optimizer subclass:"
        raise ValueError(f"'{module_name}' {what} '{class_name}'; name a torch.optim.Optimizer subclass")
    parameters = inspect.signature(cls).parameters
    options = {n: OptionSpec(_option_kind(p.default), None if p.default is p.empty else p.default)
               for n, p in parameters.items()
               if n not in _OWN_FIELDS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    lr = parameters["lr"].default if "lr" in parameters else None
    # The class's own default LR says its scale: Prodigy and D-Adaptation take 1.0 (they adapt the
    # step size themselves), Lion 1e-4. Two decades either side, the span of the registry's ranges.
    typical = (lr / 100, lr * 100) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 \
        else OptimizerSpec.typical_lr
    return OptimizerSpec(
        path, cls.__name__, (inspect.getdoc(cls) or cls.__name__).splitlines()[0], options, typical_lr=typical,
        weight_decay="weight_decay" in parameters, fused="fused" in parameters, foreach="foreach" in parameters,
        path=path, open_options=any(p.kind is p.VAR_KEYWORD for p in parameters.values()),
    )


def list_optimizers() -> list[str]:
    """Names accepted by ``optimizer.class_name``, sorted.

    Example:
        >>> "adamw" in list_optimizers()
        True
    """
    return sorted(OPTIMIZER_SPECS)

