"""The one evaluation pass, used by pretrain.py, evaluate.py and the benchmarks: run the test batches to the end
of ACT under a halting policy (evaluation/halting.py), sum the loss head's metrics per set, feed the evaluators and
reduce everything to rank 0."""
import itertools
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from dataset.format import set_array_path
from evaluation.halting import run_to_max_steps
from utils.distributed import DistInfo


class SizedLoader:
    """A test loader with its number of batches, so the progress bar shows how far the evaluation is."""

    def __init__(self, dataset, batches: int):
        self.dataset, self.batches = dataset, batches

    def __iter__(self):
        return iter(self.dataset)

    def __len__(self):
        return self.batches


def count_test_batches(data_paths: List[str], sets: List[str], global_batch_size: int) -> int:
    total = 0
    for path in data_paths:
        for set_name in sets:
            rows = np.load(set_array_path(os.path.join(path, "test"), set_name, "inputs"), mmap_mode="r").shape[0]
            total += math.ceil(rows / global_batch_size)
    return total


@torch.inference_mode()
def evaluate(head: nn.Module, eval_loader, set_names: Sequence[str], evaluators: List[Any], dist_info: DistInfo,
             device: torch.device, save_outputs: Sequence[str] = (), save_dir: Optional[str] = None,
             step: int = 0, max_batches: Optional[int] = None, progress: bool = False,
             batch_runner: Optional[Callable] = None) -> Optional[Dict[str, Any]]:
    """Run every test batch to the end of ACT, then reduce the metrics of each set (`set_names`, the loader's sets)
    and the evaluators' results to rank 0.

    `batch_runner(head, batches, return_keys, device)` yields (set_name, batch, metrics, outputs) and decides how
    rows halt: run_to_max_steps (the reference, default) or AdaptiveHalting (evaluation/halting.py)."""
    return_keys = set(save_outputs)
    for evaluator in evaluators:
        evaluator.begin_eval()
        return_keys.update(evaluator.required_outputs)

    set_ids = {name: i for i, name in enumerate(set_names)}
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
        elif set_name.startswith("ARC/pass@"):
            continue  # the reference's name for ARC/task_mean_pass@K, which the line shows
        elif set_name.endswith("_count"):  # e.g. ARC/task_count, ARC/test_output_count
            parts.append(f"{set_name} {int(values)}")
        elif "_ci_" not in set_name and not set_name.endswith("/count"):
            parts.append(f"{set_name} {float(values):.4f}")
    return f"[eval @ step {step}] " + " | ".join(parts)
