"""Extraction across processes, and the store-write share of extraction time.

Side by side on the same generated videos (r3d_18_narrow, train mode, 16 crops of 16 frames):
- 1 process (1 decoding worker, torch threads = cores) against torchrun with 2 processes (each 1 decoding
  worker, torch threads = cores / 2: threads pinned per process so the two do not oversubscribe the cores);
- the share of extraction time spent writing the store, without and with --feature-maps
  (target: under 5 % without).

Writes benchmarks/results/scaling.json. On a 2-core machine the 2-process run cannot be faster than 1 process
with all cores: it measures the overhead of the split, not a speed-up (reported as measured).

    python benchmarks/bench_scaling.py [--videos 24]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vcache.store import open_store

RESULTS = Path(__file__).parent / "results"


def make_videos(root: Path, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extract import make_videos as gen

    gen(root, n, frames=150)


def run_extract(root: Path, out: Path, nproc: int, threads: int, maps: bool) -> tuple[float, str]:
    args = ["extract", str(root), "--out", str(out), "--backbone", "r3d_18_narrow", "--crops", "16",
            "--videos-per-shard", "4", "--quiet", "--overwrite"]  # fmt: skip
    if maps:
        args.append("--feature-maps")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "vcache.cli", *args]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", "--nproc-per-node", str(nproc), "-m", "vcache.cli", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return time.perf_counter() - t0, r.stderr


def write_share(stderr: str) -> float:
    """The CLI's summary line: '... in T s (... forward F s, waiting for decode D s, store writes W s)'."""
    import re

    m = re.search(r"in ([\d.]+) s .*store writes ([\d.]+) s", stderr.replace("\n", " "))
    return float(m.group(2)) / float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="generated 150-frame 320x240 videos (default 24)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json", help="JSON results file")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="vcache-scaling-"))
    try:
        root = tmp / "videos"
        make_videos(root, args.videos)
        clips = args.videos * 16
        one, err1 = run_extract(root, tmp / "one.zarr", 1, cores, maps=False)
        two, _ = run_extract(root, tmp / "two.zarr", 2, max(1, cores // 2), maps=False)
        with_maps, err_maps = run_extract(root, tmp / "maps.zarr", 1, cores, maps=True)
        a, b = open_store(tmp / "one.zarr"), open_store(tmp / "two.zarr")
        same = bool(
            np.array_equal(a.group["crops/boxes"][:], b.group["crops/boxes"][:])
            and np.allclose(a.group["crops/features"][:], b.group["crops/features"][:], atol=2e-3, rtol=2e-3)
        )
        res = {
            "cores": cores,
            "videos": args.videos,
            "clips": clips,
            "one_process_s": one,
            "two_processes_s": two,
            "one_process_clips_per_s": clips / one,
            "two_processes_clips_per_s": clips / two,
            "two_over_one_throughput": one / two,
            "two_process_store_equals_one": same,
            "store_write_share_no_maps": write_share(err1),
            "store_write_share_with_maps": write_share(err_maps),
            "with_maps_s": with_maps,
            "map_store_bytes": sum(f.stat().st_size for f in (tmp / "maps.zarr").rglob("*") if f.is_file()),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
