"""STiCA commands: `vcache train-aggregator stica` (head-only, trunk frozen, from a map store),
`vcache stica-embed` (a trained head -> an ordinary feature store that `vcache probe` evaluates) and
`vcache pretrain stica` (end to end, trunk trainable).

The commands parse options and call vcache.learn.stica; torch loads inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vcache.cli import options
from vcache.cli.common import console, fail, stopped
from vcache.cli.tree import app, pretrain_app, train_app

SIZE_HELP = "for R(2+1)D-18's 4 x 7 x 7 map; smaller maps need smaller sizes"


@train_app.command("stica")
def stica_cmd(
    maps_store: Path = typer.Argument(
        ..., help="A pairs-mode store with feature maps (vcache extract --mode pairs --feature-maps)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (rewritten after every epoch)."),
    spatial_medium: int = typer.Option(2, help="Medium spatial feature crops per large crop."),
    spatial_medium_size: int | None = typer.Option(
        None, help=f"Their side in map cells (paper: 6, {SIZE_HELP})."
    ),
    spatial_small: int = typer.Option(4, help="Small spatial feature crops per large crop."),
    spatial_small_size: int | None = typer.Option(
        None, help=f"Their side in map cells (paper: 4, {SIZE_HELP})."
    ),
    temporal_medium: int = typer.Option(2, help="Medium temporal feature crops per large crop."),
    temporal_medium_size: int | None = typer.Option(
        None, help=f"Their length in time steps (paper: 3, {SIZE_HELP})."
    ),
    temporal_small: int = typer.Option(1, help="Small temporal feature crops per large crop."),
    temporal_small_size: int | None = typer.Option(
        None, help=f"Their length in time steps (paper: 2, {SIZE_HELP})."
    ),
    include_full: bool = typer.Option(
        False, "--include-full", help="Add the uncropped large crop to each view set (not in the paper)."
    ),
    width: int = typer.Option(512, help="Transformer width (paper: 512)."),
    depth: int = typer.Option(2, help="Transformer layers (paper: 2)."),
    heads: int = typer.Option(4, help="Attention heads (paper: 4)."),
    temperature: float = typer.Option(0.5, help="Within-video NCE temperature (paper: 0.5)."),
    epochs: int = typer.Option(100, help="Epochs (paper: 100)."),
    batch_size: int = typer.Option(128, "--batch-size", "--batch", help="Videos per step."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    memory_gb: float = typer.Option(
        4.0, help="Keep the maps in memory up to this size; larger stores are streamed shard by shard."
    ),
    seed: int = typer.Option(0, help="Seed of the initialisation, pair choice, batch order and crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint at --out."),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Head-only STiCA (trunk frozen): feature crops + temporal transformer pooling on cached maps."""
    options.check_device(device)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vcache.learn.stica import MODE_NAME, PairMaps, SticaConfig, default_view_config, train_stica
    from vcache.store import StoreError

    if out.exists() and not resume:
        fail(f"{out} exists: pass --resume to continue it, or choose another --out")
    try:
        data = PairMaps(maps_store, memory_gb * 1e9)
        t, h, w, c = data.map_shape
        views = default_view_config(
            (t, h, w),
            spatial_medium=spatial_medium,
            spatial_medium_size=spatial_medium_size,
            spatial_small=spatial_small,
            spatial_small_size=spatial_small_size,
            temporal_medium=temporal_medium,
            temporal_medium_size=temporal_medium_size,
            temporal_small=temporal_small,
            temporal_small_size=temporal_small_size,
            include_full=include_full,
        )
    except (StoreError, ValueError) as e:
        fail(str(e))
    cfg = SticaConfig(
        in_dim=c,
        views=views,
        width=width,
        depth=depth,
        heads=heads,
        temperature=temperature,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
    )
    gb = data.total_bytes / 1e9
    console.print(
        f"{MODE_NAME}: {data.n_videos} videos x {data.pairs} pairs, maps {t}x{h}x{w}x{c} "
        f"({gb:.2f} GB, {'in memory' if data.in_memory else 'streamed by shard'}); "
        f"m={views.m} n={views.n} -> {views.n_terms} loss terms per video"
    )
    progress = Progress(
        TextColumn("[bold]stica"),
        BarColumn(),
        TextColumn(
            "epoch {task.fields[epoch]} loss {task.fields[loss]:.3f} {task.fields[rate]:.0f} videos/s"
        ),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    task = progress.add_task("stica", total=epochs, epoch=0, loss=0.0, rate=0.0)

    def on_step(info: dict[str, float]) -> None:
        progress.update(
            task,
            completed=info["epoch"],
            epoch=info["epoch"] + 1,
            loss=info["loss"],
            rate=info["videos_per_s"],
        )

    try:
        with progress:
            res = train_stica(
                maps_store,
                cfg,
                out,
                resume=resume,
                device=device,
                memory_bytes=memory_gb * 1e9,
                progress=on_step,
            )
    except (StoreError, ValueError) as e:
        fail(str(e))
    last = res.history[-1]["loss"] if res.history else float("nan")
    console.print(f"[green]done[/] {MODE_NAME}: {res.epochs_done} epochs -> {out}  loss {last:.3f}")


@app.command("stica-embed")
def stica_embed_cmd(
    head: Path = typer.Argument(..., help="A checkpoint from `vcache train-aggregator stica`."),
    maps_store: Path = typer.Argument(
        ..., help="A store with feature maps of the same backbone (e.g. eval mode, --feature-maps)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The feature store to write (one embedding per crop)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
) -> None:
    """Embed every crop's map with a trained STiCA head into a feature store for `vcache probe`.

    Embed the train and the test store with the same head, then e.g.
    `vcache probe knn TRAIN_EMB TEST_EMB --out results --retrieval` or `vcache probe linear ...`.
    """
    options.check_device(device)
    from vcache.learn.stica import MODE_NAME, export_embeddings
    from vcache.store import StoreError

    if not head.is_file():
        fail(f"head checkpoint not found: {head}")
    if out.exists():
        if not overwrite:
            fail(f"{out} exists: pass --overwrite to replace it, or choose another --out")
        import shutil

        shutil.rmtree(out)
    try:
        export_embeddings(head, maps_store, out, device=device)
    except (StoreError, ValueError) as e:
        fail(str(e))
    console.print(f"[green]done[/] {MODE_NAME} embeddings of {maps_store} -> {out}")


@pretrain_app.command("stica")
def pretrain_stica_cmd(
    videos: Path = typer.Argument(..., help="Root folder of the videos."),
    out: Path = typer.Option(..., "--out", "-o", help="Backbone checkpoint to write (vcache format)."),
    fmt: str = typer.Option("folder", "--format", help="Manifest format, as in `vcache extract`."),
    annotations: Path | None = typer.Option(None, "--annotations", help="As in `vcache extract`."),
    split: int = options.SPLIT,
    subset: str = options.SUBSET,
    backbone: str = typer.Option("r2plus1d_18", help="Registry name of the trunk (paper: R(2+1)D-18)."),
    clip_frames: int = typer.Option(32, help="Frames per clip (32: a 4 x 7 x 7 map at 112 px)."),
    frame_stride: int | None = typer.Option(None, help="Frame step inside a clip [default: the backbone's]."),
    input_size: int | None = typer.Option(None, help="Crop side [default: the backbone's]."),
    spatial_medium: int = typer.Option(2, help="Medium spatial feature crops per large crop."),
    spatial_medium_size: int | None = typer.Option(None, help=f"Side in map cells (paper: 6, {SIZE_HELP})."),
    spatial_small: int = typer.Option(4, help="Small spatial feature crops per large crop."),
    spatial_small_size: int | None = typer.Option(None, help=f"Side in map cells (paper: 4, {SIZE_HELP})."),
    temporal_medium: int = typer.Option(2, help="Medium temporal feature crops per large crop."),
    temporal_medium_size: int | None = typer.Option(None, help=f"Time steps (paper: 3, {SIZE_HELP})."),
    temporal_small: int = typer.Option(1, help="Small temporal feature crops per large crop."),
    temporal_small_size: int | None = typer.Option(None, help=f"Time steps (paper: 2, {SIZE_HELP})."),
    include_full: bool = typer.Option(False, "--include-full", help="Add the uncropped large crop to T_i."),
    width: int = typer.Option(512, help="Transformer width (paper: 512)."),
    depth: int = typer.Option(2, help="Transformer layers (paper: 2)."),
    heads: int = typer.Option(4, help="Attention heads (paper: 4)."),
    epochs: int = typer.Option(100, help="Epochs (paper: 100)."),
    batch_size: int = typer.Option(8, "--batch-size", "--batch", help="Videos per step (paper: 8 per GPU)."),
    lr: float | None = typer.Option(
        None, help="SGD learning rate [default: 0.64 x batch / 512, the paper's]."
    ),
    warmup_epochs: int = typer.Option(10, help="Linear warm-up epochs (paper: 10)."),
    workers: int = typer.Option(2, help="Decoding processes (0: decode in this process)."),
    seed: int = typer.Option(0, help="Seed of the initialisation, crops and order."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --out and its .state file."),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    audio: bool = typer.Option(
        False, "--audio/--no-audio", help="Add the cross-modal term (eq. 7, ResNet-9 on 1-s log-mel audio)."
    ),
    lambda_vv: float = typer.Option(0.5, help="Weight of the within-video term with --audio (paper: 0.5)."),
    lambda_va: float = typer.Option(0.5, help="Weight of the cross-modal term with --audio (paper: 0.5)."),
    audio_base: int = typer.Option(64, help="ResNet-9 first-stage channels (paper: 64; narrower for CPU)."),
    bn_batches: int = typer.Option(
        16,
        help="Batches of train-mode forward passes that recompute the trunk's batch-norm statistics for its "
        "final weights before the last save (precise BN; 0: keep the running averages) [default: 16].",
    ),
    require_audio: bool = typer.Option(
        False,
        "--require-audio",
        help="Implies --audio; a video without an audio stream fails the run (exit 1, naming it) instead "
        "of being left out of the cross-modal term [default: off].",
    ),
) -> None:
    """End-to-end STiCA: feature crops + temporal transformer with the trunk trainable; --audio adds the
    paper's cross-modal term (videos without an audio stream are left out of it and counted). Runs in one
    process or under `torchrun --nproc-per-node N` (the batch is split over the processes)."""
    options.check_device(device)
    from vcache.data.datasets import ManifestError, load_manifest
    from vcache.learn.stica import ViewConfig
    from vcache.pretrain.loop import Stopped
    from vcache.pretrain.stica import AV_MODE_NAME, MODE_NAME, PretrainSticaConfig, pretrain_stica
    from vcache.runtime.distributed import broadcast_object, end_distributed, init_distributed

    try:
        manifest = load_manifest(fmt, videos, annotations, split=split, subset=subset)
    except ManifestError as e:
        fail(str(e))
    try:
        ctx = init_distributed(device)
    except ValueError as e:
        fail(str(e), code=2)
    quiet = quiet or not ctx.is_main
    # rank 0 decides: the other ranks' disks may not hold the checkpoint that only rank 0 writes
    if broadcast_object(out.exists()) and not resume:
        end_distributed()
        fail(f"{out} exists: pass --resume to continue it, or choose another --out")
    if ctx.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
    given = dict(
        spatial_medium=spatial_medium,
        spatial_medium_size=spatial_medium_size,
        spatial_small=spatial_small,
        spatial_small_size=spatial_small_size,
        temporal_medium=temporal_medium,
        temporal_medium_size=temporal_medium_size,
        temporal_small=temporal_small,
        temporal_small_size=temporal_small_size,
        include_full=include_full,
    )
    from dataclasses import replace

    views = replace(ViewConfig(), **{k: v for k, v in given.items() if v is not None})
    cfg = PretrainSticaConfig(
        backbone=backbone,
        clip_frames=clip_frames,
        frame_stride=frame_stride,
        input_size=input_size,
        views=views,
        width=width,
        depth=depth,
        heads=heads,
        batch_size=batch_size,
        lr=lr,
        warmup_epochs=warmup_epochs,
        epochs=epochs,
        seed=seed,
        workers=workers,
        audio=audio or require_audio,
        require_audio=require_audio,
        audio_base=audio_base,
        lambda_vv=lambda_vv,
        lambda_va=lambda_va,
        bn_batches=bn_batches,
    )

    def on_step(info: dict[str, float]) -> None:
        if not quiet:
            console.print(
                f"epoch {info['epoch'] + 1} step {info['step']} loss {info['loss']:.4f} lr {info['lr']:.2e}"
            )

    try:
        res = pretrain_stica(manifest, out, cfg, resume=resume, device=device, progress=on_step, ctx=ctx)
    except (ValueError, KeyError) as e:
        end_distributed()
        fail(str(e))
    except Stopped as e:
        end_distributed()
        stopped(str(e), e.exit_code, say=ctx.is_main)
    end_distributed()
    if not ctx.is_main:
        return
    console.print(
        f"[green]done[/] {AV_MODE_NAME if cfg.audio else MODE_NAME}: {res.epochs_done} epochs, "
        f"{res.steps} steps -> {out} "
        f"({res.failed_videos} undecodable video draws skipped"
        + (f"; {res.no_audio_videos} videos without audio left out of L_va" if cfg.audio else "")
        + (f"; batch-norm statistics recomputed over {res.bn_batches} batches" if res.bn_batches else "")
        + "); load it with "
        f"`vcache extract --backbone {backbone} --checkpoint {out}`"
    )
