"""Backbone forward on the CPU: eager against channels-last (3-D) and torch.compile (issue 20).

r3d_18_narrow (random init), batch 32 of 16 x 64 x 64 clips, torch threads as the engine's rule gives with
one decoding process on this machine; median of 3 timed passes (min-max) after warm-up; compile time apart.
Writes benchmarks/results/compile.json. Not measured here: CUDA (no GPU on this machine).

    python benchmarks/bench_compile.py [--passes 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vcache.extract.options import usable_cores
from vcache.models import build_backbone

RESULTS = Path(__file__).parent / "results"


def timed(fn, x, passes: int, repeats: int = 3) -> list[float]:
    out = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(passes):
                fn(x)
            out.append((time.perf_counter() - t0) / passes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS / "compile.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, usable_cores() - 1))
    model = build_backbone("r3d_18_narrow").eval()
    x = torch.randn(32, 3, 16, 64, 64)
    res: dict = {"threads": torch.get_num_threads(), "batch": list(x.shape)}
    with torch.inference_mode():
        model(x)
    res["eager_s"] = timed(model, x, args.passes)
    cl = model.to(memory_format=torch.channels_last_3d)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        cl(xc)
    res["channels_last_s"] = timed(cl, xc, args.passes)
    model = model.to(memory_format=torch.contiguous_format)
    try:
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        res["compile_time_s"] = round(time.perf_counter() - t0, 1)
        res["compiled_s"] = timed(compiled, x, args.passes)
    except Exception as e:  # no C++ compiler, unsupported op: say so
        res["compiled_error"] = f"{type(e).__name__}: {e}"[:300]
    for k in ("eager_s", "channels_last_s", "compiled_s"):
        if k in res:
            v = res[k]
            res[k] = {
                "median": round(statistics.median(v), 4),
                "min": round(min(v), 4),
                "max": round(max(v), 4),
            }
    e = res["eager_s"]["median"]
    res["speedup_vs_eager"] = {
        k: round(e / res[k]["median"], 3) for k in ("channels_last_s", "compiled_s") if k in res
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
