"""A recursive causal language model (arch=trm_lm) behind the loss-head interface pretrain.py drives: every row
halts after one call, the loss is next-token cross-entropy (labels are the next tokens, in the layout of docs/dataset_format.md)."""
from typing import Dict, Sequence

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from dataset.format import IGNORE_LABEL_ID
from models.lm.core import RecursiveDecoder, parameter_breakdown
from models.recursive_reasoning.act import ACTCarry, parse_config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class TRMLMConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # a misspelt arch key must not be ignored

    vocab_size: int
    seq_len: int
    batch_size: int = 0                  # given by every run (docs/network.md#model-interface); a plain LM needs none of these three
    num_puzzle_identifiers: int = 1
    causal: bool = True
    hidden_size: int = pydantic.Field(gt=0)
    num_heads: int = pydantic.Field(gt=0)
    num_layers: int = pydantic.Field(gt=0)
    num_loops: int = pydantic.Field(gt=0)
    expansion: float = pydantic.Field(gt=0)
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    max_position_embeddings: int = 0   # 0: seq_len
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "bfloat16"

    @pydantic.model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.forward_dtype not in DTYPES:
            raise ValueError(f"forward_dtype={self.forward_dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        return self

    def decoder_kwargs(self) -> dict:
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_heads=self.num_heads,
                    num_layers=self.num_layers, num_loops=self.num_loops, expansion=self.expansion,
                    max_position_embeddings=self.max_position_embeddings or self.seq_len, rope_theta=self.rope_theta,
                    tie_word_embeddings=self.tie_word_embeddings, rms_norm_eps=self.rms_norm_eps)


class TRMLanguageModel(nn.Module):
    def __init__(self, config_dict: Dict):
        super().__init__()
        self.config = parse_config(TRMLMConfig, config_dict)
        self.decoder = RecursiveDecoder(**self.config.decoder_kwargs(), forward_dtype=DTYPES[self.config.forward_dtype])

    def parameter_breakdown(self) -> dict:
        return parameter_breakdown(self.decoder)

    def initial_carry(self, batch: Dict[str, torch.Tensor]) -> ACTCarry:
        rows, device = batch["inputs"].shape[0], batch["inputs"].device
        return ACTCarry(inner_carry=None, steps=torch.zeros(rows, dtype=torch.int32, device=device),
                        halted=torch.ones(rows, dtype=torch.bool, device=device),
                        current_data={k: torch.zeros_like(v) for k, v in batch.items()})

    def forward(self, carry: ACTCarry, batch: Dict[str, torch.Tensor]):
        """One call per batch: the carry only records that every row halted after one step."""
        logits = self.decoder(batch["inputs"])
        steps = torch.ones_like(carry.steps)
        halted = torch.ones_like(carry.halted)
        return ACTCarry(None, steps, halted, dict(batch)), {"logits": logits}


class LMLossHead(nn.Module):
    """Next-token cross-entropy, mean over a row's tokens and summed over rows (the ACT head's convention).
    In eval mode the metrics also hold `token_nll` and `tokens` (sums), from which evaluation reports perplexity."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, return_keys: Sequence[str] = (), **model_kwargs):
        new_carry, outputs = self.model(**model_kwargs)
        labels, logits = new_carry.current_data["labels"], outputs["logits"]
        mask = labels != IGNORE_LABEL_ID
        counts = mask.sum(-1)
        divisor = counts.clamp_min(1)
        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1),
                                     ignore_index=IGNORE_LABEL_ID, reduction="none").view(labels.shape)
        lm_loss = (token_loss.sum(-1) / divisor).sum()
        with torch.no_grad():
            outputs["preds"] = logits.argmax(-1)
            correct = mask & (outputs["preds"] == labels)
            valid = counts > 0
            metrics = {"count": valid.sum(),
                       "accuracy": torch.where(valid, correct.sum(-1) / divisor, 0).sum(),
                       "exact_accuracy": (valid & (correct.sum(-1) == counts)).sum(),
                       "steps": torch.where(valid, new_carry.steps, 0).sum(),
                       "lm_loss": lm_loss.detach()}
            if not self.training:
                # Held-out perplexity weighs every token alike, so evaluation reduces the sums, not per-row means.
                metrics["token_nll"] = token_loss.sum()
                metrics["tokens"] = counts.sum()
        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss, metrics, detached, new_carry.halted.all()
