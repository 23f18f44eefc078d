"""Sharded runs under ``torchrun``: join the process group it describes, gather results on rank 0."""
from __future__ import annotations

import os

import torch


def join_process_group(device: torch.device):
    """Join the ``torch.distributed`` group that ``torchrun`` describes in the environment.

    Uses gloo on CPU and nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). Returns
    ``(rank, world_size, gather, close, device)``: ``gather(obj)`` collects every rank's picklable
    ``obj`` on rank 0 (a list ordered by rank) and returns None elsewhere (every rank calls it: it is
    also a barrier); ``close()`` waits for every rank and destroys the group (a rank exiting with a
    live gloo group can abort); ``device`` is the rank's own device.
    """
    import torch.distributed as dist
    use_nccl = device.type == "cuda"
    if use_nccl:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_nccl else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def gather(obj):
        bucket = [None] * world if rank == 0 else None
        dist.gather_object(obj, bucket, dst=0)
        return bucket

    def close():
        dist.barrier()
        dist.destroy_process_group()

    return rank, world, gather, close, device
