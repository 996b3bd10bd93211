"""Stage-2 checkpoints: written atomically, read back with a format check (SCALE aggregators here; STiCA
heads pass their own format)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vcache.learn.aggregator import ScaleAggregator, ScaleConfig, ScaleSSL
from vcache.store import StoreError

CKPT_FORMAT = "vcache-scale-1"


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill never leaves a half-written checkpoint


def load_checkpoint(path: str | Path, fmt: str = CKPT_FORMAT, what: str = "SCALE") -> dict[str, Any]:
    """A stage-2 checkpoint dict whose "format" is `fmt` (SCALE aggregators; STiCA heads pass theirs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise StoreError(f"{p}: not a vcache {what} checkpoint")
    return ckpt


def load_aggregator(path: str | Path) -> tuple[ScaleAggregator, dict[str, Any]]:
    """The trained predictor network (heads dropped) and the checkpoint's metadata (config, provenance)."""
    ckpt = load_checkpoint(path)
    cfg = ScaleConfig(**ckpt["config"])
    model = ScaleSSL(cfg)
    model.load_state_dict(ckpt["model"])
    model.aggregator.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    return model.aggregator, meta
