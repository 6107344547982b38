"""TRM ablation with a single latent (docs/network.md#trm_singlez): z = net(z, x) L_cycles times, then z = net(z, 0);
the answer is read from z. As in the reference, z is carried as z_L and starts from the buffer L_init."""
from dataclasses import dataclass

import torch

from models.recursive_reasoning.act import ACTModel, reset_rows
from models.recursive_reasoning.common import RecursiveInnerBase, RecursiveModelConfig, ReasoningModule


class TinyRecursiveReasoningModel_ACTV1Config(RecursiveModelConfig):
    pass


@dataclass
class TinyRecursiveReasoningModel_ACTV1InnerCarry:
    z_L: torch.Tensor  # the single latent z


class TinyRecursiveReasoningModel_ACTV1_Inner(RecursiveInnerBase):
    def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
        super().__init__(config)
        self.L_level = ReasoningModule(config, config.L_layers, self.total_seq_len)
        self.register_buffer("L_init", self.state_init(), persistent=True)

    def empty_carry(self, batch_size: int, device=None):
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(self.empty_latent(batch_size, device))

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        return TinyRecursiveReasoningModel_ACTV1InnerCarry(reset_rows(reset_flag, self.L_init, carry.z_L))

    def forward(self, carry, batch):
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        net = self.L_level
        z = carry.z_L

        def H_cycle(z):
            for _ in range(self.config.L_cycles):
                z = net(z, x, cos_sin)
            return net(z, 0, cos_sin)

        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z = H_cycle(z)
        z = H_cycle(z)

        return (TinyRecursiveReasoningModel_ACTV1InnerCarry(z.detach()), *self.output_heads(z))


class TinyRecursiveReasoningModel_ACTV1(ACTModel):
    config_class = TinyRecursiveReasoningModel_ACTV1Config
    inner_class = TinyRecursiveReasoningModel_ACTV1_Inner
