"""SIGTERM/SIGINT stop (training/preemption.py): ranks agree on the stop step with one all_reduce every
AGREE_EVERY steps instead of one per step."""
import os
import signal

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

import training.preemption as preemption
from utils.distributed import DistInfo
from training.preemption import AGREE_EVERY, GracefulStop
from tests.helpers import free_port

SIGNAL_AT = 3  # rank 1 is told to stop at this step


def test_a_single_process_stops_at_the_step_it_got_the_signal():
    stop = GracefulStop(DistInfo())
    assert not stop.requested(SIGNAL_AT - 1)
    stop._handle(signal.SIGTERM, None)
    assert stop.requested(SIGNAL_AT) and stop.exit_code == 128 + signal.SIGTERM


def _ranks_worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        calls, all_reduce = [], dist.all_reduce
        preemption.dist.all_reduce = lambda *a, **k: calls.append(1) or all_reduce(*a, **k)
        stop = GracefulStop(DistInfo(rank=rank, world_size=world_size))
        stopped_at = None
        for step in range(1, 3 * AGREE_EVERY):
            if rank == 1 and step == SIGNAL_AT:
                stop._handle(signal.SIGTERM, None)
            if stop.requested(step):
                stopped_at = step
                break
        results[rank] = (stopped_at, len(calls), stop.name)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_the_stop_step_with_one_all_reduce_every_few_steps():
    results = mp.Manager().dict()
    mp.spawn(_ranks_worker, args=(2, free_port(), results), nprocs=2, join=True)
    # rank 1's signal at step 3 waits for the agreement at step AGREE_EVERY, where both stop, after 1 all_reduce
    assert dict(results) == {0: (AGREE_EVERY, 1, "SIGTERM"), 1: (AGREE_EVERY, 1, "SIGTERM")}
