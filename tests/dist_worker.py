"""What one torchrun rank runs in tests/test_distributed.py (a real torchrun job: gloo, 2 processes).

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py MODE OUT_DIR [JSON]

Each rank writes OUT_DIR/rank<R>.json with what the test checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from vcache.runtime.distributed import (
    broadcast_object,
    check_replicas,
    collective_device,
    end_distributed,
    init_distributed,
    mean_over_ranks,
)


def collectives(ctx) -> dict:
    torch.manual_seed(0)
    same = nn.Linear(3, 2)
    other = nn.Linear(3, 2)
    with torch.no_grad():
        other.weight[0, 0] += ctx.rank  # rank 1's replica differs
    try:
        check_replicas(other)
        caught = None
    except RuntimeError as e:
        caught = str(e)
    return {
        "device": str(collective_device()),
        "mean": mean_over_ranks(float(ctx.rank + 1)),
        "broadcast": broadcast_object({"from": ctx.rank, "run_id": f"id-{ctx.rank}"}),
        "same_spread": check_replicas(same),
        "diverged_error": caught,
    }


def cvrl(ctx, args: dict) -> dict:
    from vcache.pretrain.cvrl import CVRLConfig, train_cvrl
    from vcache.pretrain.data import list_videos

    torch.set_num_threads(1)
    out = Path(args["out"].format(rank=ctx.rank))  # {rank} in the path: a node-local folder per rank
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = CVRLConfig(**args["config"])
    summary = train_cvrl(
        list_videos(args["videos"]), out, cfg, ctx, resume=args.get("resume", False), progress=False
    )
    return summary


def stica(ctx, args: dict) -> dict:
    """End-to-end STiCA (with audio when the config says so) on this rank's share of every batch."""
    from vcache.data.datasets import load_manifest
    from vcache.learn.stica import ViewConfig
    from vcache.pretrain.stica import PretrainSticaConfig, pretrain_stica

    torch.set_num_threads(1)
    if args.get("float64"):
        torch.set_default_dtype(torch.float64)
    out = Path(args["out"])
    config = dict(args["config"])
    cfg = PretrainSticaConfig(**{**config, "views": ViewConfig(**config["views"])})
    steps: list[dict] = []  # as the command's progress: called on rank 0 only
    res = pretrain_stica(load_manifest("folder", args["videos"]), out, cfg, ctx=ctx, progress=steps.append)
    return {
        "steps": res.steps,
        "no_audio_videos": res.no_audio_videos,
        "history": res.history,
        "infos": steps,
    }


def main() -> None:
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    ctx = init_distributed("cpu", timeout_s=60)  # a rank left waiting fails the test in a minute
    try:
        run = {"collectives": lambda: collectives(ctx), "stica": lambda: stica(ctx, args)}
        result = run[mode]() if mode in run else cvrl(ctx, args)
    finally:
        end_distributed()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
