"""Adaptive computation time around an inner recursive model (docs/network.md#act-halting), shared by every architecture.

An architecture supplies a pydantic config class and an inner module with `empty_carry(batch_size)`,
`reset_carry(reset_flag, carry)` and `forward(carry, batch) -> (new_carry, logits, (q_halt, q_continue))`,
then declares `class MyModel_ACTV1(ACTModel): config_class = MyConfig; inner_class = MyInner`."""
from dataclasses import dataclass
from typing import Any, Dict

import pydantic
import torch
from torch import nn

from utils.errors import UserError, validation_problem


@dataclass
class ACTCarry:
    inner_carry: Any
    steps: torch.Tensor          # [B] int32
    halted: torch.Tensor         # [B] bool
    current_data: Dict[str, torch.Tensor]


def reset_rows(reset_flag: torch.Tensor, init: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Rows where reset_flag is set take `init` (broadcast), the others keep `value`."""
    return torch.where(reset_flag.view((-1,) + (1,) * (value.ndim - 1)), init, value)


def parse_config(config_class, config_dict: Dict[str, Any]):
    """Validate the arch config, turning pydantic's report into one line naming the key and what it accepts."""
    try:
        return config_class(**config_dict)
    except pydantic.ValidationError as e:
        kind, key, msg, given = validation_problem(e)
        if not key:
            raise UserError(msg) from None
        if kind == "extra_forbidden":
            raise UserError(f"unknown arch key 'arch.{key}': remove it or check its spelling (the keys "
                            f"{config_class.__name__} declares are in config/arch/*.yaml)") from None
        if kind == "missing":
            raise UserError(f"arch.{key} is missing: set it in config/arch/*.yaml or with arch.{key}=...") from None
        raise UserError(f"arch.{key}={given!r}: {msg}") from None


def act_model(head: nn.Module) -> nn.Module:
    """The ACT model inside a loss head (or the model itself)."""
    return getattr(head, "model", head)


def update_config(head: nn.Module, **fields) -> None:
    """Run the ACT model inside `head` with these config fields from its next call (e.g. its cycles or halting
    limit); its inner module, which shares the config, sees the same. The weights do not depend on them."""
    model = act_model(head)
    old = model.config
    model.config = old.model_copy(update=fields)
    inner = getattr(model, "inner", None)
    if inner is not None and getattr(inner, "config", None) is old:
        inner.config = model.config


class ACTModel(nn.Module):
    config_class: type
    inner_class: type

    def __init__(self, config_dict: Dict[str, Any]):
        super().__init__()
        self.config = parse_config(self.config_class, config_dict)
        self.inner = self.inner_class(self.config)

    @property
    def puzzle_emb(self):
        """The sparse puzzle embedding (docs/network.md#model-interface); absent (AttributeError) when puzzle_emb_ndim is 0."""
        return self.inner.puzzle_emb

    def initial_carry(self, batch: Dict[str, torch.Tensor]) -> ACTCarry:
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner_carry=self.inner.empty_carry(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),  # every row takes the first batch
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: Dict[str, torch.Tensor]):
        cfg = self.config
        # Rows that halted last call start over on the new batch's rows.
        inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        steps = torch.where(carry.halted, 0, carry.steps)
        current_data = {k: reset_rows(carry.halted, batch[k], v) for k, v in carry.current_data.items()}

        inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(inner_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= cfg.halt_max_steps
            halted = is_last_step
            # In evaluation every row runs exactly halt_max_steps steps, as in the reference.
            if self.training and cfg.halt_max_steps > 1:
                if cfg.no_ACT_continue:
                    halted = halted | (q_halt_logits > 0)
                else:
                    halted = halted | (q_halt_logits > q_continue_logits)
                # Exploration: some rows draw a minimum number of steps in [2, halt_max_steps].
                explore = torch.rand_like(q_halt_logits) < cfg.halt_exploration_prob
                min_halt_steps = explore * torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)
                halted = halted & (steps >= min_halt_steps)

                if not cfg.no_ACT_continue:
                    # Q-learning target for "continue": the value of the next step.
                    _, _, (next_q_halt, next_q_continue) = self.inner(inner_carry, current_data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))

        return ACTCarry(inner_carry, steps, halted, current_data), outputs
