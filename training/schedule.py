"""The learning-rate schedule shared by both optimizers (docs/network.md#learning-rate-schedule)."""
import math
from dataclasses import dataclass


def cosine_schedule_with_warmup(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                                min_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    """Linear warm-up from 0, then cosine from base_lr down to base_lr * min_ratio at total_steps."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress))))


def total_training_steps(epochs: int, total_groups: int, mean_puzzle_examples: float, global_batch_size: int) -> int:
    return int(epochs * total_groups * mean_puzzle_examples / global_batch_size)


@dataclass(frozen=True)
class Schedule:
    """The run's schedule settings in one place: the optimizers' lrs follow it step by step."""
    total_steps: int
    warmup_steps: int
    min_ratio: float

    def lr(self, step: int, base_lr: float) -> float:
        return cosine_schedule_with_warmup(step, base_lr, self.warmup_steps, self.total_steps, self.min_ratio)
