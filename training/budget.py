"""A wall-clock budget for training (`max_train_seconds`, `eval_every_seconds`), so that models of different speeds
can be compared at equal time. Only time spent training counts: evaluations and checkpoints are paused out, so
evaluating more often does not shorten a run. The `process` clock counts this process's CPU time instead of wall time,
for budgets that other jobs sharing the cores must not eat into."""
import contextlib
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist


CLOCKS = {"wall": time.monotonic, "process": time.process_time}


class TrainingClock:
    def __init__(self, max_seconds: Optional[float], eval_every: Optional[float], dist_info,
                 now: Callable[[], float] = time.monotonic):
        self.max_seconds, self.eval_every = max_seconds, eval_every
        self.dist_info, self._now = dist_info, now
        self._banked, self._started = 0.0, None
        self._evals_done = 0
        self.out_of_time = False   # agreed by every rank

    @property
    def elapsed(self) -> float:
        running = self._now() - self._started if self._started is not None else 0.0
        return self._banked + running

    def resume(self) -> None:
        if self._started is None:
            self._started = self._now()

    def pause(self) -> None:
        if self._started is not None:
            self._banked += self._now() - self._started
            self._started = None

    @contextlib.contextmanager
    def paused(self):
        """Time inside does not count (evaluations, checkpoints); the clock runs again after if it ran before."""
        running = self._started is not None
        self.pause()
        try:
            yield
        finally:
            if running:
                self.resume()

    def check(self) -> bool:
        """After a step: whether an intermediate evaluation is due; sets `out_of_time` once the budget is spent.
        Rank 0's clock decides for every rank, as ranks must stop and evaluate at the same step."""
        if self.max_seconds is None:
            return False
        elapsed = self.elapsed
        spent = elapsed >= self.max_seconds
        due = (not spent and self.eval_every is not None and elapsed >= (self._evals_done + 1) * self.eval_every)
        if self.dist_info.world_size > 1:
            flags = torch.tensor([spent, due], dtype=torch.int64)
            dist.broadcast(flags, src=0, group=self.dist_info.cpu_group)
            spent, due = bool(flags[0]), bool(flags[1])
        self.out_of_time = self.out_of_time or spent
        if due:
            self._evals_done = max(self._evals_done + 1, int(elapsed // self.eval_every))
        return due
