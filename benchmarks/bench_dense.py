"""Dense extraction benchmark (issue 15): memory and speed against video length, and dense against eval mode.

Two generated 320 x 240 H.264 videos at 25 fps, 1 minute and 10 minutes (a gradient with a moving square,
crf 23). Each is extracted alone by the command line (`vcache extract --mode dense`, r3d_18_narrow at its
defaults: 16 frames x stride 2 = 32-frame windows, no overlap, 64 px, one decoding worker), in a fresh
process, while a sampler reads the resident memory (VmRSS) of the process and its decoding workers every
50 ms: the peak of their sum is the run's peak RSS (also reported apart: the main process, which runs the
backbone, and the sum of the others: the decoding worker and multiprocessing's resource tracker;
shared-memory slots count in both the main process and the worker once touched). Windows per second = rows
written / the run's own extraction seconds (the CLI's summary, start-up included). Then the same two videos
in eval mode (5 x 3 clips, today's default), for crops per second and seconds per video.

Target (issue 15): peak RSS of the 10-minute run within 1.2x of the 1-minute run.
Writes benchmarks/results/dense.json and dense.md.

    python benchmarks/bench_dense.py [--minutes 1 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

RESULTS = Path(__file__).parent / "results"
H, W, FPS = 240, 320, 25


def write_video(path: Path, seconds: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1).astype(np.uint8)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "23", "preset": "ultrafast"}
        for i in range(seconds * FPS):
            img = base.copy()
            y, x = (i * 3) % (H - 40), (i * 5) % (W - 40)
            img[y : y + 40, x : x + 40] = (250, 40, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _tree_rss_kb(root: int) -> dict[int, int]:
    """VmRSS of `root` and each of its descendants, in kB (read from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1])
        except OSError:
            pass
    return out


def run(folder: Path, out: Path, mode: str) -> dict:
    cmd = [sys.executable, "-m", "vcache.cli", "extract", str(folder), "--out", str(out), "--backbone",
           "r3d_18_narrow", "--mode", mode, "--workers", "1", "--quiet", "--overwrite"]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    peak = [0, 0, 0]  # the tree's sum, the main process, the other processes' sum

    def sample() -> None:
        while p.poll() is None:
            rss = _tree_rss_kb(p.pid)
            main, total = rss.get(p.pid, 0), sum(rss.values())
            peak[:] = max(peak[0], total), max(peak[1], main), max(peak[2], total - main)
            time.sleep(0.05)

    th = threading.Thread(target=sample)
    th.start()
    err = p.communicate()[1]
    th.join()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{mode} on {folder}: exit {p.returncode}\n{err[-2000:]}")
    m = re.search(r"(\d+) clips\s+in ([\d.]+) s", err)
    rows, seconds = int(m.group(1)), float(m.group(2))
    return {"mode": mode, "rows": rows, "seconds": seconds, "wall_s": round(wall, 2),
            "rows_per_s": round(rows / seconds, 1), "peak_rss_mb": round(peak[0] / 1024, 1),
            "peak_main_mb": round(peak[1] / 1024, 1),
            "peak_workers_mb": round(peak[2] / 1024, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, nargs=2, default=[1, 10])
    args = ap.parse_args()
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "load_before": os.getloadavg()[0], "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            folder = Path(tmp) / f"m{minutes}"
            t0 = time.perf_counter()
            write_video(folder / "c" / f"v{minutes}.mp4", minutes * 60)
            print(f"{minutes} min video written in {time.perf_counter() - t0:.0f} s", flush=True)
            for mode in ("dense", "eval"):
                r = run(folder, Path(tmp) / f"{mode}{minutes}.zarr", mode)
                r["minutes"] = minutes
                out["runs"].append(r)
                print(json.dumps(r), flush=True)
    out["load_after"] = os.getloadavg()[0]
    d = {r["minutes"]: r for r in out["runs"] if r["mode"] == "dense"}
    lo, hi = args.minutes
    out["rss_ratio_long_vs_short"] = round(d[hi]["peak_rss_mb"] / d[lo]["peak_rss_mb"], 3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dense.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| video | mode | rows | extraction s | rows/s | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in out["runs"]:
        cells = [f"{r['minutes']} min", r["mode"], r["rows"], r["seconds"], r["rows_per_s"], r["peak_rss_mb"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    ratio = out["rss_ratio_long_vs_short"]
    lines.append(f"\nPeak RSS, {hi} min / {lo} min dense: {ratio}x (target <= 1.2x). Load average "
                 f"{out['load_before']:.1f} before, {out['load_after']:.1f} after.")  # fmt: skip
    (RESULTS / "dense.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
