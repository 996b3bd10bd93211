"""Load benchmark (issue 13): many tiny videos, a SIGKILL halfway, the resume.

Generates N tiny videos (8 frames, 40x32, H.264, 10 classes in the folder layout), then, each run in its own
process (`python bench_load.py --child ...` calls vcache.extract.extract and prints its report as JSON):

1. a full run over N/4 videos and one over N (fresh stores): the engine's and store's per-video overhead,
   (total - forward - waiting for decode) / videos, i.e. everything beyond decoding and the forward pass
   (claims, batching, shard writes, digests, progress), and the peak RSS of each (ru_maxrss of the
   process, read with os.wait4): flat in N means no per-video state grows;
2. the N-video run again, SIGKILLed once half of the videos are marked done, then resumed: the resume's
   scan of the finished shards (open the store, clean leftovers, find the pending shards; timed in the
   child before the run) and whether the resumed store verifies complete.

Backbone r3d_18_narrow (random init), 1 crop of 8 frames at 32 px, one decoding worker, 64 videos a shard.
Targets: overhead < 5 ms a video, peak RSS flat in N, resume scan < 2 s. Writes
benchmarks/results/load.json.

    python benchmarks/bench_load.py [--videos 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results") / "load.json"


def make_videos(root: Path, n: int) -> None:
    import av

    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"class{i % 10}" / f"v{i:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 40, 32, "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "30"}
            for t in range(8):
                f = av.VideoFrame.from_ndarray(np.roll(base, t, axis=1), format="rgb24")
                for p in s.encode(f):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)


def child(root: str, out: str) -> None:
    """One extraction run in this process; prints its report (and the resume scan time) as JSON."""
    from vcache.data.crops import CropSettings
    from vcache.data.datasets import load_manifest
    from vcache.extract import ExtractOptions, extract
    from vcache.extract.output import clean_leftovers
    from vcache.models import build_backbone
    from vcache.store import open_store

    scan_s = None
    if Path(out, "zarr.json").exists():  # a resume: time the scan of what is already there
        t0 = time.perf_counter()
        st = open_store(out)
        clean_leftovers(Path(out))
        pending = st.pending_shards()
        scan_s = time.perf_counter() - t0
        print(f"resume: {len(pending)} of {st.n_shards} shards pending", file=sys.stderr)
    manifest = load_manifest("folder", Path(root), None)
    s = CropSettings(
        mode="train", clip_frames=8, frame_stride=1, input_size=32, resize_short=37, crops_per_video=1
    )
    opts = ExtractOptions(workers=1, batch_size=64, videos_per_shard=64, device="cpu", max_failed_fraction=0)
    rep = extract(manifest, out, build_backbone("r3d_18_narrow"), s, opts)
    print(json.dumps({"report": rep.__dict__, "resume_scan_s": scan_s}))


def run_child(root: Path, out: Path, kill_at_done: float | None = None) -> tuple[dict | None, int]:
    """Run `child` in a process; returns (its JSON, peak RSS in kB). With kill_at_done, SIGKILL it once
    that fraction of the store's videos is marked done."""
    cmd = [sys.executable, __file__, "--child", str(root), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    if kill_at_done is not None:
        from vcache.store import DONE, open_store

        while p.poll() is None:
            time.sleep(0.5)
            try:
                status = open_store(out).status()
            except Exception:
                continue
            if (status == DONE).mean() >= kill_at_done:
                p.send_signal(signal.SIGKILL)
                break
    stdout = p.stdout.read()
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = 0
    try:
        return json.loads(stdout.splitlines()[-1]), usage.ru_maxrss
    except (IndexError, ValueError):
        return None, usage.ru_maxrss


def overhead_ms(rep: dict) -> float:
    t = rep["timings"]
    return 1000 * (rep["seconds"] - t["forward"] - t["decode_wait"]) / max(1, rep["processed_now"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=5000)
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from vcache.store import verify

    res: dict = {"videos": args.videos, "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        quarter = args.videos // 4
        make_videos(tmp / "small", quarter)
        make_videos(tmp / "big", args.videos)
        res["generate_s"] = round(time.perf_counter() - t0, 1)
        for name, root in (("quarter", tmp / "small"), ("full", tmp / "big")):
            out, rss = run_child(root, tmp / f"{name}.zarr")
            rep = out["report"]
            res[name] = {
                "videos": rep["processed_now"],
                "seconds": round(rep["seconds"], 2),
                "forward_s": round(rep["timings"]["forward"], 2),
                "decode_wait_s": round(rep["timings"]["decode_wait"], 2),
                "worker_decode_s": round(rep["timings"]["worker_decode"], 2),
                "write_s": round(rep["timings"]["write"], 2),
                "overhead_ms_per_video": round(overhead_ms(rep), 3),
                "peak_rss_mb": round(rss / 1024, 1),
            }
            print(name, res[name], flush=True)
        out_path = tmp / "killed.zarr"
        _, rss_killed = run_child(tmp / "big", out_path, kill_at_done=0.5)
        resumed, rss = run_child(tmp / "big", out_path)
        rep = resumed["report"]
        problems, counts = verify(out_path, require_complete=True)
        res["resume"] = {
            "videos_redone": rep["processed_now"],
            "scan_s": round(resumed["resume_scan_s"], 3),
            "seconds": round(rep["seconds"], 2),
            "overhead_ms_per_video": round(overhead_ms(rep), 3),
            "peak_rss_mb": round(rss / 1024, 1),
            "verify_problems": problems[:5],
            "done": counts.get("done"),
        }
        print("resume", res["resume"], flush=True)
    res["rss_ratio_full_vs_quarter"] = round(res["full"]["peak_rss_mb"] / res["quarter"]["peak_rss_mb"], 3)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
