"""Plain transformer baseline under ACT (docs/network.md#transformer-baseline): z_H = blocks(z_H + x) with H_layers blocks, repeated
H_cycles times per ACT step (only the last with gradient)."""
from dataclasses import dataclass

import pydantic
import torch

from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import (RecursiveInnerBase, RecursiveModelConfig, ReasoningModule,
                                               last_cycle_with_grad)


class Model_ACTV2Config(RecursiveModelConfig):
    H_layers: pydantic.PositiveInt
    L_layers: pydantic.NonNegativeInt = 0   # unused
    L_cycles: pydantic.PositiveInt = 1      # unused


@dataclass
class Model_ACTV2InnerCarry:
    z_H: torch.Tensor


class Model_ACTV2_Inner(RecursiveInnerBase):
    def __init__(self, config: Model_ACTV2Config):
        super().__init__(config)
        self.H_level = ReasoningModule(config, config.H_layers, self.total_seq_len)
        self.register_buffer("H_init", self.state_init(), persistent=True)

    def empty_carry(self, batch_size: int, device=None):
        return Model_ACTV2InnerCarry(self.empty_latent(batch_size, device))

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return Model_ACTV2InnerCarry(reset_rows(reset_flag, self.H_init, carry.z_H))

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H = last_cycle_with_grad(lambda z: self.H_level(z, x, cos_sin), carry.z_H, self.config.H_cycles)
        return (Model_ACTV2InnerCarry(z_H.detach()), *self.output_heads(z_H))


class Model_ACTV2(ACTModel):
    config_class = Model_ACTV2Config
    inner_class = Model_ACTV2_Inner
