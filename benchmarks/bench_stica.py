"""Cost of one STiCA training step with the trunk trainable: input crops versus feature crops.

Four settings on the same backbone and the same batch of videos (STiCA Table 1a / 1f, Eq. 7):
  (a) 2 input crops at 112^2 per video, each pooled by the temporal head as one view;
  (b) (a) plus 6 small input crops at 96^2 per video (multi-crop in input space);
  (c) (a) plus the feature crops (2 x 6^2 + 4 x 4^2 in space, 2 x 3 + 1 x 2 in time per large crop),
      cut from the two 112^2 maps (vcache.learn.stica): video-only STiCA;
  (d) (c) plus the audio side of `pretrain stica --audio`: the ResNet-9 on each video's 1-s 257 x 199
      log-mel spectrogram, the head's projection of both uncropped maps and the cross-modal loss L_va.
Every setting runs the trunk forward and backward, the temporal-transformer head, the loss and an SGD step.
(d) / (c) is the step cost of the audio encoder against video-only STiCA; the spectrograms themselves are
made on the CPU in the training process and timed apart (`spectrogram_s_per_video`, real `log_mel` on
1 s of audio).
Clips are 32 frames (R(2+1)D-18's 4 x 7 x 7 map at 112 px). The paper: (c) costs about what (a) costs; at
equal batch the FLOP ratio (b) / (a) is about 3.2x (and Table 1f: 100.7 vs 29.3 GPU-h/epoch with smaller
batches for (b)).

Measured here:
- FLOPs of forward + backward with torch.utils.flop_counter on the full-width r2plus1d_18, built on the
  meta device (exact counts of the matmuls and convolutions, no arithmetic is run, so it is cheap).
- Wall time of real steps on this machine's CPU with `--backbone` (default r2plus1d_18_narrow, widths
  16-32-64-128: the full model takes ~6 s a clip forward on 2 shared cores), median of `--repeats` steps
  after one warm-up step. The timed audio encoder's width follows the trunk's (`--audio-base`, default 16
  with the narrow trunk, a quarter of the paper's 64 as the trunk's widths are a quarter of 64-512; 64 with
  a full-width trunk), so (d) / (c) keeps the paper's proportion of video to audio work.
Writes benchmarks/results/stica.json.

    python benchmarks/bench_stica.py [--backbone r2plus1d_18_narrow] [--batch 2] [--repeats 3] [--threads 2]
        [--device cpu] [--settings abcd] [--audio-base 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vcache.data.audio import AudioConfig, log_mel
from vcache.learn.stica import HeadConfig, TemporalHead, ViewConfig, sample_views, within_video_loss
from vcache.models import build_backbone
from vcache.models.audio_resnet import AudioEncoder
from vcache.pretrain.losses import cross_modal_loss, stica_total

FRAMES = 32


def step(
    model: torch.nn.Module,
    head: TemporalHead,
    setting: str,
    batch: int,
    device: str,
    rng,
    audio: AudioEncoder | None = None,
) -> torch.Tensor:
    """Forward + backward of one training step of `setting` ("a" .. "d") on random clips (and, for "d",
    random 257 x 199 spectrograms through `audio`)."""
    large = torch.randn(2 * batch, 3, FRAMES, 112, 112, device=device)
    _, fmap = model(large)
    m1, m2 = fmap[0::2], fmap[1::2]
    full = ViewConfig(
        spatial_medium=0, spatial_small=0, temporal_medium=0, temporal_small=0, include_full=True
    )
    if setting in "cd":
        views = ViewConfig()
        v1, v2 = sample_views(views, m1.shape[1:4], rng), sample_views(views, m1.shape[1:4], rng)
        z1, z2 = head.views_forward(m1, v1), head.views_forward(m2, v2)
        small1, small2 = [v.small for v in v1], [v.small for v in v2]
    else:
        v = sample_views(full, m1.shape[1:4], rng)
        z1, z2 = head.views_forward(m1, v), head.views_forward(m2, v)
        small1 = small2 = [False]
        if setting == "b":  # 6 small input crops per video, 3 joined to each large crop's set
            small = torch.randn(6 * batch, 3, FRAMES, 96, 96, device=device)
            _, sm = model(small)
            vs = sample_views(full, sm.shape[1:4], rng)
            zs = head.views_forward(sm, vs).reshape(batch, 6, -1)
            z1, z2 = torch.cat([z1, zs[:, :3]], 1), torch.cat([z2, zs[:, 3:]], 1)
            small1 = small2 = [False, True, True, True]
    loss, _ = within_video_loss(z1, z2, small1, small2, 0.5)
    if setting == "d":
        cfg = AudioConfig()
        a = audio(torch.randn(batch, 1, cfg.n_mels, cfg.frames(), device=device))
        l_va = cross_modal_loss(head.project(head.embed(m1)), head.project(head.embed(m2)), a, 0.1)
        loss = stica_total(loss, l_va)
    loss.backward()
    return loss


def flops(batch: int, settings: str = "abcd") -> dict[str, int]:
    """Forward + backward FLOPs of each setting on the full-width r2plus1d_18 and ResNet-9 (meta tensors)."""
    with torch.device("meta"):
        model = build_backbone("r2plus1d_18").train()
        head = TemporalHead(HeadConfig(in_dim=512)).train()
        audio = AudioEncoder(base=64).train()
    out = {}
    for s in settings:
        with FlopCounterMode(display=False) as fc:
            step(model, head, s, batch, "meta", np.random.default_rng(0), audio)
        out[s] = int(fc.get_total_flops())
    return out


def timed(
    backbone: str, batch: int, repeats: int, device: str = "cpu", settings: str = "abcd", audio_base: int = 16
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    model = build_backbone(backbone).train().to(device)
    c = model.map_shape(FRAMES, 112)[-1]
    head = TemporalHead(HeadConfig(in_dim=c)).train().to(device)
    audio = AudioEncoder(base=audio_base).train().to(device)
    params = [*model.parameters(), *head.parameters(), *audio.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    out = {}
    for s in settings:
        rng = np.random.default_rng(0)
        times = []
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            step(model, head, s, batch, device, rng, audio)
            opt.step()
            sync()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        out[s] = {"median_s": statistics.median(times), "all_s": times}
    return out


def spectrogram_seconds(repeats: int = 20) -> float:
    """Median seconds of one video's log-mel spectrogram (1 s of audio, real `log_mel`) on the CPU."""
    cfg = AudioConfig()
    wav = np.random.default_rng(0).standard_normal(cfg.samples).astype(np.float32) * 0.1
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        log_mel(wav, cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="r2plus1d_18_narrow", help="Trunk of the timed steps.")
    ap.add_argument("--batch", type=int, default=2, help="Videos per step (the same in every setting).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu", help="Device of the timed steps (cpu or cuda).")
    ap.add_argument("--settings", default="abcd", help="Which of a, b, c, d to run (a and c are needed).")
    ap.add_argument("--audio-base", type=int, default=None, help="Timed ResNet-9 width [16 narrow, 64 full].")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stica.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    audio_base = args.audio_base or (16 if args.backbone.endswith("_narrow") else 64)

    spec_s = spectrogram_seconds()
    fl = flops(args.batch, args.settings)
    tm = timed(args.backbone, args.batch, args.repeats, args.device, args.settings, audio_base)
    result = {
        "setting": {
            "batch_videos": args.batch,
            "clip_frames": FRAMES,
            "a": "2 input crops at 112^2 per video",
            "b": "2 at 112^2 + 6 small input crops at 96^2 per video",
            "c": "2 at 112^2 + feature crops (2x6^2 + 4x4^2 space, 2x3 + 1x2 time, per large crop)",
            "d": "(c) + ResNet-9 on a 257x199 log-mel per video + L_va (eq. 7, both weights 0.5)",
            "flops_backbone": "r2plus1d_18 + ResNet-9 (full width), forward + backward, flop_counter",
            "timed_backbone": args.backbone,
            "timed_audio_base": audio_base,
            "timed_device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "load_average": os.getloadavg(),
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "flops": fl,
        "flop_ratio": {
            f"{s}/{b}": fl[s] / fl[b] for s, b in (("b", "a"), ("c", "a"), ("d", "c")) if s in fl and b in fl
        },
        "time": tm,
        "time_ratio": {
            f"{s}/{b}": tm[s]["median_s"] / tm[b]["median_s"]
            for s, b in (("b", "a"), ("c", "a"), ("d", "c"))
            if s in tm and b in tm
        },
        "spectrogram_s_per_video": spec_s,
        "paper": {"b/a_flops": 3.2, "c/a": "about 1 (Table 1f: 30.0 vs 29.3 GPU-h/epoch)"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("flop_ratio", "time_ratio")}, indent=2))
    for s in args.settings:
        print(
            f"({s}) {fl[s] / 1e9:8.1f} GFLOP (full width)   {tm[s]['median_s']:.3f} s/step ({args.backbone})"
        )
    print(f"spectrogram: {spec_s * 1e3:.1f} ms per video (CPU)")


if __name__ == "__main__":
    main()
