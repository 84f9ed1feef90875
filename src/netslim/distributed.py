"""Multi-GPU / multi-node training on PyTorch's own engine: launched by ``torchrun``, run with DDP.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_from_env` joins the process group
(NCCL on GPU, gloo on CPU). Each rank reads its own shard of every epoch (``Loader(rank=,
world_size=)``), gradients are averaged by DDP, and the sparsity term is added after that average,
so the BN scales stay identical on every rank. Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    """The rank and world size of the process group this process is in (single process: 0 of 1)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
