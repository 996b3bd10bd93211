"""Stage-2 load time of a store on a local disk and on a local S3 server (issue 16), before and after.

A store of N videos x K crops x D dims (float16, 64 videos a shard; default 2,000 x 16 x 512, 65 MB of
features) is written locally with random features, and its objects are copied to moto's S3 server, run in
its own process on 127.0.0.1 (benchmarks/s3_server.py). Then, each best of --repeats, alternated:
- before: the previous `load_cache`, one zarr read per whole array (features, boxes, flips, status), one
  array after another (zarr fetches up to 10 chunks of one read at once);
- after: `vcache.store.load_cache`, whole-shard reads of every (shard, array), 16 in flight at once;
- with `--cache-dir`: the first load (copy, verify, load) and a later one (one listing, local load).
Each on the local folder and on S3 with no added delay and with --delay-ms added before every request (an
assumed bucket round trip: moto on the loopback answers in about a millisecond). Every load must return
the same arrays. Writes benchmarks/results/stage2_remote.json.

    python benchmarks/bench_stage2_remote.py [--videos 2000 --crops 16 --dim 512 --delay-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def load_whole_arrays(path):
    """The previous `load_cache` (before this change), kept as the baseline: one read per array."""
    from vcache.store import DONE, open_store

    st = open_store(path)
    k = st.crops_per_video
    keep = np.flatnonzero(st.status() == DONE)
    n = st.n_videos
    feats = st.group["crops/features"][:].reshape(n, k, -1)[keep].astype(np.float32)
    boxes = st.group["crops/boxes"][:].reshape(n, k, 6)[keep]
    flips = st.group["crops/flip"][:].reshape(n, k)[keep]
    return feats, boxes, flips, st.labels()[keep]


def load_new(path):
    from vcache.store import load_cache

    c = load_cache(path)
    return c.features, c.boxes, c.flips, c.labels


def make_store(path: Path, n: int, k: int, d: int) -> None:
    from vcache.store import DONE, FAILED, VideoMeta, create_store

    rng = np.random.default_rng(0)
    st = create_store(
        path, [f"c{i % 10}/v{i:05d}.mp4" for i in range(n)], np.arange(n) % 10, k, d, {}, videos_per_shard=64
    )
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        metas = [VideoMeta(status=FAILED if i % 97 == 5 else DONE) for i in v]  # a few failed videos
        feats = rng.standard_normal((len(v) * k, d)).astype(np.float16)
        st.write_shard(s, feats, rng.random((len(v) * k, 6), np.float32), rng.random(len(v) * k) < 0.5, metas)


def upload(local: Path, url: str) -> int:
    from vcache.store.location import location

    loc = location(url)
    files = [f for f in local.rglob("*") if f.is_file()]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda f: loc.put(str(f.relative_to(local)), f.read_bytes()), files))
    return len(files)


def best(fn, path, repeats: int) -> tuple[float, tuple]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(path)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--crops", type=int, default=16)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import boto3

    tmp = Path(tempfile.mkdtemp())
    delay = tmp / "delay_ms"
    delay.write_text("0")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "s3_server.py"), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = int(server.stdout.readline())
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket="bench"
    )
    res: dict = {"videos": args.videos, "crops": args.crops, "dim": args.dim, "videos_per_shard": 64}
    try:
        local, url = tmp / "train.zarr", "s3://bench/train.zarr"
        make_store(local, args.videos, args.crops, args.dim)
        res["objects"] = upload(local, url)
        res["features_mb"] = round(args.videos * args.crops * args.dim * 2 / 1e6, 1)
        ref = None
        for where, path, ms in (("local", local, 0.0), ("s3", url, 0.0), ("s3_delay", url, args.delay_ms)):
            delay.write_text(str(ms))
            before, after = [], []
            for _ in range(args.repeats):  # alternate, so both see the same load
                t, a = best(load_whole_arrays, path, 1)
                before.append(t)
                t, b = best(load_new, path, 1)
                after.append(t)
                ref = ref if ref is not None else a
                for x, y, z in zip(ref, a, b, strict=True):
                    assert np.array_equal(x, y) and np.array_equal(x, z), "the loads differ"
            row = {"added_delay_ms": ms, "before_s": round(min(before), 3), "after_s": round(min(after), 3)}
            row["speedup"] = round(min(before) / min(after), 2)
            if where != "local":
                os.environ["VCACHE_CACHE_DIR"] = str(tmp / f"cache-{where}")
                first, c = best(load_new, path, 1)
                again, c2 = best(load_new, path, args.repeats)
                del os.environ["VCACHE_CACHE_DIR"]
                assert all(np.array_equal(x, y) for x, y in zip(ref, c, strict=True))
                assert all(np.array_equal(x, y) for x, y in zip(ref, c2, strict=True))
                row["cache_first_s (copy, verify, load)"] = round(first, 3)
                row["cache_again_s (list, local load)"] = round(again, 3)
            res[where] = row
            print(where, row, flush=True)
    finally:
        server.terminate()
        server.wait()
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    res["load_average_1min"] = round(os.getloadavg()[0], 2)
    out = Path(__file__).parent / "results" / "stage2_remote.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
