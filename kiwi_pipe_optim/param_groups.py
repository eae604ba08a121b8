"""Named parameter groups, so every group's LR can be logged (and charted) under a stable name.

Three ways to form them, from the config: declarative ``param_groups`` rules (first match wins,
the rest is ``default``), OpenKiwi's ``encoder_learning_rate`` (the ``encoder`` submodule and the
rest), or one ``default`` group. In all three, biases, 1-D parameters, normalisation layers and
the names a module lists in ``no_weight_decay()`` get no weight decay (unless a rule sets one),
as in timm and transformers: decaying them toward zero only hurts, since they scale and shift
activations, or encode positions, rather than fit features. ``weight_decay_exclude: none``
decays everything, as OpenKiwi did.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from .config import ADAMW_HALF, OptimizerConfig
from .errors import ConfigError, Problem

DEFAULT_GROUP = "default"
NO_DECAY = "/no_decay"
ENCODER_GROUP = "encoder"

_NORM_TYPES: tuple[type, ...] = tuple(
    t for t in (getattr(torch.nn, name, None) for name in ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm"))
    if t is not None
) + (torch.nn.modules.batchnorm._NormBase,)


@dataclass(frozen=True)
class Assignment:
    """Where one parameter went: its group, LR and weight decay (None: the optimizer's default)."""

    parameter: str
    shape: tuple[int, ...]
    group: str
    lr: float
    weight_decay: float | None
    rule: int | None  # index of the matching rule, None for the default group
    muon: bool | None = None  # class_name muon: whether Muon (else AdamW) updates it
    layer: int | None = None  # layer_decay: 0 embeddings, 1..L blocks, L + 1 the rest after them


def is_norm(module: torch.nn.Module) -> bool:
    """Normalisation layers by type, and any module whose class name ends in ``Norm``."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _listed(module: torch.nn.Module) -> list[str]:
    """Names (or globs) a module exempts from weight decay with timm's ``no_weight_decay()``."""
    method = getattr(module, "no_weight_decay", None)
    return [str(n) for n in method()] if callable(method) else []


def no_decay_names(module: torch.nn.Module) -> set[str]:
    """Biases, 1-D parameters, normalisation layers, and what modules list in ``no_weight_decay()``
    (names relative to the listing module)."""
    names = set()
    for module_name, sub in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, p in sub.named_parameters(recurse=False):
            if p.dim() <= 1 or param_name.endswith("bias") or is_norm(sub):
                names.add(prefix + param_name)
        listed = _listed(sub)
        if listed:
            names.update(prefix + n for n, _ in sub.named_parameters()
                         if any(n == pattern or fnmatch.fnmatchcase(n, pattern) for pattern in listed))
    return names


def _default_weight_decay(config: OptimizerConfig) -> float:
    """The weight decay the torch class applies when none is given (AdamW: 0.01, most: 0)."""
    if not config.optimizer_spec.weight_decay:
        return 0.0
    parameter = inspect.signature(config.optimizer_spec.load_class()).parameters.get("weight_decay")
    return float(parameter.default) if parameter is not None and isinstance(parameter.default, (int, float)) else 0.0


def hidden_matrices(module: torch.nn.Module) -> set[str]:
    """The 2-D weights Muon is for: those of hidden linear layers (Jordan et al., 2024).

    Linear weights and attention's packed projections, except the output head (the last
    ``nn.Linear`` registered) and, in a model with no embedding layer, the input layer (the
    first). Embeddings, position tables and other raw matrices, biases and norms go to AdamW,
    as in Jordan's runs and Moonlight (Liu et al., 2025). A rule's ``muon:`` overrides this.
    """
    linears: list[str] = []
    attention: list[str] = []
    has_embedding = False
    for module_name, sub in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        has_embedding |= isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        if isinstance(sub, torch.nn.Linear) and sub.weight.dim() == 2:
            linears.append(prefix + "weight")
        elif isinstance(sub, torch.nn.MultiheadAttention):
            attention += [prefix + n for n, p in sub.named_parameters(recurse=False) if p.dim() == 2]
    hidden = linears[(0 if has_embedding else 1):-1]
    return set(hidden) | set(attention)


def block_layers(module: torch.nn.Module) -> tuple[dict[str, int], int]:
    """The layer of every parameter for layer-wise LR decay, and the number of blocks L.

    The blocks are the largest ``nn.ModuleList`` / ``nn.Sequential`` of two or more modules of one
    type (a transformer's layers). Parameters registered before them are layer 0 (embeddings),
    block i's are layer i + 1, and those after (final norm, head) layer L + 1, as in BEiT's and
    timm's layer decay.

    Raises:
        ConfigError: the model has no such list of blocks.
    """
    best: tuple[str, int, int] | None = None
    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.ModuleList, torch.nn.Sequential)) and len(sub) >= 2 \
                and len({type(child) for child in sub}) == 1:
            size = sum(p.numel() for p in sub.parameters())
            if size and (best is None or size > best[2]):
                best = (name, len(sub), size)
    if best is None:
        raise ConfigError(Problem("optimizer.layer_decay", f"{type(module).__name__} has no list of blocks (an "
                                  f"nn.ModuleList or nn.Sequential of two or more layers of one type) to decay the "
                                  f"LR over; remove layer_decay"))
    prefix, depth = (best[0] + "." if best[0] else ""), best[1]
    layers, seen_blocks = {}, False
    for name, _ in module.named_parameters():
        index = name[len(prefix):].split(".", 1)[0] if name.startswith(prefix) else ""
        if index.isdigit():
            layers[name], seen_blocks = int(index) + 1, True
        else:
            layers[name] = depth + 1 if seen_blocks else 0
    return layers, depth


def _matches(name: str, globs: list[str]) -> bool:
    parts = name.split(".")
    candidates = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # enclosing modules, then itself
    return any(fnmatch.fnmatchcase(c, g) for g in globs for c in candidates)


def assign(module: torch.nn.Module, config: OptimizerConfig, encoder: str = "encoder") -> list[Assignment]:
    """The group, LR and weight decay of every trainable parameter of ``module``.

    Raises:
        ConfigError: a rule matches no parameter, or ``encoder_learning_rate`` is set and the
            model has no ``encoder`` submodule.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    out = _assign_groups(module, config, encoder, named)
    if config.adamw_lr_ratio is not None:
        out = _split_muon(module, config, out)
    if config.layer_decay is not None:
        layers, depth = block_layers(module)
        out = [replace(a, group=f"{a.group}/layer_{layers[a.parameter]}", layer=layers[a.parameter],
                       lr=a.lr * config.layer_decay ** (depth + 1 - layers[a.parameter])) for a in out]
    return out


def _split_muon(module: torch.nn.Module, config: OptimizerConfig, out: list[Assignment]) -> list[Assignment]:
    """Muon for 2-D hidden matrices, AdamW (``<group>/adamw``, at its own LR) for the rest."""
    hidden, rules = hidden_matrices(module), config.param_groups or []
    split = []
    for a in out:
        forced = None if a.rule is None else rules[a.rule].muon
        muon = forced if forced is not None else a.parameter in hidden
        if muon and len(a.shape) != 2:
            raise ConfigError(Problem(f"optimizer.param_groups.{a.rule}.muon", f"true, but '{a.parameter}' has shape "
                                      f"{list(a.shape)}; Muon updates 2-D matrices only"))
        half = a.group if muon else a.group + ADAMW_HALF
        lr = a.lr if muon else a.lr * config.adamw_lr_ratio
        split.append(replace(a, group=half, lr=lr, muon=muon))
    return split


def _assign_groups(module: torch.nn.Module, config: OptimizerConfig, encoder: str,
                   named: list[tuple[str, torch.Tensor]]) -> list[Assignment]:
    rates = config.group_learning_rates()
    # Exempting parameters only matters where something decays: no extra groups otherwise (and a
    # state saved with the plain grouping still loads).
    decaying = (config.weight_decay if config.weight_decay is not None else _default_weight_decay(config)) > 0
    quiet = no_decay_names(module) if config.weight_decay_exclude == "auto" and decaying else set()

    def decay(name: str, rule: Any = None) -> float | None:
        if not config.optimizer_spec.weight_decay:
            return None
        if rule is not None and rule.weight_decay is not None:
            return rule.weight_decay
        return 0.0 if name in quiet else config.weight_decay

    if config.param_groups:
        used: set[int] = set()
        out = []
        for name, p in named:
            index = next((i for i, r in enumerate(config.param_groups) if _matches(name, r.match)), None)
            rule = None if index is None else config.param_groups[index]
            if index is not None:
                used.add(index)
            group = DEFAULT_GROUP if rule is None else rule.name
            out.append(Assignment(name, tuple(p.shape), group, rates[group], decay(name, rule), index))
        unused = [i for i in range(len(config.param_groups)) if i not in used]
        if unused:
            sample = ", ".join(n for n, _ in named[:4])
            raise ConfigError([
                Problem(f"optimizer.param_groups.{i}.match",
                        f"rule '{config.param_groups[i].name}' ({', '.join(config.param_groups[i].match)}) matches no "
                        f"trainable parameter of {type(module).__name__} (an earlier rule may take them); names look "
                        f"like: {sample}")
                for i in unused
            ])
        return out
    if config.encoder_learning_rate is not None:
        sub = getattr(module, encoder, None)
        if not isinstance(sub, torch.nn.Module):
            raise ConfigError(Problem(
                "optimizer.encoder_learning_rate",
                f"{config.encoder_learning_rate!r} is set, but {type(module).__name__} has no '{encoder}' "
                f"submodule; remove encoder_learning_rate or give the model an '{encoder}' attribute",
            ))
        inside = {id(p) for p in sub.parameters()}
        return [Assignment(n, tuple(p.shape), ENCODER_GROUP if id(p) in inside else DEFAULT_GROUP,
                           rates[ENCODER_GROUP if id(p) in inside else DEFAULT_GROUP], decay(n), None)
                for n, p in named]
    return [Assignment(n, tuple(p.shape), DEFAULT_GROUP, config.learning_rate, decay(n), None) for n, p in named]


def named_groups(module: torch.nn.Module, config: OptimizerConfig, encoder: str = "encoder",
                 assignment: list[Assignment] | None = None) -> list[dict[str, Any]]:
    """Torch param groups for ``module``: one per (group name, weight decay), each carrying ``name``.

    A group's parameters exempt from weight decay form a torch group of their own, named
    ``<group>/no_decay`` (group names never contain ``/``): names stay unique, as Lightning's
    ``LearningRateMonitor`` requires, and :func:`lr_group` maps both to ``<group>``.
    ``assignment``: what :func:`assign` gave for this module and config, when already known.

    Example:
        >>> model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "head": torch.nn.Linear(4, 2)})
        >>> cfg = OptimizerConfig(class_name="adam", learning_rate=1e-3, encoder_learning_rate=1e-5)
        >>> [(g["name"], g["lr"], len(g["params"])) for g in named_groups(model, cfg)]
        [('encoder', 1e-05, 2), ('default', 0.001, 2)]
    """
    params = dict(module.named_parameters())
    groups: dict[tuple[str, float | None], dict[str, Any]] = {}
    for a in assignment if assignment is not None else assign(module, config, encoder):
        key = (a.group, a.weight_decay)
        if key not in groups:
            groups[key] = {"name": a.group, "params": [], "lr": a.lr}
            if a.weight_decay is not None:
                groups[key]["weight_decay"] = a.weight_decay
            if a.muon is not None:
                groups[key]["use_muon"] = a.muon
            groups[key]["_order"] = (a.muon is False, -1 if a.layer is None else a.layer)
        groups[key]["params"].append(params[a.parameter])
    halves = Counter(group for group, _ in groups)
    for (group, decay), torch_group in groups.items():  # the exempt half of a split group
        if halves[group] > 1 and decay == 0.0:
            torch_group["name"] = group + NO_DECAY
    order = list(config.group_learning_rates())
    ordered = sorted(groups.values(), key=lambda g: (order.index(g["name"].split("/")[0]), g.pop("_order"),
                                                     g["name"].endswith(NO_DECAY)))
    return ordered


def lr_group(name: str) -> str:
    """The param group a torch group belongs to (``encoder/no_decay`` is ``encoder``)."""
    return name[: -len(NO_DECAY)] if name.endswith(NO_DECAY) else name


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every param group (``group<i>`` where a group has none)."""
    return [str(g.get("name", f"group{i}")) for i, g in enumerate(optimizer.param_groups)]


def table(assignments: Iterable[Assignment]) -> str:
    """The parameter -> group table as aligned text (logged as an MLflow artifact)."""
    rows = [("parameter", "shape", "group", "lr", "weight_decay")] + [
        (a.parameter, "x".join(map(str, a.shape)) or "scalar", a.group, f"{a.lr:g}",
         "default" if a.weight_decay is None else f"{a.weight_decay:g}")
        for a in assignments
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"
