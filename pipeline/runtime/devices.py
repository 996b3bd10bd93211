"""Device choice shared by every stage."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA when there is one, else the CPU. Under torchrun, "auto" and "cuda" mean this rank's GPU
    (LOCAL_RANK). Asking for CUDA where torch sees none is an error, not a silent fallback."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return torch.device(device)
