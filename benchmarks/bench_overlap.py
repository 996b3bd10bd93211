"""End-to-end overlap benchmark (issue 20): does the engine overlap decoding and the forward pass?

Set: `--distinct` generated 300-frame 320x240 H.264 videos (benchmarks/bench_extract.make_videos), each
copied under `--copies` names (crops are seeded by the relative path, so every copy gets other crops), so
that start-up is a small share of the run. Backbone r3d_18_narrow (random init), K = 16 crops of 16 frames
at 64 px, batch 32, one decoding process (``--workers auto`` on 2 cores), torch threads by the engine's rule
(max(1, cores - workers)).

Per repeat (median of `--repeats`, with min and max):
- decode only: vcache.extract.workers.decode_task over every video in this process (one core);
- backbone only: forward passes over as many clips at the engine's thread count;
- end to end: vcache.extract.extract, steady state = total - start-up (store, spawn, imports until the
  worker is ready), as the engine reports it; also with torch taking every core (the rule off), and with
  the next batch assembled while a forward thread runs the current one (`--overlap-repeats`; off by
  default on the CPU: this measures whether it helps here), and with --channels-last
  (`--channels-last-repeats`).

Target: steady state <= 1.1x (decode only + backbone only). On 2 cores with one decoding process and one
torch thread, perfect overlap reaches max(decode, backbone): the larger of the two is the bound.
Writes benchmarks/results/overlap.json.

    python benchmarks/bench_overlap.py [--distinct 6 --copies 4 --repeats 3 --all-threads-repeats 1]
"""

from __future__ import annotations

import argparse
import copy
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
from vcache.extract.options import torch_threads, usable_cores  # noqa: E402
from vcache.extract.workers import DecodeTask, decode_task  # noqa: E402
from vcache.models import build_backbone  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distinct", type=int, default=6)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--all-threads-repeats", type=int, default=1, help="runs with the thread rule off")
    ap.add_argument("--overlap-repeats", type=int, default=0, help="runs with ExtractOptions(overlap=True)")
    ap.add_argument("--channels-last-repeats", type=int, default=0, help="runs with --channels-last")
    ap.add_argument("--out", type=Path, default=RESULTS / "overlap.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="vcache-overlap-"))
    try:
        root = tmp / "videos"
        made = make_videos(tmp / "gen", args.distinct)
        for c in range(args.copies):
            for p in made:
                (root / f"c{c}").mkdir(parents=True, exist_ok=True)
                os.link(p, root / f"c{c}" / p.name)
        manifest = load_manifest("folder", root)
        model = build_backbone("r3d_18_narrow").eval()
        pre = model.preprocessing
        s = CropSettings(
            mode="train",
            clip_frames=pre.clip_frames,
            frame_stride=pre.frame_stride,
            input_size=pre.input_size,
            resize_short=pre.resize_short,
            crops_per_video=16,
        )
        paths = [(str(root / p), p) for p in manifest.paths]
        n_clips = 16 * len(paths)
        cores = usable_cores()
        rule = torch_threads(ExtractOptions(workers=args.workers))  # the engine's own rule
        decode_task(DecodeTask(0, *paths[0], s))  # warm-up: page cache, library init
        x = torch.randint(0, 255, (32, 3, pre.clip_frames, pre.input_size, pre.input_size)).float()
        runs: dict[str, list] = {
            "decode": [],
            "backbone": [],
            "e2e": [],
            "e2e_all_threads": [],
            "e2e_overlap": [],
        }
        for r in range(args.repeats):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            for i, (p, k) in enumerate(paths):
                assert decode_task(DecodeTask(i, p, k, s)).crops is not None
            runs["decode"].append(time.perf_counter() - t0)
            old = torch.get_num_threads()
            torch.set_num_threads(rule)
            with torch.inference_mode():
                model(x)
                t0 = time.perf_counter()
                for done in range(0, n_clips, 32):
                    model(x[: min(32, n_clips - done)])
            runs["backbone"].append(time.perf_counter() - t0)
            torch.set_num_threads(old)
            variants = [("e2e", None, False)] + [("e2e_all_threads", cores, False)] * (
                r < args.all_threads_repeats
            )
            variants += [("e2e_overlap", None, True)] * (r < args.overlap_repeats)
            variants += [("e2e_channels_last", None, False)] * (r < args.channels_last_repeats)
            for name, threads, overlap in variants:
                opts = ExtractOptions(
                    workers=args.workers,
                    batch_size=32,
                    torch_threads=threads,
                    overwrite=True,
                    overlap=overlap,
                )
                m = model
                if name == "e2e_channels_last":  # the engine converts the model in place: give it a copy
                    opts.channels_last, m = True, copy.deepcopy(model)
                rep = extract(manifest, tmp / "s.zarr", m, s, opts)
                assert rep.done == len(paths), rep.failures
                runs[name].append({**{k: round(v, 3) for k, v in rep.timings.items()}, "load1": load})
            print(f"repeat {r}: {runs['e2e'][-1]}", file=sys.stderr)
        dec, bb = stats(runs["decode"]), stats(runs["backbone"])
        res = {
            "machine": {"cpus": cores, "platform": platform.platform()},
            "videos": len(paths),
            "clips": n_clips,
            "workers": args.workers,
            "torch_threads_rule": rule,
            "decode_only_s": dec,
            "backbone_only_s": bb,
            "runs": runs,
        }
        sums = [d + b for d, b in zip(runs["decode"], runs["backbone"], strict=True)]
        for name in ("e2e", "e2e_all_threads", "e2e_overlap", "e2e_channels_last"):
            n = len(runs[name])
            if n == 0:
                continue
            steady = [t["steady"] for t in runs[name]]
            res[name] = {
                "total_s": stats([t["total"] for t in runs[name]]),
                "startup_s": stats([t["startup"] for t in runs[name]]),
                "steady_s": stats(steady),
                "startup_share": stats([t["startup"] / t["total"] for t in runs[name]]),
                "steady_over_sum": stats([a / b for a, b in zip(steady, sums[:n], strict=True)]),
                "steady_over_max": stats(
                    [
                        a / max(d, b)
                        for a, d, b in zip(steady, runs["decode"][:n], runs["backbone"][:n], strict=True)
                    ]
                ),
                # the first wait spans the workers' start-up: count only the steady state's waits
                "decode_wait_share": stats(
                    [max(0.0, t["decode_wait"] - t["startup_workers"]) / t["steady"] for t in runs[name]]
                ),
                "forward_share": stats([t["forward"] / t["steady"] for t in runs[name]]),
                "clips_per_s_steady": round(n_clips / statistics.median(steady), 1),
            }
        res["bound"] = "decode" if dec["median"] > bb["median"] else "backbone (compute)"
        res["target"] = {"steady_over_sum_max": 1.1, "startup_share_max": 0.05}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
