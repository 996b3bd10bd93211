"""The audio windows of `vcache extract --audio-backbone`: one decode per row (before) against one decode
per video for all its rows (`vcache.data.audio.clip_audios`, after), side by side.

Setting: `vcache synth --audio` videos (order task, 64 frames at 25 fps = 2.56 s, AAC), ROWS window starts
per video drawn uniformly in [0, 1.56] s (the rows of a train-mode store of 8-frame clips). Runs alternate
(before, after) per repeat; the median of the repeats is reported with the ratio, and the windows are
compared sample for sample. Writes benchmarks/results/audio_windows.json.

    python benchmarks/bench_audio_windows.py [--videos 20] [--rows 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vcache.data.audio import AudioConfig, clip_audios
from vcache.data.synth import generate
from vcache.data.synth_audio import add_audio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=20, help="synth videos [20]")
    p.add_argument("--rows", type=int, default=16, help="windows a video [16]")
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats [3]")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audio_windows.json")
    a = p.parse_args()
    cfg = AudioConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, a.videos, 0, task="order", progress=False)
        add_audio(root)
        paths = sorted(str(f) for f in (root / "videos").rglob("*.mp4"))
        rng = np.random.default_rng(0)
        starts = [rng.uniform(0, 1.56, a.rows) for _ in paths]

        def before() -> list[list[np.ndarray]]:
            return [[clip_audios(v, [t], cfg)[0] for t in ts] for v, ts in zip(paths, starts, strict=True)]

        def after() -> list[list[np.ndarray]]:
            return [clip_audios(v, ts, cfg) for v, ts in zip(paths, starts, strict=True)]

        times: dict[str, list[float]] = {"before": [], "after": []}
        outs = {}
        for _ in range(a.repeats):
            for name, fn in (("before", before), ("after", after)):
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
        same = all(
            np.array_equal(x, y)
            for xs, ys in zip(outs["before"], outs["after"], strict=True)
            for x, y in zip(xs, ys, strict=True)
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "videos": a.videos,
        "rows_per_video": a.rows,
        "repeats": a.repeats,
        "ms_per_video": {k: round(1000 * v / a.videos, 2) for k, v in med.items()},
        "speedup": round(med["before"] / med["after"], 2),
        "identical_windows": same,
        "load_1min": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(res, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
