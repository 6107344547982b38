"""Training batches read ahead in a background thread, so the accelerator does not wait for host work (indexing
the memory-mapped dataset, collating, pinning) between steps."""
import queue
import threading
from typing import Any, Dict, Optional

import torch

DEPTH_ON_ACCELERATORS = 3   # batches read ahead on CUDA/MPS; a few hide the host's jitter
_END, _ERROR, _BATCH = range(3)


def prefetch_depth(requested: Optional[int], device: torch.device) -> int:
    """`prefetch_batches`: as configured, or by default 3 on accelerators and 0 on CPUs, whose cores the read-ahead
    thread would take from the step itself."""
    if requested is not None:
        return requested
    return 0 if device.type == "cpu" else DEPTH_ON_ACCELERATORS


class Prefetcher:
    """Iterates a resumable loader (state_dict / load_state_dict, e.g. PuzzleDataset) up to `depth` batches ahead,
    pinning them when `pin` so the copy to the GPU can be asynchronous (`non_blocking`).

    state_dict() is the loader's position after the batches handed out, not after those read ahead, so a checkpoint
    taken between steps resumes exactly; a pass left early rewinds the loader to that position too."""

    def __init__(self, loader, depth: int, pin: bool = False):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.depth, self.pin = loader, depth, pin
        self._position: Optional[Dict[str, Any]] = None  # after the last batch handed out; None: the loader's own

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for set_name, batch, global_batch_size in self.loader:
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                # read here, right after the loader yielded this batch: the position a checkpoint must record
                if not put((_BATCH, (set_name, batch, global_batch_size), self.loader.state_dict())):
                    return
            put((_END, None, self.loader.state_dict()))
        except BaseException as e:  # raised again in the consumer
            put((_ERROR, e, None))

    def __iter__(self):
        out: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(out, stop), daemon=True, name="prefetch")
        thread.start()
        finished = False
        try:
            while True:
                kind, payload, position = out.get()
                if kind == _ERROR:
                    finished = True
                    raise payload
                self._position = position
                if kind == _END:
                    finished = True
                    return
                yield payload
        finally:
            stop.set()
            thread.join()
            if not finished and self._position is not None:
                self.loader.load_state_dict(self._position)

    def state_dict(self) -> Dict[str, Any]:
        return self._position if self._position is not None else self.loader.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._position = None


def prefetched(loader, depth: int, pin: bool = False):
    """`loader` itself when depth is 0, else a Prefetcher over it."""
    return Prefetcher(loader, depth, pin) if depth > 0 else loader
