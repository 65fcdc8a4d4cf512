"""Data-parallel training with ``torchrun``: process group set-up, sharding and gathering.

Launch (one node, N GPUs)::

    torchrun --standalone --nproc_per_node=N run.py train --config configs/dummy4.yaml

Several nodes (run on every node; node 0's address as the rendezvous endpoint)::

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK \\
             --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 --rdzv_id=$JOB_ID \\
             run.py train --config configs/dummy6.yaml

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the engine then uses NCCL on CUDA and gloo on CPU,
a ``DistributedSampler`` for training (``data.batch_size`` is per process), disjoint shards for validation whose
predictions are gathered so metrics are over the whole validation set, and writes logs and checkpoints on rank 0
only. Checkpoints hold the plain (unwrapped) model and load in a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_gather_objects", "all_reduce_sum", "ShardSampler", "select_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(preference: str, info: DistInfo) -> torch.device:
    """``train.device``: ``auto`` = the local rank's GPU when CUDA is available, else the CPU."""
    from survival3d.runtime import resolve_device

    return resolve_device(preference, key="train.device", local_rank=info.local_rank if (info.enabled or preference == "auto") else None)


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device_preference != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        log.info("rank %d/%d joined the process group (%s)", info.rank, world, dist.get_backend())
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``: disjoint shards covering the data set once (no padding, unlike
    ``DistributedSampler``), for evaluation whose gathered results must not count a case twice."""

    def __init__(self, n: int, info: DistInfo):
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
