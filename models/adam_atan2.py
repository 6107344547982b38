"""AdamATan2 (docs/network.md#adamatan2): Adam whose update atan2(m, sqrt(v)) needs no epsilon, with decoupled weight decay.

On CUDA the fused kernel of the optional `adam_atan2` package is used when it imports; everywhere else (CPU, MPS,
or no package) a multi-tensor PyTorch implementation of the same rule. The state layout (`step`, `exp_avg`,
`exp_avg_sq`) is the package's, so optimizer state dicts carry over between the two paths."""
from typing import List

import torch
from torch.optim import Optimizer


def _fused_kernel():
    try:
        from adam_atan2.adam_atan2 import _adam_atan2
        return _adam_atan2
    except Exception:  # not installed, or its CUDA extension failed to load
        return None


def adam_atan2_foreach_(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
                        exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor], beta1: float, beta2: float,
                        lr: float, weight_decay: float) -> None:
    """One step for tensors sharing a device and dtype; steps are incremented here. Each tensor's bias corrections
    come from its own step count (some may have got gradients later than others), computed on its device so the
    step never waits for the host."""
    torch._foreach_add_(steps, 1)
    # In the parameters' precision (at least float32): float64 parameters keep float64-exact corrections.
    counts = [s.to(torch.promote_types(p.dtype, torch.float32)) for s, p in zip(steps, params)]
    neg_step_sizes = torch._foreach_pow(beta1, counts)          # -lr / (1 - beta1^t)
    torch._foreach_sub_(neg_step_sizes, 1)
    torch._foreach_reciprocal_(neg_step_sizes)
    torch._foreach_mul_(neg_step_sizes, lr)
    bias_correction2_sqrt = torch._foreach_pow(beta2, counts)  # sqrt(1 - beta2^t)
    torch._foreach_neg_(bias_correction2_sqrt)
    torch._foreach_add_(bias_correction2_sqrt, 1)
    torch._foreach_sqrt_(bias_correction2_sqrt)

    grads = [g.to(p.dtype) for g, p in zip(grads, params)]
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    updates = [torch.atan2(m, d) for m, d in zip(exp_avgs, denom)]
    torch._foreach_mul_(updates, neg_step_sizes)
    torch._foreach_add_(params, updates)


class AdamATan2(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), weight_decay: float = 1e-2):
        if lr < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamATan2: need lr >= 0 (got {lr}), weight_decay >= 0 (got {weight_decay}), "
                             f"0 <= betas < 1 (got {tuple(betas)})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        self._fused = _fused_kernel()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, weight_decay = float(group["lr"]), group["weight_decay"]
            groups = {}
            for i, p in enumerate(params):
                groups.setdefault((p.device, p.dtype), []).append(i)
            for (device, _), idx in groups.items():
                lists = [[t[i] for i in idx] for t in (params, grads, exp_avgs, exp_avg_sqs, steps)]
                if device.type == "cuda" and self._fused is not None:
                    self._fused(*lists, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay)
                else:
                    adam_atan2_foreach_(*lists, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay)
        return loss
