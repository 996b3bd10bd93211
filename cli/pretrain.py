"""`vcache pretrain cvrl|svt`: self-supervised pretraining of fresh backbones from your own videos.

Runs in one process or under `torchrun --nproc-per-node N vcache pretrain ...` (DDP; gloo on the CPU,
NCCL on GPUs). Other methods add commands to `pretrain_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vcache.cli import options
from vcache.cli.common import console, fail, stopped
from vcache.cli.tree import pretrain_app

VIDEOS = typer.Argument(..., help="Root folder of the videos (labels are not used).")
OUT = typer.Option(..., "--out", "-o", help="Checkpoint to write (the training state goes to OUT.train).")
FMT = typer.Option(
    "folder",
    "--format",
    help="folder (every video under VIDEOS, recursively), csv, ucf101, hmdb51, kinetics, ssv2.",
)
ANN = typer.Option(None, "--annotations", help="Annotation file / folder for formats other than folder.")
PRESET = typer.Option(
    "cpu", help="cpu (minutes on a CPU) or paper (the paper's scale); options below override it."
)


def _run(
    method: str,
    videos: Path,
    out: Path,
    fmt: str,
    annotations: Path | None,
    split: int,
    subset: str,
    preset: str,
    overrides: dict[str, Any],
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Shared body: list the videos, build the config, start (distributed) training, print a summary."""
    import torch

    from vcache.data.datasets import ManifestError
    from vcache.pretrain import get_method
    from vcache.pretrain.data import list_videos
    from vcache.pretrain.loop import Stopped, state_path
    from vcache.runtime.distributed import broadcast_object, end_distributed, init_distributed

    mod = get_method(method)
    if preset not in mod.PRESETS:
        fail(f"--preset {preset!r}: choose one of {', '.join(mod.PRESETS)}", code=2)
    if not videos.is_dir():
        fail(f"video folder not found: {videos}")
    try:
        paths = list_videos(videos, fmt, annotations, split=split, subset=subset)
    except (ManifestError, ValueError) as e:
        fail(str(e))
    config_cls = mod.SVTConfig if method == "svt" else mod.CVRLConfig
    cfg = config_cls(**{**mod.PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
    try:
        ctx = init_distributed(cfg.device)
    except ValueError as e:
        fail(str(e), code=2)
    # rank 0 decides: other nodes' disks may not hold the state that only rank 0 writes
    if broadcast_object(state_path(out).exists()) and not (resume or overwrite):
        end_distributed()
        fail(f"{state_path(out)} exists: add --resume to continue that run or --overwrite to start again")
    if ctx.device.type == "cpu" and ctx.distributed:
        torch.set_num_threads(max(1, torch.get_num_threads() // ctx.world))
    out.parent.mkdir(parents=True, exist_ok=True)
    train = mod.train_svt if method == "svt" else mod.train_cvrl
    try:
        summary = train(paths, out, cfg, ctx, resume=resume, progress=not quiet)
    except (ValueError, FloatingPointError) as e:
        fail(str(e))
    except Stopped as e:
        stopped(str(e), e.exit_code, say=ctx.is_main)
    finally:
        end_distributed()
    if ctx.is_main and not quiet:
        console.print(
            f"[bold green]{method}[/]: {summary['steps']} steps on {len(paths)} videos, loss "
            f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
            f"{summary['clips_per_s']:.1f} clips/s; wrote {out}"
        )


@pretrain_app.command("cvrl")
def cvrl_cmd(
    videos: Path = VIDEOS,
    out: Path = OUT,
    fmt: str = FMT,
    annotations: Path | None = ANN,
    split: int = options.SPLIT,
    subset: str = options.SUBSET,
    preset: str = PRESET,
    backbone: str | None = typer.Option(
        None, help="Registry backbone [cpu: cvrl_r3d_narrow, paper: cvrl_r3d_50]."
    ),
    clip_frames: int | None = typer.Option(None, help="Frames per clip [default: the backbone's]."),
    frame_stride: int | None = typer.Option(None, help="Frame step inside a clip [default: the backbone's]."),
    input_size: int | None = typer.Option(None, help="Crop side [default: the backbone's]."),
    batch_size: int | None = typer.Option(None, help="Videos per step over all processes (2 clips each)."),
    epochs: float | None = typer.Option(None, help="Passes over the videos."),
    steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
    optimizer: str | None = typer.Option(None, help="sgd (the paper) or adamw."),
    lr: float | None = typer.Option(None, help="Peak learning rate (after warm-up)."),
    temperature: float | None = typer.Option(None, help="InfoNCE temperature [0.1, the paper's]."),
    interval_dist: str | None = typer.Option(
        None, help="Gap between the two clips: decreasing (paper), uniform or increasing [decreasing]."
    ),
    crop: bool = typer.Option(
        True, "--crop/--no-crop", help="Random resized crop (area 0.3-1, aspect 0.5-2)."
    ),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Horizontal flip, p 0.5."),
    jitter: bool = typer.Option(True, "--jitter/--no-jitter", help="Colour jitter, p 0.8."),
    jitter_strength: float | None = typer.Option(
        None, help="Colour-jitter strength (SimCLR's s: 0.8s, 0.8s, 0.8s, 0.2s) [cpu 0.5, paper 1.0]."
    ),
    gray: bool = typer.Option(True, "--gray/--no-gray", help="Greyscale, p 0.2."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Gaussian blur."),
    per_frame_aug: bool = typer.Option(
        False, "--per-frame-aug", help="Draw the augmentation per frame (Table 9)."
    ),
    workers: int | None = typer.Option(None, help="Decoding processes per rank [default: 2]."),
    timeout: float | None = typer.Option(
        None, help="Seconds a video may take to decode before it is skipped as unreadable [default: 300]."
    ),
    seed: int | None = typer.Option(None, help="Seed of weights and clip sampling [0]."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda [auto]."),
    save_every: int | None = typer.Option(None, help="Steps between saves of the resumable state [200]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT.train."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again even if OUT.train exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """CVRL: contrastive learning of two temporally sampled, consistently augmented clips per video."""
    from vcache.pretrain.augment import cvrl_settings
    from vcache.pretrain.cvrl import INTERVAL_DISTS

    if interval_dist is not None and interval_dist not in INTERVAL_DISTS:
        raise typer.BadParameter(f"--interval-dist {interval_dist!r}: choose {', '.join(INTERVAL_DISTS)}")
    if jitter_strength is not None and not 0 <= jitter_strength <= 2:
        raise typer.BadParameter(f"--jitter-strength {jitter_strength}: must be in [0, 2]")
    overrides = dict(
        backbone=backbone,
        clip_frames=clip_frames,
        frame_stride=frame_stride,
        input_size=input_size,
        batch_size=batch_size,
        epochs=epochs,
        steps=steps,
        optimizer=optimizer,
        lr=lr,
        temperature=temperature,
        interval_dist=interval_dist,
        aug=cvrl_settings(crop, flip, jitter, gray, blur),
        jitter_strength=jitter_strength,
        per_frame_aug=per_frame_aug,
        workers=workers,
        timeout_s=timeout,
        seed=seed,
        device=device,
        save_every=save_every,
    )
    _run("cvrl", videos, out, fmt, annotations, split, subset, preset, overrides, resume, overwrite, quiet)


@pretrain_app.command("svt")
def svt_cmd(
    videos: Path = VIDEOS,
    out: Path = OUT,
    fmt: str = FMT,
    annotations: Path | None = ANN,
    split: int = options.SPLIT,
    subset: str = options.SUBSET,
    preset: str = PRESET,
    backbone: str | None = typer.Option(
        None, help="Registry ViT [cpu: vit_video_tiny, paper: vit_video_small]."
    ),
    global_size: int | None = typer.Option(None, help="Side of the global views [cpu 64, paper 224]."),
    local_size: int | None = typer.Option(None, help="Side of the local views [cpu 32, paper 96]."),
    n_local: int | None = typer.Option(None, help="Local views per video [cpu 4, paper 8]."),
    motion: bool = typer.Option(True, "--motion/--no-motion", help="Global -> global loss (motion)."),
    cross_view: bool = typer.Option(True, "--cross-view/--no-cross-view", help="Local -> global loss."),
    out_dim: int | None = typer.Option(None, help="Prototypes K of the DINO head [cpu 4096, paper 65536]."),
    batch_size: int | None = typer.Option(None, help="Videos per step over all processes."),
    epochs: float | None = typer.Option(None, help="Passes over the videos."),
    steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
    lr: float | None = typer.Option(None, help="Peak learning rate [5e-4]."),
    momentum_teacher: float | None = typer.Option(None, help="Starting EMA momentum, rises to 1 [0.996]."),
    init_image: Path | None = typer.Option(
        None, help="DINO / timm image-ViT state dict to start from (SVT Sec. 4.1); docs/pretrain.md."
    ),
    workers: int | None = typer.Option(None, help="Decoding processes per rank [default: 2]."),
    timeout: float | None = typer.Option(
        None, help="Seconds a video may take to decode before it is skipped as unreadable [default: 300]."
    ),
    seed: int | None = typer.Option(None, help="Seed of weights and view sampling [0]."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda [auto]."),
    save_every: int | None = typer.Option(None, help="Steps between saves of the resumable state [200]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT.train."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again even if OUT.train exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """SVT: student-teacher self-distillation between global and local space-time views of a video ViT."""
    if not (motion or cross_view):
        raise typer.BadParameter("--no-motion and --no-cross-view together leave no loss")
    overrides = dict(
        backbone=backbone,
        global_size=global_size,
        local_size=local_size,
        n_local=n_local,
        motion=motion,
        cross_view=cross_view,
        out_dim=out_dim,
        batch_size=batch_size,
        epochs=epochs,
        steps=steps,
        lr=lr,
        momentum_teacher=momentum_teacher,
        init_image=str(init_image) if init_image else None,
        workers=workers,
        timeout_s=timeout,
        seed=seed,
        device=device,
        save_every=save_every,
    )
    _run("svt", videos, out, fmt, annotations, split, subset, preset, overrides, resume, overwrite, quiet)
