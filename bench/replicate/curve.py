"""Held-out exact accuracy if the model were stopped after k = 1..halt_max_steps supervision steps, from one
reference evaluation pass (evaluation.loop.evaluate with a batch runner that reports every step as its own set)."""
from typing import List, Tuple

import torch

from evaluation.loop import evaluate
from models.losses import row_metrics
from utils.device import to_device
from utils.distributed import DistInfo


def step_set(k: int) -> str:
    return f"step_{k}"


def every_step_runner(max_steps: int):
    """A batch runner for evaluation.loop.evaluate: each test batch runs max_steps ACT steps (as the reference
    evaluation does) and the answer after step k is scored under the set `step_k`."""
    def run(head, batches, return_keys, device):
        keys = sorted(set(return_keys) | {"preds", "q_halt_logits"})
        for _, batch, _ in batches:
            batch = to_device(batch, device)
            with torch.device(device):
                carry = head.initial_carry(batch)
            for k in range(1, max_steps + 1):
                carry, _, _, outputs, _ = head(carry=carry, batch=batch, return_keys=keys)
                metrics, _ = row_metrics(outputs["preds"], batch["labels"], outputs["q_halt_logits"], carry.steps,
                                         halted=torch.ones_like(carry.halted))
                yield step_set(k), batch, metrics, outputs
    return run


def accuracy_per_step(head, loader, max_steps: int, device: torch.device) -> Tuple[List[float], List[float]]:
    """Exact and cell accuracy after 1, 2, ... max_steps steps; the last equal the reference evaluation's."""
    sets = [step_set(k) for k in range(1, max_steps + 1)]
    results = evaluate(head, loader, sets, [], DistInfo(), device, batch_runner=every_step_runner(max_steps))
    per_step = [results[step_set(k)] for k in range(1, max_steps + 1)]
    return [r["exact_accuracy"] for r in per_step], [r["accuracy"] for r in per_step]
