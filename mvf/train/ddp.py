"""Distributed data parallel set-up for `torchrun` (gloo on the CPU, NCCL on CUDA).

`torchrun --nproc_per_node=N -m mvf train ...` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them training runs in one process and every helper here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str = "cpu") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over ranks (a copy; the input is untouched)."""
    if not info.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward pass, but each rank's forward then
    updates its own running statistics, so they differ between ranks until the next step.
    """
    if not info.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def gather_object(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def parameter_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters and buffers in float64: equal across ranks that are in sync."""
    total = torch.zeros((), dtype=torch.float64)
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.detach().double().sum().cpu()
    return float(total)
