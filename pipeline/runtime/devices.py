"""Device choice shared by every stage: one rule from (--device, LOCAL_RANK, visible GPUs) to a device.

:func:`pick_device` is the rule, a pure function of its arguments (tested on the CPU with made-up GPU
counts); :func:`resolve_device` feeds it this process's environment. Every command goes through it, and
:func:`vcache.runtime.distributed.init_distributed` takes the device it returns, so extraction,
pretraining and stage 2 always agree on a rank's GPU.
"""

from __future__ import annotations

import os

import torch


def pick_device(
    requested: str, n_gpus: int, local_rank: int | None = None, local_world: int | None = None
) -> str:
    """The device string for ``requested`` (auto, cpu, cuda, cuda:N) on a rank that sees ``n_gpus`` GPUs.

    - auto: CUDA when there is one, else the CPU.
    - cuda under torchrun (``local_rank`` set): GPU ``local_rank % n_gpus`` of the visible ones, so
      ``--nproc-per-node 8`` on 8 GPUs gives one each, and one visible GPU per rank (SLURM
      ``--gpus-per-task=1``, CUDA_VISIBLE_DEVICES per rank) gives every rank its own ``cuda:0``.
    - cuda:N pins one GPU; under torchrun with several ranks on a node that would put every rank on GPU N,
      so it is refused unless each rank sees one GPU only (then N must be 0).
    - Asking for CUDA where none is visible is an error, never a silent CPU run.
    """
    if requested == "auto":
        requested = "cuda" if n_gpus > 0 else "cpu"
    if not requested.startswith("cuda"):
        return requested
    if n_gpus < 1:
        raise ValueError(f"--device {requested} asked for, but torch sees no CUDA device")
    if requested == "cuda":
        return f"cuda:{(local_rank or 0) % n_gpus}"
    try:
        index = int(requested.split(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N") from None
    if not 0 <= index < n_gpus:
        raise ValueError(f"--device {requested}: this process sees {n_gpus} GPU(s) (cuda:0..{n_gpus - 1})")
    if local_rank is not None and (local_world or 1) > 1 and n_gpus > 1:
        raise ValueError(
            f"--device {requested} under torchrun would put all {local_world} ranks of this node on one GPU; "
            "use --device cuda (each rank takes GPU LOCAL_RANK) or set CUDA_VISIBLE_DEVICES"
        )
    return requested


def resolve_device(device: str = "auto") -> torch.device:
    """This process's device for ``device`` (see :func:`pick_device`); LOCAL_RANK and LOCAL_WORLD_SIZE
    come from torchrun when it started the process."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ
    local_rank = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None
    local_world = int(env["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in env else None
    return torch.device(pick_device(device, n, local_rank, local_world))


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device (NCCL and CUDA caches follow it); no-op on the
    CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
