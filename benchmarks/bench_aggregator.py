"""SCALE aggregator training throughput on the CPU, and the share of each step spent loading data.

Setting: an in-memory cache of 2048 videos x 16 crops x 768 dims (random features: throughput does not
depend on their values), the paper's default model (2 layers x 256, K = 8 of 16, mask 25 %, batch 512).
The whole cache sits in memory (on the device) as `vcache.learn.scale.train_scale` loads it; "data" is the
part of a step that samples the two crop sets and masks and gathers the batch, the rest is forward, backward
and the AdamW step. One warm-up step, then `--steps` timed steps. Target: data share under 10 %.
Writes benchmarks/results/aggregator.json.

    python benchmarks/bench_aggregator.py [--videos 2048] [--steps 12] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from vcache.learn.aggregator import ScaleConfig
from vcache.learn.scale import train_scale
from vcache.store import Cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2048)
    ap.add_argument("--crops", type=int, default=16)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "aggregator.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    n, k = args.videos, args.crops
    boxes = rng.random((n, k, 6), dtype=np.float32)
    cache = Cache(
        features=rng.standard_normal((n, k, args.dim), dtype=np.float32),
        boxes=boxes,
        flips=np.zeros((n, k), bool),
        labels=np.zeros(n, np.int64),
        paths=[f"v{i}" for i in range(n)],
        index=np.arange(n),
        attrs={"feature_dim": args.dim, "backbone": {"name": "random"}},
    )
    cfg = ScaleConfig(feature_dim=args.dim, batch_size=args.batch, epochs=1000)
    with tempfile.TemporaryDirectory() as tmp:
        train_scale(cache, cfg, Path(tmp) / "warm.pt", device=args.device, max_steps=1)  # warm-up
        res = train_scale(cache, cfg, Path(tmp) / "s.pt", device=args.device, max_steps=args.steps)
    result = {
        "setting": {
            "videos": n,
            "crops": k,
            "dim": args.dim,
            "k": cfg.k,
            "width": cfg.width,
            "depth": cfg.depth,
            "batch": args.batch,
            "mask_ratio": cfg.mask_ratio,
        },
        "device": args.device,
        "threads": args.threads,
        "steps": args.steps,
        "samples_per_s": res.samples_per_s,
        "data_share": res.data_share,
        "target_data_share": 0.10,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    where = f"{args.device}, {args.threads} threads"
    print(f"{res.samples_per_s:.1f} videos/s ({where}); data share {res.data_share:.1%}")


if __name__ == "__main__":
    main()
