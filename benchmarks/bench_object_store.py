"""Object-storage benchmark (issue 16): the same extraction to a local folder and to a local S3 server.

Generates N tiny videos (as bench_load.py: 8 frames, 40x32, 10 classes), starts moto's S3 server on
127.0.0.1 (nothing leaves the machine), and runs vcache.extract.extract twice in this process, once with
`--out` a local folder and once with `s3://bench/train.zarr`: total time, the store-write share of it
(`timings["write"]`: shard writes, digests included) and the creation + lock time (total minus forward,
decode wait and writes). Then stage 2's `load_cache` of each store (best of 3). The local S3 server is a
Python process on the same 2 cores: its figures bound what a network bucket costs from below in requests,
not in latency. Writes benchmarks/results/object_store.json.

    python benchmarks/bench_object_store.py [--videos 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_load import make_videos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=256)
    ap.add_argument("--per-shard", type=int, default=16)
    args = ap.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    from vcache.data.crops import CropSettings
    from vcache.data.datasets import load_manifest
    from vcache.extract import ExtractOptions, extract
    from vcache.models import build_backbone
    from vcache.store import load_cache

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket="bench"
    )
    model = build_backbone("r3d_18_narrow")
    settings = CropSettings(
        mode="train", clip_frames=8, frame_stride=1, input_size=32, resize_short=32, crops_per_video=4
    )
    opts = ExtractOptions(workers=1, videos_per_shard=args.per_shard, batch_size=64)
    results: dict = {"videos": args.videos, "crops_per_video": 4, "videos_per_shard": args.per_shard}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        make_videos(root, args.videos)
        manifest = load_manifest("folder", root)
        for name, out in (("local", str(Path(tmp) / "train.zarr")), ("s3", "s3://bench/train.zarr")):
            rep = extract(manifest, out, model, settings, opts)
            t = rep.timings
            other = t["total"] - t["forward"] - t["decode_wait"] - t["write"]
            loads = []
            for _ in range(3):
                t0 = time.perf_counter()
                cache = load_cache(out)
                loads.append(time.perf_counter() - t0)
            results[name] = {
                "total_s": round(t["total"], 3),
                "write_s": round(t["write"], 3),
                "write_share": round(t["write"] / t["total"], 3),
                "other_s (creation, locks, claims, scan)": round(other, 3),
                "load_cache_s": round(min(loads), 3),
                "done": rep.done,
                "rows": int(cache.features.shape[0]),
            }
            print(name, results[name], flush=True)
    server.stop()
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    out = Path(__file__).parent / "results" / "object_store.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
