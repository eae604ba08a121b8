"""Muon with its AdamW half, as one optimizer Lightning's automatic optimization can drive.

Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks") replaces
each update of a 2-D hidden weight matrix by its orthogonalised form (a Newton-Schulz iteration);
it is defined for matrices only. Embeddings, the output head, biases and normalisation weights
are updated by AdamW, as in Jordan's runs and in Moonlight (Liu et al., 2025, "Muon is Scalable
for LLM Training"). Projects write this split by hand; here it is one ``torch.optim.Optimizer``
whose ``param_groups`` are both halves' groups (the same dicts), so one LR scheduler drives both,
Lightning sees one optimizer, and every group is logged under its own name.

Defaults follow Jordan et al. (2024): lr 0.02, momentum 0.95 with Nesterov, 5 Newton-Schulz steps,
torch's "original" LR adjustment (``adjust_lr_fn: match_rms_adamw`` gives Moonlight's, with which
one LR suits both halves: set ``adamw_lr_ratio: 1``). Weight decay 0.1 on both halves is
Moonlight's (their §2.2 finds decay necessary at scale). The AdamW half's LR is
``adamw_lr_ratio`` times the group's: under the original adjustment a Muon update of a d x d
matrix has an RMS of about 1/sqrt(d), AdamW's about 0.2 (Liu et al., 2025, §2.2), so for widths
of 256 to 1024 an equal step size needs an AdamW LR of about 0.1 to 0.2 of Muon's; 0.1 is the
cautious end. AdamW's betas (0.9, 0.95) are those of Jordan's and Moonlight's AdamW halves.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

ADAMW_SUFFIX = "/adamw"


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on 2-D hidden matrices and ``torch.optim.AdamW`` on everything else.

    A param group may say where it goes with ``use_muon`` (``from_config`` does, from the model's
    structure: embeddings and the head go to AdamW; its groups already carry their final LR). A
    group without it is split here: 2-D parameters to Muon, the rest to AdamW in a group named
    ``<name>/adamw`` whose LR is ``adamw_lr_ratio`` times the group's.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = MuonWithAdamW(model.parameters(), lr=0.02)
        >>> [(g["name"], g["lr"], g["use_muon"]) for g in opt.param_groups]
        [('default', 0.02, True), ('default/adamw', 0.002, False)]
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: Optional[str] = None,
        adamw_lr_ratio: float = 0.1,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
    ) -> None:
        muon_groups, adamw_groups = [], []
        for group in _as_groups(params):
            name, flag = group.get("name", "default"), group.pop("use_muon", None)
            tensors = group["params"]
            if flag is None:
                hidden = [p for p in tensors if p.ndim == 2]
                rest = [p for p in tensors if p.ndim != 2]
                if hidden:
                    muon_groups.append(dict(group, params=hidden, use_muon=True))
                if rest:
                    adamw_groups.append(dict(group, params=rest, name=name + ADAMW_SUFFIX, use_muon=False,
                                             lr=group.get("lr", lr) * adamw_lr_ratio))
            elif flag:
                flat = [tuple(p.shape) for p in tensors if p.ndim != 2]
                if flat:
                    raise ValueError(f"param group '{name}' is marked use_muon but holds parameters of shape "
                                     f"{flat[0]}; Muon updates 2-D matrices only")
                muon_groups.append(dict(group, use_muon=True))
            else:
                adamw_groups.append(dict(group, use_muon=False))
        self.muon = self.adamw = None
        if muon_groups:
            self.muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                         nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps,
                                         ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        if adamw_groups:
            self.adamw = torch.optim.AdamW(adamw_groups, lr=lr * adamw_lr_ratio, betas=adamw_betas, eps=adamw_eps,
                                           weight_decay=weight_decay)
        groups = [g for inner in self._inner() for g in inner.param_groups]
        if not groups:
            raise ValueError("MuonWithAdamW got no parameters")
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self._link()

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    def _link(self) -> None:
        """Both halves read and write this optimizer's groups and state (one state_dict, one scheduler)."""
        for inner, use_muon in ((self.muon, True), (self.adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["use_muon"] is use_muon]
                inner.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()  # torch replaces the group dicts and the state on load

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner():
            inner.step()
        return loss


def _as_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params)
    if not items:
        raise ValueError("MuonWithAdamW got an empty parameter list")
    if not isinstance(items[0], dict):
        items = [{"params": items}]
    groups = []
    for item in items:
        tensors = item["params"]
        groups.append(dict(item, params=[tensors] if isinstance(tensors, torch.Tensor) else list(tensors)))
    return groups
