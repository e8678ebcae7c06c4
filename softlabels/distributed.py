"""Multi-process support through PyTorch's own runtime: launch with ``torchrun``, which sets
RANK, LOCAL_RANK and WORLD_SIZE. The backend is NCCL when the processes use CUDA and gloo
otherwise (SOFTLABELS_DIST_BACKEND overrides); each rank takes its own local GPU,
cuda:LOCAL_RANK. Outside torchrun everything here is a no-op with world size 1.

The one sharding rule, for stage one (which chunks a rank computes) and stage two (which chunks,
or without a store which transfer positions, a rank trains on): item c belongs to rank
c % world.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from softlabels.errors import SoftLabelsError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: np.ndarray) -> np.ndarray:
        """This rank's share of ``items`` (chunk indices or positions): c % world == rank."""
        items = np.asarray(items)
        return items[items % self.world == self.rank]

    def rows_per_rank(self, chunk_rows: int, num_samples: int) -> list[int]:
        """Rows each rank gets when whole chunks of ``chunk_rows`` rows are dealt out."""
        starts = np.arange(0, num_samples, chunk_rows)
        sizes = np.minimum(starts + chunk_rows, num_samples) - starts
        return [int(sizes[r :: self.world].sum()) for r in range(self.world)]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def collective(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this rank; then every rank learns whether any rank failed, so no rank is
        left waiting at a barrier for one that died with an error."""
        if self.world == 1:
            return fn()
        try:
            result, error = fn(), None
        except Exception as exc:  # re-raised below, after the other ranks have heard of it
            result, error = None, exc
        errors: list[str | None] = [None] * self.world
        dist.all_gather_object(errors, None if error is None else str(error))
        if error is not None:
            raise error
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if failed:
            raise SoftLabelsError(f"rank {failed[0][0]} failed: {failed[0][1]}")
        return result  # type: ignore[return-value]


def init_from_env(device: torch.device | None = None) -> Dist:
    """The process group torchrun describes (NCCL for CUDA, else gloo), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        default = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=os.environ.get("SOFTLABELS_DIST_BACKEND", default))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def local_device(device: torch.device, d: Dist) -> torch.device:
    """Under torchrun, each rank's own GPU: cuda:LOCAL_RANK (an explicit cuda:N is kept)."""
    if device.type == "cuda" and d.world > 1 and device.index in (None, 0):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
