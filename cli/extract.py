"""`vcache extract` (`vcache backbones`: vcache.cli.backbones; the store commands: vcache.cli.store)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import typer

from vcache.cli import options
from vcache.cli.common import console, fail, print_warnings
from vcache.cli.tree import app


@app.command("extract")
def extract_cmd(
    videos: Path = typer.Argument(
        ..., help="Root folder of the videos (paths in the manifest are relative to it)."
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Store to write: a Zarr folder, or a URL such as s3://bucket/train.zarr (with several "
        "backbones: the folder or URL prefix of their stores). Rerunning resumes it.",
    ),
    fmt: str = typer.Option(
        "folder",
        "--format",
        help="How videos and labels are listed: folder (one sub-folder per class), csv (path,label), ucf101, "
        "hmdb51, kinetics, ssv2.",
    ),
    annotations: Path | None = typer.Option(
        None,
        "--annotations",
        help="The manifest: CSV file (csv, kinetics), split folder (ucf101: classInd.txt + lists; hmdb51: "
        "*_test_splitN.txt), or SSv2 label folder. Not needed for folder.",
    ),
    split: int = typer.Option(1, help="Official split number (UCF-101 / HMDB-51: 1-3)."),
    subset: str = typer.Option("train", help="Which part of the split: train or test (validation for SSv2)."),
    backbone: str = typer.Option(
        "r3d_18",
        help="Registry name (see `vcache backbones`), hf:<model id or folder> for a Hugging Face video or "
        "image model (docs/models.md), or package.module:factory for your own model. Several, comma "
        "separated (a,b,c): one decode of each video feeds them all and --out is a folder holding one "
        "<name>.zarr per backbone.",
    ),
    checkpoint: Path | None = typer.Option(
        None, help="Weights to load (torchvision-style or vcache checkpoint)."
    ),
    init_seed: int = typer.Option(0, help="Seed of the random initialisation when no --checkpoint is given."),
    mode: str = typer.Option(
        "train",
        help="train: K random augmented crops per video; eval: uniform clips x crops; pairs: STiCA's pairs "
        "of large crops sharing a time extent (32-frame clips, or a `pretrain stica` checkpoint's; with "
        "--feature-maps); dense: every window, start/end seconds (--window-step, --spatial). Default: train.",
    ),
    window_step: int = typer.Option(
        0, help="Dense: frames between window starts (0: frames x stride). Default: 0."
    ),
    spatial: int = typer.Option(1, help="Dense: crops per window, 1 (centre) or 3 (l/c/r). Default: 1."),
    pairs: int = typer.Option(4, help="Pairs per video in pairs mode (STiCA)."),
    crops: int = typer.Option(16, help="Crops per video in train mode (SCALE caches 16)."),
    layout: str = typer.Option(
        "5x3", help="Eval mode clips x spatial crops: 5x3, 2x3 (SSv2-like), 10x1 (retrieval)."
    ),
    clip_frames: int | None = typer.Option(None, help="Frames per clip [default: the backbone's]."),
    frame_stride: int | None = typer.Option(None, help="Frame step inside a clip [default: the backbone's]."),
    input_size: int | None = typer.Option(
        None, help="Crop side fed to the backbone [default: the backbone's]."
    ),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips in train mode."),
    seed: int = typer.Option(
        0, help="Seed of the crop sampling (crops depend only on seed, path, frame count)."
    ),
    pool: str | None = typer.Option(
        None,
        help="Pooling of the last map: avg or max; cls or pooler for ViTs and hf: models "
        "[default: the backbone's].",
    ),
    feature_maps: bool = typer.Option(
        False, "--feature-maps", help="Also store each crop's map before pooling."
    ),
    batch_size: int = typer.Option(32, help="Crops per forward pass."),
    workers: str = typer.Option(
        "auto",
        help="Decoding processes: auto (one per core but one, shared among torchrun's local ranks, at "
        "least 1), a number, or 0 (decode in the main process, without deadline).",
    ),
    timeout: float = typer.Option(300.0, help="Seconds a video may take to decode before it is failed."),
    max_decode_errors: int | None = typer.Option(
        None,
        help="Fail a video whose decoder reports more than N errors [default: keep it, with a warning].",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when there is one), cpu or cuda[:N]."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    transport: str = typer.Option(
        "shm", help="How crops cross from the decoding processes: shm (shared memory) or pipe."
    ),
    torch_threads: str = typer.Option(
        "auto", help="CPU forward threads: auto (the cores the decoding processes leave, at least 1) or N."
    ),
    overlap: str = typer.Option(
        "auto",
        help="Assemble the next batch while the current one runs: auto (on CUDA only; on 2 CPU cores it did "
        "not help), on or off.",
    ),
    channels_last: bool = typer.Option(
        False, "--channels-last", help="Channels-last memory for the backbone and its clips [default: off]."
    ),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the backbone (minutes to compile) [default: off]."
    ),
    fp32: bool = typer.Option(False, "--fp32", help="Store features as float32 instead of float16."),
    videos_per_shard: int = typer.Option(64, help="Videos per store shard (the unit written and resumed)."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --out and start again."),
    retry_failed: bool = typer.Option(False, help="Retry videos that failed in an earlier run."),
    repair: bool = typer.Option(
        False, help="Redo the shards `vcache verify` finds damaged (checksum mismatch or unreadable)."
    ),
    max_failed_fraction: float = typer.Option(
        0.1, help="Exit with code 4 when more than this fraction of the videos failed."
    ),
    part: str | None = typer.Option(
        None,
        help="I/N: one of N independent runs (SLURM arrays); each claims pending shards, s % N == I first.",
    ),
    force_unlock: bool = typer.Option(
        False,
        "--force-unlock",
        help="Remove the store's run locks first (only when the run that held them is dead).",
    ),
    audio_backbone: Path | None = typer.Option(
        None,
        "--audio-backbone",
        help="The .state file of a `vcache pretrain stica --audio` run: after the video pass, write each "
        "row's audio embedding (its ResNet-9 on the 1-s log-mel window starting at the row's first frame) "
        "to crops/audio beside the video feature; `vcache probe --features audio|both` reads it. One "
        "process only (after a torchrun job, rerun the command without torchrun) [default: none].",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Decode each video once, cut many crops, run a frozen backbone, write one row per crop.

    Exit codes: 0 all videos done; 3 finished with some failed videos (recorded with reasons);
    4 more than --max-failed-fraction failed; 1 error; 2 bad option.
    """
    from vcache.data.datasets import FORMATS

    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    rank = int(os.environ.get("RANK", "0"))
    quiet = quiet or rank != 0  # under torchrun one progress bar (rank 0's), not one per rank
    import torch  # heavy: only once the options parsed

    from vcache.data.crops import CropSettings, parse_layout
    from vcache.data.datasets import ManifestError, load_manifest
    from vcache.extract import ExtractOptions
    from vcache.extract.engine import extract_many
    from vcache.models import build_backbone
    from vcache.store import StoreError

    if mode not in ("train", "eval", "pairs", "dense"):
        raise typer.BadParameter(f"--mode {mode!r}: choose train, eval, pairs or dense")
    if spatial not in (1, 3) or window_step < 0:
        raise typer.BadParameter(f"--spatial {spatial} (1 or 3) or --window-step {window_step} (>= 0 frames)")
    if mode == "pairs" and clip_frames is None and not _stica_checkpoint(checkpoint):
        clip_frames = 32  # STiCA Sec. 4.2 uses 30; 32 give R(2+1)D-18 a 4 x 7 x 7 map at 112 px
    if mode == "eval":
        try:
            parse_layout(layout)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    if transport not in ("shm", "pipe"):
        raise typer.BadParameter(f"--transport {transport!r}: choose shm or pipe")
    if overlap not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--overlap {overlap!r}: choose auto, on or off")
    if pool not in (None, "avg", "max", "cls", "pooler"):
        raise typer.BadParameter(f"--pool {pool!r}: choose avg, max, cls or pooler")
    if not videos.is_dir():
        fail(f"video folder not found: {videos}")
    if audio_backbone is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            fail("--audio-backbone runs in one process: extract under torchrun without it, then rerun the "
                 "same command with it in one process (the video pass is then done)", code=2)  # fmt: skip
        from vcache.extract.audio import load_audio_encoder

        try:  # loaded once, checked before any video is decoded, used for every store
            audio_encoder = load_audio_encoder(audio_backbone)
        except ValueError as e:
            fail(str(e), code=2)
    if checkpoint is not None and not checkpoint.is_file():
        fail(f"checkpoint not found: {checkpoint}")
    try:
        manifest = load_manifest(fmt, videos, annotations, split=split, subset=subset)
    except ManifestError as e:
        fail(str(e))
    specs = [b.strip() for b in backbone.split(",")]
    if "" in specs or len(set(specs)) < len(specs):
        raise typer.BadParameter(f"--backbone {backbone!r}: names separated by commas, each once")
    if checkpoint is not None and len(specs) > 1:
        raise typer.BadParameter("--checkpoint with several backbones: extract each checkpoint on its own")
    if mode == "dense" and len(specs) > 1:
        raise typer.BadParameter("--mode dense takes one backbone a run: extract each backbone on its own")
    outputs = []
    for spec in specs:
        torch.manual_seed(init_seed)  # a random-init backbone is the same in every process and rerun
        try:
            model = build_backbone(spec, checkpoint=str(checkpoint) if checkpoint else None, pool=pool)
        except (ValueError, KeyError, ImportError, RuntimeError) as e:
            fail(f"backbone {spec!r}: {e}")
        _notes(spec, model, checkpoint, init_seed)
        pre = model.preprocessing
        settings = CropSettings(
            mode=mode,
            clip_frames=clip_frames or pre.clip_frames,
            frame_stride=frame_stride or pre.frame_stride,
            input_size=input_size or pre.input_size,
            resize_short=round((input_size or pre.input_size) * pre.resize_short / pre.input_size),
            crops_per_video=crops,
            layout=layout,
            window_step=window_step,
            spatial=spatial,
            pairs=pairs,
            seed=seed,
            flip=flip,
        )
        store = out if len(specs) == 1 else f"{out.rstrip('/')}/{store_name(spec)}.zarr"
        outputs.append((store, model, settings))
    if len({o[0] for o in outputs}) < len(outputs):
        raise typer.BadParameter(f"--backbone {backbone!r}: two backbones would share one store name")
    families = _class_families(videos, annotations)
    opts = ExtractOptions(
        class_families=families,
        init_seed=None if checkpoint else init_seed,
        batch_size=batch_size,
        workers=options.parse_workers(workers),
        timeout_s=timeout,
        max_decode_errors=max_decode_errors,
        device=device,
        amp=amp,
        shared_memory=transport == "shm",
        torch_threads=options.parse_threads(torch_threads),
        overlap={"auto": None, "on": True, "off": False}[overlap],
        channels_last=channels_last,
        compile=compile_,
        feature_maps=feature_maps,
        feature_dtype="float32" if fp32 else "float16",
        videos_per_shard=videos_per_shard,
        overwrite=overwrite,
        retry_failed=retry_failed,
        repair=repair,
        max_failed_fraction=max_failed_fraction,
        part=options.parse_part(part),
    )
    from vcache.cli.common import ExtractProgress

    if force_unlock:
        from vcache.store.lock import force_unlock as unlock

        console.print(f"removed {unlock(out)} lock(s) of {out}")
    from vcache.extract.workers import WorkerStartError
    from vcache.store.lock import StoreLocked

    try:
        with ExtractProgress(quiet=quiet, clips_per_video=settings.k) as prog:
            reports = extract_many(manifest, outputs, opts, progress=prog)
    except (StoreError, StoreLocked, ValueError, WorkerStartError) as e:
        fail(str(e))
    except OSError as e:  # object storage's errors carry the whole HTTP exchange: its first line says it
        fail(f"cannot write the store at {out}: {(str(e).strip() or type(e).__name__).splitlines()[0]}")
    except Exception as e:
        if not type(e).__module__.startswith("obstore"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(
            f"object storage refused {out}: {type(e).__name__}: {first}. Check the bucket and the AWS_* "
            "variables, then rerun the same command to resume"
        )
    for report, spec, (_, model, _) in zip(reports, specs, outputs, strict=True):
        _print_report(report, quiet)
        if checkpoint is None and model.checkpoint is None and ":" not in spec:
            console.print(f"weights: random init (seed {init_seed})")
    code = max(r.exit_code for r in reports)  # 143 / 130 (stopped) > 4 > 3 > 0
    if audio_backbone is not None and code not in (130, 143):
        _audio_pass([o[0] for o in outputs], audio_backbone, audio_encoder, device, quiet)
    raise typer.Exit(code)


def _audio_pass(stores: list, state_file: Path, encoder: tuple, device: str, quiet: bool) -> None:
    """`--audio-backbone`: the audio embedding of every done row, written beside the video features."""
    from rich.progress import Progress

    from vcache.extract.audio import add_audio_features
    from vcache.runtime.devices import resolve_device

    dev = str(resolve_device(device))
    for store in stores:
        with Progress(console=console, disable=quiet, transient=True) as bar:
            task = bar.add_task(f"audio {store}", total=None)
            info = add_audio_features(
                store, state_file, dev, progress=lambda n, t=task: bar.advance(t, n), encoder=encoder
            )
        console.print(
            f"audio: crops/audio ({info['dim']}-d, ResNet-9 of {state_file}) written to {store}; "
            f"{info['no_audio_videos']} videos without an audio stream (rows left NaN)"
        )


def store_name(spec: str) -> str:
    """The store's name for one of several backbones: hf:<folder> gives hf-<folder name>, hf:<org/name>
    gives hf-org--name, package.module:factory gives package.module-factory; other characters outside
    letters, digits, '.', '_' and '-' become '_'."""
    if spec.startswith("hf:"):
        ref = spec[3:].rstrip("/")
        spec = "hf-" + (Path(ref).name if Path(ref).is_dir() else ref.replace("/", "--"))
    return re.sub(r"[^A-Za-z0-9._-]", "_", spec.replace(":", "-"))


def _notes(spec: str, model, checkpoint: Path | None, init_seed: int) -> None:
    pre = model.preprocessing
    if checkpoint is None and model.checkpoint is None and ":" not in spec:
        console.print(
            f"[yellow]note:[/] {spec} has random weights (init seed {init_seed}): features of an "
            "untrained network, not of a pretrained one; --checkpoint loads trained weights"
        )
    if getattr(model, "preprocessing_declared", True) is False:
        console.print(
            f"[yellow]note:[/] {spec} declares no preprocessing: Kinetics mean/std, "
            f"{pre.input_size} px, {pre.clip_frames} frames at stride {pre.frame_stride} (docs/models.md)"
        )


def _stica_checkpoint(checkpoint: Path | None) -> bool:
    """True for a trunk from `vcache pretrain stica`: its recorded clip length is the one it was trained
    on, so pairs mode keeps it instead of the 32-frame default."""
    if checkpoint is None or not checkpoint.is_file():
        return False
    from vcache.models import load_checkpoint

    try:
        return load_checkpoint(checkpoint)["config"].get("method") == "stica"
    except ValueError:
        return False


def _class_families(videos: Path, annotations: Path | None) -> dict[str, str] | None:
    """Class -> family from a `classes.json` beside the data (as `vcache synth` writes): per-family scores."""
    places = [videos, videos.parent] + ([annotations, annotations.parent] if annotations else [])
    for d in places:
        f = d / "classes.json"
        if f.is_file():
            try:
                classes = json.loads(f.read_text()).get("classes", [])
                return {c["name"]: c["family"] for c in classes if "family" in c} or None
            except (ValueError, AttributeError, KeyError, TypeError):
                return None
    return None


def _print_report(report, quiet: bool) -> None:
    from rich.table import Table

    t = report.timings
    rate = report.clips / report.seconds if report.seconds else 0.0
    console.print(
        f"[bold]{report.store}[/]: {report.done}/{report.n_videos} done, {report.failed} failed, "
        f"{report.pending} pending; this run {report.processed_now} videos, {report.clips} clips "
        f"in {report.seconds:.1f} s ({rate:.1f} clips/s; forward {t.get('forward', 0):.1f} s, "
        f"waiting for decode {t.get('decode_wait', 0):.1f} s, store writes {t.get('write', 0):.2f} s; "
        f"start-up {t.get('startup', 0):.1f} s, steady state {t.get('steady', 0):.1f} s; crops via "
        f"{report.transport}, {t.get('torch_threads', 0):.0f} torch threads)"
    )
    for shard, why in sorted(report.repaired.items()):
        console.print(f"repaired shard {shard}: {why}", soft_wrap=True, markup=False)
    if report.failures:
        table = Table(title="failed this run", show_lines=False)
        table.add_column("video")
        table.add_column("reason")
        for path, reason in report.failures[:20]:
            table.add_row(path, reason)
        if len(report.failures) > 20:
            table.add_row(f"... {len(report.failures) - 20} more", "(vcache inspect lists them)")
        console.print(table)
    print_warnings(report.warnings, "done with warnings this run")
    if report.stopped_by:
        console.print(
            f"stopped by {report.stopped_by}: {report.done + report.failed} finished videos are in the "
            f"store, {report.pending} pending; rerun the same command to resume (only the pending videos "
            "are redone)",
            markup=False,
        )
