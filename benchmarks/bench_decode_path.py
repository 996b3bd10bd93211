"""The decode-and-cut path of an eval-mode extraction, before and after two changes, side by side.

1. Decoding strided clips: decord's get_batch seeks at every index that does not follow the previous one
   (`GAP_FILL = 0`, the old behaviour) against decoding through gaps of up to 16 frames and dropping the
   extra frames (`GAP_FILL = 16`, `vcache.data.video`).
2. Cutting a crop: the bilinear resize as `np.einsum(..., optimize=True)` (the old code) against two
   `np.matmul` on reshaped views (`vcache.data.crops.cut`).

Setting: the videos `vcache synth --task order` writes for `make reproduce-tables` (64 frames at 64^2,
H.264), the frames an eval layout 5x1 of 8-frame clips at stride 2 needs, decoded at 36^2; crops of 8 x 36^2
and 8 x 64^2 frames (100 each) resized to 32^2, with a full-frame box (eval mode) and with random boxes.
Runs alternate (old, new) per repeat; the median of the repeats is reported with the ratio. The outputs
are compared pixel for pixel. Writes benchmarks/results/decode_path.json.

    python benchmarks/bench_decode_path.py [--videos 40] [--repeats 3]
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

import vcache.data.video as video
from vcache.data.crops import cut, resize_matrix


def cut_einsum(frames: np.ndarray, box: np.ndarray, flip: bool, size: int) -> np.ndarray:
    """The resize as it was before (np.einsum with optimize=True), kept here as the baseline."""
    _, h, w, _ = frames.shape
    y0, x0, y1, x1 = (float(v) for v in box[2:])
    fy, my = resize_matrix(y0 * h, y1 * h, h, size)
    fx, mx = resize_matrix(x0 * w, x1 * w, w, size)
    region = frames[:, fy : fy + my.shape[1], fx : fx + mx.shape[1]].astype(np.float32)
    out = np.einsum("sh,thwc->tswc", my, region, optimize=True)
    out = np.einsum("rw,tswc->tsrc", mx, out, optimize=True)
    if flip:
        out = out[:, :, ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=40, help="Generated videos to decode [40].")
    ap.add_argument("--repeats", type=int, default=3, help="Alternated (old, new) repeats [3].")
    args = ap.parse_args()
    from typer.testing import CliRunner

    from vcache.cli.app import app

    tmp = Path(tempfile.mkdtemp())
    synth = ["synth", str(tmp), "--train", str(args.videos), "--test", "0", "--task", "order", "--frames",
             "64", "--size", "64", "--colours", "pool", "-q"]  # fmt: skip
    res = CliRunner().invoke(app, synth)
    assert res.exit_code == 0, res.output
    paths = sorted(str(p) for p in (tmp / "videos").glob("*/*.mp4"))
    # 5 clips of 8 frames at stride 2 spread over 64 frames (eval layout 5x1)
    starts = np.linspace(0, 64 - 16, 5).round().astype(int)
    wanted = np.unique(np.concatenate([s + 2 * np.arange(8) for s in starts]))

    def decode(gap: int) -> list[dict[int, np.ndarray]]:
        video.GAP_FILL = gap
        return [video.decode_frames(p, wanted, 36, 36, 64)[0] for p in paths]

    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (8, s, s, 3), dtype=np.uint8) for s in (36, 64) for _ in range(100)]
    boxes = [np.array([0, 1, *sorted(rng.uniform(0, 1, 2)), *sorted(rng.uniform(0, 1, 2))]) for _ in clips]
    boxes = [np.array([b[0], b[1], b[2], b[4], b[3], b[5]]) for b in boxes]  # y0, x0, y1, x1

    full = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])  # an eval-mode centre crop of a square frame

    def cuts(fn, random_boxes: bool) -> list[np.ndarray]:
        pairs = zip(clips, boxes if random_boxes else [full] * len(clips), strict=True)
        return [fn(c, b, i % 2 == 1, 32) for i, (c, b) in enumerate(pairs)]

    runs = {
        "seek": lambda: decode(0),
        "fill": lambda: decode(16),
        "einsum_full": lambda: cuts(cut_einsum, False),
        "matmul_full": lambda: cuts(cut, False),
        "einsum_random": lambda: cuts(cut_einsum, True),
        "matmul_random": lambda: cuts(cut, True),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    video.GAP_FILL = 16
    same_frames = all(
        sorted(a) == sorted(b) and all(np.array_equal(a[i], b[i]) for i in a)
        for a, b in zip(outs["seek"], outs["fill"], strict=True)
    )
    diff = max(
        int(np.abs(a.astype(int) - b).max())
        for k in ("full", "random")
        for a, b in zip(outs[f"einsum_{k}"], outs[f"matmul_{k}"], strict=True)
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "setting": f"{len(paths)} synth order videos (64 frames, 64^2, H.264), {len(wanted)} frames a video "
        "(eval 5x1, 8-frame clips at stride 2) decoded at 36^2; crops of 8 x 36^2 and 8 x 64^2 frames (100 "
        "each) -> 32^2, with a full-frame box (eval) and with random boxes",
        "decode_ms_per_video": {
            "seek_every_gap": 1e3 * med["seek"] / len(paths),
            "fill_gaps_16": 1e3 * med["fill"] / len(paths),
        },  # fmt: skip
        "decode_speedup": med["seek"] / med["fill"],
        "decode_identical_frames": same_frames,
        "cut_ms_per_crop": {k: 1e3 * med[k] / len(clips) for k in list(runs)[2:]},
        "cut_speedup_full_frame_box": med["einsum_full"] / med["matmul_full"],
        "cut_speedup_random_boxes": med["einsum_random"] / med["matmul_random"],
        "cut_max_pixel_difference": diff,
        "times_s": times,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}",
    }
    out = Path(__file__).parent / "results" / "decode_path.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "times_s"}, indent=1))


if __name__ == "__main__":
    main()
