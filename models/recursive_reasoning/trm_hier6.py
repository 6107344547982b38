"""TRM ablation with six latents (docs/network.md#trm_hier6): the L updates cycle through z_L[0..5], each seeing the sum
of all six plus z_H + x; z_H is then updated from the sum of the six."""
from dataclasses import dataclass

import pydantic
import torch

from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import RecursiveInnerBase, RecursiveModelConfig, ReasoningModule


class TinyRecursiveReasoningModel_ACTV1Config(RecursiveModelConfig):
    num_z_L: pydantic.PositiveInt = 6


@dataclass
class TinyRecursiveReasoningModel_ACTV1InnerCarry:
    z_H: torch.Tensor  # [B, S, D]
    z_L: torch.Tensor  # [B, num_z_L, S, D]


class TinyRecursiveReasoningModel_ACTV1_Inner(RecursiveInnerBase):
    def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
        super().__init__(config)
        self.L_level = ReasoningModule(config, config.L_layers, self.total_seq_len)
        self.register_buffer("H_init", self.state_init(), persistent=True)
        # One vector per latent, drawn in turn after H_init, named L1_init.. as in the reference's checkpoints
        for i in range(1, config.num_z_L + 1):
            self.register_buffer(f"L{i}_init", self.state_init(), persistent=True)

    def L_inits(self) -> torch.Tensor:
        """The latents' initial vectors stacked as [num_z_L, 1, D], to broadcast over a carry's z_L."""
        return torch.stack([getattr(self, f"L{i}_init") for i in range(1, self.config.num_z_L + 1)]).unsqueeze(1)

    def empty_carry(self, batch_size: int, device=None):
        z_L = self.empty_latent(batch_size, device).unsqueeze(1).repeat(1, self.config.num_z_L, 1, 1)
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(self.empty_latent(batch_size, device), z_L)

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(reset_rows(reset_flag, self.H_init, carry.z_H),
                                                           reset_rows(reset_flag, self.L_inits(), carry.z_L))

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        net = self.L_level
        z_H, z_L = carry.z_H, list(carry.z_L.unbind(1))

        def H_cycle(z_H, z_L):
            for step in range(self.config.L_cycles):
                i = step % len(z_L)
                others = sum(z for j, z in enumerate(z_L) if j != i)
                z_L[i] = net(z_L[i], z_H + x + others, cos_sin)  # = blocks(sum(z_L) + z_H + x)
            return net(z_H, sum(z_L), cos_sin), z_L

        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = H_cycle(z_H, z_L)
        z_H, z_L = H_cycle(z_H, z_L)

        new_carry = TinyRecursiveReasoningModel_ACTV1InnerCarry(z_H.detach(), torch.stack(z_L, 1).detach())
        return (new_carry, *self.output_heads(z_H))


class TinyRecursiveReasoningModel_ACTV1(ACTModel):
    config_class = TinyRecursiveReasoningModel_ACTV1Config
    inner_class = TinyRecursiveReasoningModel_ACTV1_Inner
