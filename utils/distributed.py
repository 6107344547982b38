"""torch.distributed set-up for torchrun: NCCL on CUDA, Gloo elsewhere."""
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from utils.device import set_intra_op_threads
from utils.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    cpu_group: Optional[object] = None  # Gloo group for object gathers (evaluators)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def adopt_slurm_environment() -> None:
    """Under hydra-submitit-launcher (one SLURM task per GPU, no torchrun) take the rank layout from SLURM."""
    if "LOCAL_RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device_request: str) -> DistInfo:
    """Join the process group when launched by torchrun (or as SLURM tasks); a single process otherwise."""
    adopt_slurm_environment()
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_request in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    cpu_group = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, cpu_group=cpu_group)


def on_main_rank(work: Callable[[], Any], dist_info: DistInfo) -> Any:
    """`work()` on rank 0, its result on every rank. A UserError there stops every rank with the same message
    (printed once, by rank 0) instead of the others failing on a closed connection while they wait."""
    outcome = [None]
    if dist_info.is_main:
        try:
            outcome[0] = ("result", work())
        except UserError as e:
            outcome[0] = ("error", e)
    if dist_info.world_size > 1:
        dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def in_process_group(device_request: str, work: Callable[[DistInfo], Any]) -> Any:
    """An entry point's body: threads chosen, the process group joined (under torchrun), `work(dist_info)` run,
    the group left however it ends."""
    set_intra_op_threads()
    dist_info = init_distributed(device_request)
    try:
        return work(dist_info)
    finally:
        shutdown_distributed()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_rank0(obj, rank: int, world_size: int, group=None) -> Optional[list]:
    """Every rank's `obj` as a list on rank 0 (None elsewhere). gather_object rather than a tensor collective:
    evaluators hold Python objects, and it also works over a Gloo group beside NCCL."""
    if world_size <= 1:
        return [obj]
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0, group=group)
    return gathered if rank == 0 else None


def broadcast_from_rank0(obj, rank: int, world_size: int, group=None):
    """Rank 0's `obj` on every rank (a Python object, over the Gloo group beside NCCL)."""
    if world_size <= 1:
        return obj
    holder = [obj if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0, group=group)
    return holder[0]
