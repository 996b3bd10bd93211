"""Several backbones in one decode pass (issue 12): two backbones in one run against two separate runs.

Set: `--distinct` generated 300-frame 320x240 H.264 videos (bench_extract.make_videos), each linked under
`--copies` names (crops are seeded by the path, so every copy gets other crops). K = 16 crops of each
backbone's own clip (16 frames at stride 2, 64 px for the narrow ResNets), batch 32, one decoding process
and one torch thread on 2 cores (the engine's defaults there), random-init weights.

Per pair, side by side in each repeat (median of `--repeats`, with min and max):
- decode only: vcache.extract.workers.decode_task over every video in this process;
- backbone only: forward passes of each backbone over as many clips at the engine's thread count;
- separate: one vcache.extract.extract run per backbone (each with its own start-up), their total;
- shared: vcache.extract.engine.extract_many with both backbones (one decode of each video).
Reported: shared / separate (target <= 0.65x where decode is half the cost), and the decode share of one
backbone's work, decode / (decode + backbone), that says which case a pair is.

Pairs (two seeds of one architecture stand for two checkpoints): `balanced` (r3d_18_narrow: its forward
about as costly as decoding on this CPU) and `decode-heavy` (cvrl_r3d_narrow: a forward far cheaper than
decoding, as on a GPU host).

HF: a VideoMAE (random init, hidden 192, 4 layers, 8 frames of 64 px, tubelet 2, patch 16) saved with
save_pretrained and run as hf:FOLDER: the engine's steady-state clips/s beside forward-only clips/s.
Writes benchmarks/results/multi.json and multi.md.

    python benchmarks/bench_multi.py [--distinct 4 --copies 3 --repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import make_videos  # noqa: E402

from vcache.data.crops import CropSettings  # noqa: E402
from vcache.data.datasets import load_manifest  # noqa: E402
from vcache.extract import ExtractOptions, extract  # noqa: E402
from vcache.extract.engine import extract_many  # noqa: E402
from vcache.extract.options import torch_threads, usable_cores  # noqa: E402
from vcache.extract.workers import DecodeTask, decode_task  # noqa: E402
from vcache.models import build_backbone  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAIRS = {
    "balanced": [("r3d_18_narrow", 0), ("r3d_18_narrow", 1)],
    "decode-heavy": [("cvrl_r3d_narrow", 0), ("cvrl_r3d_narrow", 1)],
}


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def settings_for(model, k: int = 16) -> CropSettings:
    p = model.preprocessing
    return CropSettings(
        "train", p.clip_frames, p.frame_stride, p.input_size, p.resize_short, crops_per_video=k
    )


def forward_only(model, s: CropSettings, n_clips: int, threads: int, batch: int = 32) -> float:
    x = torch.randn(batch, 3, s.clip_frames, s.input_size, s.input_size)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model(x[:2])
            t0 = time.perf_counter()
            for done in range(0, n_clips, batch):
                model(x[: min(batch, n_clips - done)])
            return time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)


def tiny_videomae(folder: Path) -> Path:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.VideoMAEConfig(
        image_size=64, patch_size=16, num_frames=8, tubelet_size=2, hidden_size=192, num_hidden_layers=4,
        num_attention_heads=3, intermediate_size=768,
    )  # fmt: skip
    T.VideoMAEModel(cfg).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distinct", type=int, default=4)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pairs", default="balanced,decode-heavy")
    ap.add_argument("--out", type=Path, default=RESULTS / "multi.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vcache-multi-"))
    try:
        root = tmp / "videos"
        made = make_videos(tmp / "gen", args.distinct)
        for c in range(args.copies):
            for p in made:
                (root / f"c{c}").mkdir(parents=True, exist_ok=True)
                os.link(p, root / f"c{c}" / p.name)
        manifest = load_manifest("folder", root)
        paths = [(str(root / p), p) for p in manifest.paths]
        n_clips = 16 * len(paths)
        threads = torch_threads(ExtractOptions(workers=args.workers))
        opts = dict(workers=args.workers, batch_size=32, overwrite=True)
        res: dict = {
            "machine": {"cpus": usable_cores(), "platform": platform.platform()},
            "videos": len(paths),
            "clips_per_backbone": n_clips,
            "workers": args.workers,
            "torch_threads": threads,
            "pairs": {},
        }
        for pair in args.pairs.split(","):
            models = []
            for name, seed in PAIRS[pair]:
                torch.manual_seed(seed)
                models.append((name, build_backbone(name).eval()))
            sets = [settings_for(m) for _, m in models]
            decode_task(DecodeTask(0, *paths[0], sets[0]))  # warm-up: page cache, library init
            runs: dict[str, list] = {"decode": [], "backbone": [], "separate": [], "shared": [], "load1": []}
            for _ in range(args.repeats):
                runs["load1"].append(round(os.getloadavg()[0], 2))
                t0 = time.perf_counter()
                for i, (p, k) in enumerate(paths):
                    decode_task(DecodeTask(i, p, k, sets[0]))
                runs["decode"].append(time.perf_counter() - t0)
                runs["backbone"].append(
                    [forward_only(m, s, n_clips, threads) for (_, m), s in zip(models, sets, strict=True)]
                )
                sep = []
                for i, ((_, m), s) in enumerate(zip(models, sets, strict=True)):
                    rep = extract(manifest, tmp / f"sep{i}.zarr", m, s, ExtractOptions(**opts))
                    assert rep.done == len(paths), rep.failures
                    sep.append(rep.timings["total"])
                runs["separate"].append(sep)
                outs = [
                    (tmp / f"shared{i}.zarr", m, s)
                    for i, ((_, m), s) in enumerate(zip(models, sets, strict=True))
                ]
                reps = extract_many(manifest, outs, ExtractOptions(**opts))
                assert all(r.done == len(paths) for r in reps)
                runs["shared"].append(reps[0].timings["total"])
                print(f"{pair}: {runs['separate'][-1]} vs {runs['shared'][-1]:.1f}", file=sys.stderr)
            dec = runs["decode"]
            bb = [statistics.mean(b) for b in runs["backbone"]]
            ratio = [sh / sum(sp) for sh, sp in zip(runs["shared"], runs["separate"], strict=True)]
            res["pairs"][pair] = {
                "backbones": [f"{n} (seed {s})" for n, s in PAIRS[pair]],
                "decode_only_s": stats(dec),
                "backbone_only_s": [stats([b[i] for b in runs["backbone"]]) for i in range(len(models))],
                "decode_share": stats([d / (d + b) for d, b in zip(dec, bb, strict=True)]),
                "separate_total_s": stats([sum(s) for s in runs["separate"]]),
                "shared_total_s": stats(runs["shared"]),
                "shared_over_separate": stats(ratio),
                "runs": {k: v for k, v in runs.items()},
            }
        res["hf"] = hf_throughput(manifest, paths, tmp, args.workers, threads)
        res["target"] = {"shared_over_separate_max": 0.65, "where": "decode is half the cost"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(res))
        print(json.dumps({k: v for k, v in res.items() if k != "pairs"}, indent=1))
        print(markdown(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_throughput(manifest, paths, tmp: Path, workers: int, threads: int) -> dict:
    folder = tiny_videomae(tmp / "videomae")
    model = build_backbone(f"hf:{folder}").eval()
    s = settings_for(model)
    n_clips = 16 * len(paths)
    fwd = forward_only(model, s, n_clips, threads)
    opts = ExtractOptions(workers=workers, batch_size=32, overwrite=True)
    rep = extract(manifest, tmp / "hf.zarr", model, s, opts)
    assert rep.done == len(paths), rep.failures
    t = rep.timings
    return {
        "model": "VideoMAE random init: hidden 192, 4 layers, 8 x 64 px, tubelet 2, patch 16",
        "clip": [s.clip_frames, s.frame_stride, s.input_size],
        "forward_only_clips_per_s": round(n_clips / fwd, 1),
        "extract_clips_per_s_steady": round(rep.clips / t["steady"], 1),
        "extract_clips_per_s_total": round(rep.clips / t["total"], 1),
        "startup_s": round(t["startup"], 2),
        "forward_busy_share": round(t["forward"] / t["steady"], 3),
        "load1": round(os.getloadavg()[0], 2),
    }


def markdown(res: dict) -> str:
    lines = [
        f"# Several backbones in one decode pass ({res['videos']} videos, K = 16, {res['workers']} decoding "
        f"process, {res['torch_threads']} torch thread, {res['machine']['cpus']} cores)",
        "",
        "| pair | decode share | two separate runs | one shared run | shared / separate |",
        "|---|---|---|---|---|",
    ]
    for name, p in res["pairs"].items():
        lines.append(
            f"| {name}: {' + '.join(p['backbones'])} | {p['decode_share']['median']:.2f} | "
            f"{p['separate_total_s']['median']:.1f} s | {p['shared_total_s']['median']:.1f} s | "
            f"**{p['shared_over_separate']['median']:.2f}x** ({p['shared_over_separate']['min']:.2f}-"
            f"{p['shared_over_separate']['max']:.2f}) |"
        )
    h = res["hf"]
    lines += [
        "",
        f"HF ({h['model']}): extraction {h['extract_clips_per_s_steady']} clips/s in the steady state "
        f"({h['extract_clips_per_s_total']} with start-up) beside forward-only "
        f"{h['forward_only_clips_per_s']} clips/s; forward busy {h['forward_busy_share']:.0%} of the steady "
        f"state. Load (1 min) {h['load1']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
