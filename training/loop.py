"""One training step (docs/network.md#training): forward through the ACT loss head, backward, gradients summed over
ranks, optimizer steps at the scheduled learning rate; and the line the run ends with."""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from training.schedule import Schedule
from utils.device import to_device
from utils.distributed import DistInfo


@dataclass
class TrainState:
    model: nn.Module                # the loss head as it runs the steps: compiled, or the module itself
    optimizers: Sequence[torch.optim.Optimizer]
    base_lrs: Sequence[float]
    schedule: Schedule
    carry: Any = None               # the ACT carry: rows mid-reasoning continue in the next step
    step: int = 0

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps


def reduce_train_metrics(metrics: Dict[str, torch.Tensor], global_batch_size: int, dist_info: DistInfo) -> Dict[str, float]:
    """Sums over halted rows, summed over ranks -> means: loss keys per global batch, the rest per halted row."""
    keys = sorted(metrics)
    values = torch.stack([metrics[k].float() for k in keys])
    if dist_info.world_size > 1:
        dist.all_reduce(values)
    summed = dict(zip(keys, values.cpu().tolist()))
    count = summed.get("count", 0.0)
    # Per-row metrics exist only for rows that halted; a step where none did logs just the losses
    # (the reference logs zeros there, which drags the curves down).
    return {f"train/{k}": v / (global_batch_size if k.endswith("loss") else count)
            for k, v in summed.items() if k.endswith("loss") or count > 0}


def train_batch(state: TrainState, batch: Dict[str, torch.Tensor], global_batch_size: int, dist_info: DistInfo,
                device: torch.device, grad_clip: Optional[float] = None) -> Dict[str, float]:
    """One optimizer step on this rank's share of a global batch; the step's metrics, the same on every rank."""
    state.step += 1
    batch = to_device(batch, device)
    if state.carry is None:
        with torch.device(device):
            state.carry = state.model.initial_carry(batch)

    state.carry, loss, metrics, _, _ = state.model(carry=state.carry, batch=batch, return_keys=[])
    (loss / global_batch_size).backward()

    params = [p for p in state.model.parameters() if p.grad is not None]
    if dist_info.world_size > 1:
        for p in params:
            dist.all_reduce(p.grad)
    if grad_clip is not None and params:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)

    lr = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs):
        lr = state.schedule.lr(state.step, base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reduced = reduce_train_metrics(metrics, global_batch_size, dist_info)
    reduced["train/lr"] = lr
    return reduced


def progress_postfix(metrics: Dict[str, float], language_model: bool) -> Dict[str, str]:
    """The progress bar's figures: a language model's mean token loss, its perplexity and token accuracy (exact
    rows mean nothing for packed text); a puzzle model's loss, cell accuracy and exact puzzles."""
    loss = metrics.get("train/lm_loss", math.nan)
    figures = {"loss": f"{loss:.3f}"}
    if language_model:
        figures["ppl"] = f"{math.exp(loss) if loss < 700 else math.inf:.1f}"
    figures["acc"] = f"{metrics.get('train/accuracy', math.nan):.3f}"
    if not language_model:
        figures["exact"] = f"{metrics.get('train/exact_accuracy', math.nan):.3f}"
    return figures


def final_summary_line(step: int, seconds: float, metrics: Dict[str, Any]) -> str:
    held_out = [f"{name} perplexity {values['perplexity']:.2f} ({int(values['tokens'])} tokens)" if "perplexity" in values
                else f"{name} {values['exact_accuracy']:.1%} exact ({int(values['count'])} puzzles)"
                for name, values in metrics.items() if isinstance(values, dict) and "exact_accuracy" in values]
    result = "held-out " + ", ".join(held_out) if held_out else "no evaluation ran"
    return f"Done: {step} steps in {seconds / 60:.1f} min; {result}"
