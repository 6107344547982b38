"""One training step and one evaluation pass (SPEC §5, §6), shared by pretrain.py and evaluate.py."""
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from utils.distributed import DistInfo
from training.schedule import cosine_schedule_with_warmup


@dataclass
class TrainState:
    head: nn.Module                 # the loss head wrapping the ACT model
    optimizers: Sequence[torch.optim.Optimizer]
    base_lrs: Sequence[float]
    carry: Any
    step: int
    total_steps: int


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def reduce_train_metrics(metrics: Dict[str, torch.Tensor], global_batch_size: int, dist_info: DistInfo) -> Optional[Dict[str, float]]:
    """Sums over halted rows -> means: loss keys per global batch, the rest per halted row (SPEC §5)."""
    keys = sorted(metrics)
    values = torch.stack([metrics[k].float() for k in keys])
    if dist_info.world_size > 1:
        dist.reduce(values, dst=0)
    if not dist_info.is_main:
        return None
    values = values.cpu().tolist()
    summed = dict(zip(keys, values))
    count = summed.get("count", 0.0)
    # Per-row metrics exist only for rows that halted; a step where none did logs just the losses
    # (the reference logs zeros there, which drags the curves down).
    return {f"train/{k}": v / (global_batch_size if k.endswith("loss") else count)
            for k, v in summed.items() if k.endswith("loss") or count > 0}


def train_batch(state: TrainState, batch: Dict[str, torch.Tensor], global_batch_size: int, lr_warmup_steps: int,
                lr_min_ratio: float, dist_info: DistInfo, device: torch.device,
                grad_clip: Optional[float] = None) -> Optional[Dict[str, float]]:
    state.step += 1
    batch = to_device(batch, device)
    if state.carry is None:
        with torch.device(device):
            state.carry = state.head.initial_carry(batch)

    state.carry, loss, metrics, _, _ = state.head(carry=state.carry, batch=batch, return_keys=[])
    (loss / global_batch_size).backward()

    params = [p for p in state.head.parameters() if p.grad is not None]
    if dist_info.world_size > 1:
        for p in params:
            dist.all_reduce(p.grad)
    if grad_clip is not None and params:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)

    lr = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs):
        lr = cosine_schedule_with_warmup(state.step, base_lr, lr_warmup_steps, state.total_steps, lr_min_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reduced = reduce_train_metrics(metrics, global_batch_size, dist_info) if metrics else None
    if reduced is not None:
        reduced["train/lr"] = lr
    return reduced


def run_to_max_steps(head: nn.Module, batches, return_keys, device: torch.device):
    """The reference evaluation: each test batch runs until all its rows halt (halt_max_steps in eval mode)."""
    for set_name, batch, _ in batches:
        batch = to_device(batch, device)
        with torch.device(device):
            carry = head.initial_carry(batch)
        while True:
            carry, _, metrics, outputs, all_halted = head(carry=carry, batch=batch, return_keys=return_keys)
            if all_halted:
                break
        yield set_name, batch, metrics, outputs


@torch.inference_mode()
def evaluate(head: nn.Module, eval_loader, eval_metadata, evaluators: List[Any], dist_info: DistInfo,
             device: torch.device, save_outputs: Sequence[str] = (), save_dir: Optional[str] = None,
             step: int = 0, max_batches: Optional[int] = None, progress: bool = False,
             batch_runner: Optional[Callable] = None) -> Optional[Dict[str, Any]]:
    """Run every test batch to the end of ACT, then reduce per-set metrics and the evaluators' results to rank 0.

    `batch_runner(head, batches, return_keys, device)` yields (set_name, batch, metrics, outputs) and decides how
    rows halt; default run_to_max_steps, the reference (e.g. evaluation.halting.AdaptiveHalting halts early)."""
    from tqdm import tqdm

    return_keys = set(save_outputs)
    for evaluator in evaluators:
        evaluator.begin_eval()
        return_keys.update(evaluator.required_outputs)

    set_ids = {name: i for i, name in enumerate(eval_metadata.sets)}
    metric_keys: List[str] = []
    metric_values = None
    saved: Dict[str, List[torch.Tensor]] = {}
    total = len(eval_loader) if hasattr(eval_loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    batches = itertools.islice(eval_loader, max_batches)
    batches = tqdm(batches, total=total, desc="eval", disable=not (progress and dist_info.is_main), leave=False)
    for set_name, batch, metrics, outputs in (batch_runner or run_to_max_steps)(head, batches, return_keys, device):
        for collection in (batch, outputs):
            for k, v in collection.items():
                if k in save_outputs:
                    saved.setdefault(k, []).append(v.cpu())
        for evaluator in evaluators:
            evaluator.update_batch(batch, outputs)

        if metric_values is None:
            metric_keys = sorted(metrics)
            metric_values = torch.zeros((len(set_ids), len(metric_keys)), dtype=torch.float64, device=device)
        metric_values[set_ids[set_name]] += torch.stack([metrics[k].to(torch.float64) for k in metric_keys])

    if saved and save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        torch.save({k: torch.cat(v) for k, v in saved.items()}, os.path.join(save_dir, f"step_{step}_all_preds.{dist_info.rank}"))

    reduced: Dict[str, Any] = {}
    if metric_values is not None:
        if dist_info.world_size > 1:
            dist.reduce(metric_values, dst=0)
        if dist_info.is_main:
            values = metric_values.cpu().tolist()
            for set_name, set_id in set_ids.items():
                per_set = dict(zip(metric_keys, values[set_id]))
                count = per_set.pop("count", 0.0)
                token_metrics = token_perplexity(per_set)
                if count > 0:
                    reduced[set_name] = {k: v / count for k, v in per_set.items()}
                    reduced[set_name].update(token_metrics, count=count)

    for evaluator in evaluators:
        evaluator_dir = None
        if save_dir is not None:
            evaluator_dir = os.path.join(save_dir, f"evaluator_{type(evaluator).__name__}_step_{step}")
            os.makedirs(evaluator_dir, exist_ok=True)
        result = evaluator.result(evaluator_dir, rank=dist_info.rank, world_size=dist_info.world_size, group=dist_info.cpu_group)
        if dist_info.is_main and result is not None:
            reduced.update(result)
    return reduced if dist_info.is_main else None


def token_perplexity(sums: Dict[str, float]) -> Dict[str, float]:
    """Language models report summed token losses (`token_nll`) and token counts (`tokens`); both leave `sums`
    and come back as the token-weighted mean loss and its exponential, the perplexity."""
    nll, tokens = sums.pop("token_nll", None), sums.pop("tokens", None)
    if nll is None or not tokens:
        return {}
    mean = nll / tokens
    return {"token_loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf, "tokens": tokens}


def eval_summary_line(step: int, metrics: Dict[str, Any]) -> str:
    parts = []
    for set_name, values in metrics.items():
        if isinstance(values, dict) and "perplexity" in values:
            parts.append(f"{set_name}: loss {values['token_loss']:.4f} ppl {values['perplexity']:.2f} "
                         f"acc {values.get('accuracy', float('nan')):.4f}")
        elif isinstance(values, dict):
            parts.append(f"{set_name}: exact {values.get('exact_accuracy', float('nan')):.4f} "
                         f"acc {values.get('accuracy', float('nan')):.4f} steps {values.get('steps', float('nan')):.2f}")
        elif "_ci_" not in set_name and not set_name.endswith("/count"):
            parts.append(f"{set_name} {float(values):.4f}")
    return f"[eval @ step {step}] " + " | ".join(parts)


def final_summary_line(step: int, seconds: float, metrics: Dict[str, Any]) -> str:
    held_out = [f"{name} perplexity {values['perplexity']:.2f} ({int(values['tokens'])} tokens)" if "perplexity" in values
                else f"{name} {values['exact_accuracy']:.1%} exact ({int(values['count'])} puzzles)"
                for name, values in metrics.items() if isinstance(values, dict) and "exact_accuracy" in values]
    result = "held-out " + ", ".join(held_out) if held_out else "no evaluation ran"
    return f"Done: {step} steps in {seconds / 60:.1f} min; {result}"
