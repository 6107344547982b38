"""Universal Reasoning Model (arXiv 2512.14693; docs/network.md#urm): one hidden state per position, refined by a
shared stack of post-norm attention + ConvSwiGLU blocks. An inner loop adds the input embedding to the state and
applies the whole stack; L_cycles inner loops make an outer cycle, and only the last of H_cycles outer cycles is
back-propagated (truncated back-propagation through loops). ACT is the shared wrapper: halt when q_halt > 0.

Parameter and buffer names follow the URM public code (embed_tokens, lm_head, q_head, puzzle_emb, init_hidden,
layers.<i>.self_attn.{qkv_proj,o_proj}, layers.<i>.mlp.{gate_up_proj,dwconv,down_proj}), so checkpoints move
between the two."""
from dataclasses import dataclass
from typing import Literal, Optional

import pydantic
import torch
from torch import nn

from models.layers import Attention, ConvSwiGLU, CosSin, rms_norm
from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import (DataSizes, NonNegativeInt, PositiveInt, RecursiveInnerBase,
                                               heads_divide_width, last_cycle_with_grad)


class URMConfig(DataSizes):
    hidden_size: PositiveInt
    puzzle_emb_ndim: NonNegativeInt = 0
    puzzle_emb_len: NonNegativeInt = 0    # 0: ceil(puzzle_emb_ndim / hidden_size), as the URM code has it

    num_layers: PositiveInt                # blocks in the shared stack
    H_cycles: PositiveInt                  # outer cycles per ACT step; all but the last without gradient
    L_cycles: PositiveInt                  # inner loops (input injection + the whole stack) per outer cycle

    expansion: pydantic.PositiveFloat
    num_heads: PositiveInt
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    rms_norm_eps: pydantic.PositiveFloat = 1e-5
    rope_theta: pydantic.PositiveFloat = 10000.0

    halt_max_steps: PositiveInt            # the URM paper's "loops"
    halt_exploration_prob: pydantic.confloat(ge=0.0, le=1.0) = 0.1
    no_ACT_continue: Literal[True] = True  # the URM learns no Q-continue

    forward_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"

    _heads_divide_width = pydantic.model_validator(mode="after")(lambda self: heads_divide_width(self))


@dataclass
class URMInnerCarry:
    hidden: torch.Tensor  # [B, puzzle_emb_len + seq_len, D]


class URMBlock(nn.Module):
    """h = norm(h + attention(h)); h = norm(h + ConvSwiGLU(h))."""

    def __init__(self, config: URMConfig):
        super().__init__()
        self.norm_eps = config.rms_norm_eps
        self.self_attn = Attention(config.hidden_size, config.num_heads, causal=config.causal)
        self.mlp = ConvSwiGLU(config.hidden_size, config.expansion)

    def forward(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin, hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class URM_Inner(RecursiveInnerBase):
    def __init__(self, config: URMConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([URMBlock(config) for _ in range(config.num_layers)])
        self.register_buffer("init_hidden", self.state_init(), persistent=True)

    def empty_carry(self, batch_size: int, device=None):
        return URMInnerCarry(self.empty_latent(batch_size, device))

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return URMInnerCarry(reset_rows(reset_flag, self.init_hidden, carry.hidden))

    def loop(self, hidden: torch.Tensor, x: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        """One outer cycle: L_cycles times, inject the input and apply the whole stack."""
        for _ in range(self.config.L_cycles):
            hidden = hidden + x
            for layer in self.layers:
                hidden = layer(hidden, cos_sin)
        return hidden

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        hidden = last_cycle_with_grad(lambda h: self.loop(h, x, cos_sin), carry.hidden, self.config.H_cycles)
        return (URMInnerCarry(hidden.detach()), *self.output_heads(hidden))


class URM_ACTV1(ACTModel):
    config_class = URMConfig
    inner_class = URM_Inner
