"""Exponential moving average of the trainable weights (docs/network.md#ema); evaluation and saved weights use the EMA copy."""
import copy
from typing import Dict

import torch
from torch import nn

from models.checkpoint_io import unwrap


def _unwrap(module: nn.Module) -> nn.Module:
    module = unwrap(module)                     # torch.compile
    return getattr(module, "module", module)    # DistributedDataParallel


class EMAHelper:
    def __init__(self, mu: float = 0.999):
        self.mu = mu
        self.shadow: Dict[str, torch.Tensor] = {}

    def _trainable(self, module: nn.Module):
        return [(name, p) for name, p in _unwrap(module).named_parameters() if p.requires_grad]

    def register(self, module: nn.Module) -> None:
        self.shadow = {name: p.detach().clone() for name, p in self._trainable(module)}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow = (1 - mu) * param + mu * shadow."""
        names_params = [(n, p) for n, p in self._trainable(module) if n in self.shadow]
        if names_params:
            torch._foreach_lerp_([self.shadow[n] for n, _ in names_params], [p.detach() for _, p in names_params], 1.0 - self.mu)

    @torch.no_grad()
    def ema(self, module: nn.Module) -> None:
        """Write the shadow weights into `module`."""
        for name, p in self._trainable(module):
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def ema_copy(self, module: nn.Module) -> nn.Module:
        """A copy of `module` holding the shadow weights. Only the shadowed parameters get storage of their own:
        every other tensor (buffers such as the puzzle-embedding table, frozen parameters) is `module`'s own, so
        the copy stays current as training updates them. Build it once and refresh it with `ema(copy)` before each
        use: a compiled copy then keeps its graph."""
        live = _unwrap(module)
        shared = {id(t): t for name, t in [*live.named_parameters(), *live.named_buffers()] if name not in self.shadow}
        module_copy = copy.deepcopy(live, memo=shared)
        self.ema(module_copy)
        return module_copy

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state_dict.items()}
