"""Loss head around an ACT model (docs/network.md#loss-head): token loss per row, Q-halt (and Q-continue) BCE, metrics over halted rows."""
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dataset.format import IGNORE_LABEL_ID
from utils.errors import UserError


def stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    """s(x) = 1/(1-x) for x < 0, x + 1 otherwise: positive and monotone, but linear rather than exponential."""
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = stablemax_s(x)
    return torch.log(s_x / s_x.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID,
                            valid_mask: torch.Tensor = None) -> torch.Tensor:
    """Per-token loss in float64, 0 where the label is ignored."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    if valid_mask is None:
        valid_mask = labels != ignore_index
    safe_labels = torch.where(valid_mask, labels, 0).to(torch.long)
    picked = torch.gather(logprobs, dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid_mask, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID,
                          valid_mask: torch.Tensor = None) -> torch.Tensor:
    """Per-token loss in float32, 0 where the label is ignored."""
    return F.cross_entropy(logits.to(torch.float32).reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1),
                           ignore_index=ignore_index, reduction="none").view(labels.shape)


LOSS_FUNCTIONS = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


def row_metrics(preds: torch.Tensor, labels: torch.Tensor, q_halt_logits: torch.Tensor, steps: torch.Tensor,
                halted: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Sums over the halted rows that have labels (docs/network.md#metrics): the row count, token accuracy, exact
    accuracy, Q-halt accuracy and steps; and whether each row is exactly right (the Q-halt target)."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    is_correct = mask & (preds == labels)
    seq_is_correct = is_correct.sum(-1) == counts
    valid = halted & (counts > 0)
    metrics = {
        "count": valid.sum(),
        "accuracy": torch.where(valid, (is_correct.to(torch.float32) / counts.clamp_min(1).unsqueeze(-1)).sum(-1), 0).sum(),
        "exact_accuracy": (valid & seq_is_correct).sum(),
        "q_halt_accuracy": (valid & ((q_halt_logits >= 0) == seq_is_correct)).sum(),
        "steps": torch.where(valid, steps, 0).sum(),
    }
    return metrics, seq_is_correct


class ACTLossHead(nn.Module):
    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise UserError(f"loss.loss_type='{loss_type}' is unknown; use one of {', '.join(LOSS_FUNCTIONS)}")
        self.model = model
        self.loss_fn = LOSS_FUNCTIONS[loss_type]

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, return_keys: Sequence[str] = (), **model_kwargs):
        """-> (new_carry, total loss (summed over rows), metrics (sums over halted rows), outputs, all rows halted)."""
        new_carry, outputs = self.model(**model_kwargs)
        labels = new_carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            outputs["preds"] = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_divisor = mask.sum(-1).clamp_min(1).unsqueeze(-1)
            metrics, seq_is_correct = row_metrics(outputs["preds"], labels, outputs["q_halt_logits"], new_carry.steps,
                                                  new_carry.halted)

        lm_loss = (self.loss_fn(logits, labels, ignore_index=IGNORE_LABEL_ID, valid_mask=mask) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype),
                                                         reduction="sum")
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"],
                                                                 reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()

        detached: Dict[str, torch.Tensor] = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, detached, new_carry.halted.all()
