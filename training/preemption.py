"""SIGTERM (preemption) and SIGINT (Ctrl-C) stop training cleanly: the current step finishes, a checkpoint is saved
and the process exits with 128 + the signal number (143, 130), so schedulers and shells see an interrupted run."""
import signal
from typing import Optional

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
AGREE_EVERY = 10   # steps between the ranks' all_reduce of their signal flags (it costs a host round trip)


class GracefulStop:
    def __init__(self, dist_info):
        self.dist_info = dist_info
        self.signum = 0       # the signal this process received
        self.stopping = False  # agreed by every rank: stop after this step
        self._previous = {}

    def install(self) -> "GracefulStop":
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def requested(self, step: Optional[int] = None) -> bool:
        """Whether to stop now. With several ranks all stop at the same step once any of them got a signal: they
        compare flags on steps that are multiples of AGREE_EVERY (every rank calls with the same steps), or at once
        when `step` is None."""
        if self.dist_info.world_size > 1:
            if step is not None and step % AGREE_EVERY:
                return self.stopping  # a local signal waits for the next agreement step
            flag = torch.tensor([self.signum], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.dist_info.cpu_group)
            self.signum = self.signum or int(flag.item())
        self.stopping = self.stopping or self.signum != 0
        return self.stopping

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"
