"""A team's own optimizer, named by import path in tests (``tests.custom_optimizers:SignSGD``)."""

import torch


class SignSGD(torch.optim.Optimizer):
    """Steps by the sign of the gradient (signSGD, Bernstein et al., 2018), with optional momentum."""

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["momentum"]:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(grad)
                    grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(grad.sign(), alpha=-group["lr"])
        return loss
