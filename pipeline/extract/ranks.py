"""Ranks of an extraction run: torchrun's share of this process and its process group (barriers and one
broadcast, gloo)."""

from __future__ import annotations

import os
from typing import Any


def dist_rank_world() -> tuple[int, int]:
    """This process's share under torchrun (RANK, WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Dist:
    """torchrun's process group (gloo: extraction only needs barriers and one broadcast). ``timeout_s``
    bounds the first barrier, where ranks wait for rank 0 to delete (--overwrite) or create the store;
    the last one comes after every rank saw no live claim left, so it is short."""

    def __init__(self, world: int, timeout_s: float):
        self.active = world > 1 and "MASTER_ADDR" in os.environ
        if self.active:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
            self.dist = dist

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]
