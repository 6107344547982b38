"""The depth curriculum (docs/configuration.md#depth-curriculum): H_cycles and L_cycles grow during training from a
shallow start to the arch's configured depth, linearly in the training step over the first `until` of the steps.
The cycles are a function of the step alone, so a resumed run takes exactly the depths the uninterrupted one took;
evaluations always run at the configured depth."""
import math
from typing import Tuple

from torch import nn

from models.recursive_reasoning.act import act_model, update_config
from utils.errors import UserError


def model_cycles(head: nn.Module) -> Tuple[int, int]:
    """The (H_cycles, L_cycles) the model inside `head` runs; a UserError for a model without both."""
    model = act_model(head)
    config = getattr(model, "config", None)
    if config is None or not (hasattr(config, "H_cycles") and hasattr(config, "L_cycles")):
        raise UserError(f"depth_curriculum.enabled=True: {type(model).__name__} has no H_cycles/L_cycles to grow; "
                        f"use a recursive puzzle arch (trm, urm, hrm, ...) or depth_curriculum.enabled=False")
    return config.H_cycles, config.L_cycles


def set_cycles(head: nn.Module, H_cycles: int, L_cycles: int) -> bool:
    """Run the model at this depth from the next call; False when it already does (nothing replaced, so a
    compiled model keeps its graph)."""
    if model_cycles(head) == (H_cycles, L_cycles):
        return False
    update_config(head, H_cycles=H_cycles, L_cycles=L_cycles)
    return True


def scheduled_cycles(step: int, total_steps: int, start: Tuple[int, int], target: Tuple[int, int],
                     until: float) -> Tuple[int, int]:
    """The (H_cycles, L_cycles) of training step `step` (1-based): each grows linearly from its start value at
    step 1 and reaches its target once `until * total_steps` steps have run (rounded down in between)."""
    if any(s > t for s, t in zip(start, target)):
        raise UserError(f"depth_curriculum: the start depth {start[0]}x{start[1]} (H_cycles x L_cycles) is deeper than "
                        f"the arch's {target[0]}x{target[1]}; lower start_H/start_L")
    span = until * total_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - 1) / span)
    return tuple(s + math.floor(progress * (t - s) + 1e-9) for s, t in zip(start, target))
