"""`vcache train-aggregator scale`, `vcache probe linear|mlp|transformer|knn`: stage 2, from the cache.

The commands parse options and call vcache.learn.scale / vcache.learn.probes; torch and faiss load inside
the commands.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import typer

from vcache.cli import options
from vcache.cli.common import console, fail
from vcache.cli.tree import probe_app, train_app


@train_app.command("scale")
def scale_cmd(
    train_store: Path = typer.Argument(..., help="The train split's train-mode store (16 crops per video)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (rewritten after every epoch)."),
    k: int = typer.Option(8, "--k", help="Clips per set; two disjoint sets per video (SCALE: 8 of the 16)."),
    mask_ratio: float = typer.Option(0.25, help="Chance that a clip is masked (Table 9: 0.25 is best)."),
    masking: str = typer.Option(
        "bernoulli",
        help="bernoulli: each clip masked with the --mask-ratio chance (official code); count: exactly "
        "max(1, round(ratio * K)) clips a set.",
    ),
    loss_form: str = typer.Option(
        "official",
        help="official: (SET + MCM) / 2, MCM one direction averaged over masked clips (official code); "
        "paper: eq. 3-8, both directions summed, SET + MCM.",
    ),
    width: int = typer.Option(256, help="Transformer width (Table 10)."),
    depth: int = typer.Option(2, help="Transformer layers (Table 10)."),
    heads: int = typer.Option(0, help="Attention heads; 0: width / 32 (official: 8 at 256)."),
    ff_mult: float = typer.Option(2.0, help="Feed-forward width as a multiple of the width (official: 2)."),
    dropout: float = typer.Option(0.1, help="Dropout and attention dropout (official: 0.1)."),
    proj_dim: int = typer.Option(128, help="Output dim of the MCM and SET heads (official: 128)."),
    target_head: str = typer.Option("3x2048", help="MCM target head, LAYERSxWIDTH (official: 3x2048)."),
    pred_head: str = typer.Option(
        "2x4096", help="MCM prediction and SET heads, LAYERSxWIDTH (official: 2x4096; the paper: 3 layers)."
    ),
    batch_size: int = typer.Option(
        512, "--batch-size", "--batch", help="Videos per step (capped by the data)."
    ),
    drop_last: bool = typer.Option(
        True, "--drop-last/--keep-last", help="Drop an epoch's last partial batch (official code)."
    ),
    epochs: int = typer.Option(200, help="Epochs (SCALE: 200 in the ablations, 500 for the main tables)."),
    lr: float = typer.Option(3e-4, help="AdamW peak learning rate (official code: 3e-4)."),
    weight_decay: float = typer.Option(
        1e-4, help="AdamW weight decay, not on biases, norms or tokens (official: 1e-4)."
    ),
    warmup: float = typer.Option(
        0.05, help="Share of the steps with a linear warm-up, then cosine to 0 (official: 0.05)."
    ),
    temperature: float = typer.Option(0.2, help="InfoNCE temperature (official code: 0.2)."),
    mcm: bool = typer.Option(True, "--mcm/--no-mcm", help="Masked clip modelling loss (Table 8)."),
    set_: bool = typer.Option(True, "--set/--no-set", help="SET loss between the two CLS outputs (Table 8)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and of the crop-set sampling."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint at --out."),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
    memory_gb: float | None = typer.Option(
        None,
        help="Load the store whole when its features fit in this many GB, else stream it a group of shards "
        "at a time [default: half of the available memory].",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train SCALE (masked clip modelling + SET loss) on cached clip features."""
    options.check_device(device)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vcache.learn.aggregator import ScaleConfig
    from vcache.learn.scale import ShardStream, batch_bounds, train_scale
    from vcache.store import StoreError, cache_nbytes, load_cache

    if out.exists() and not resume:
        fail(f"{out} exists: pass --resume to continue it, or choose another --out")
    budget = (
        memory_gb * 1e9 if memory_gb else 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    )
    try:
        if cache_nbytes(train_store) <= budget:
            cache = load_cache(train_store)
            n_videos, feature_dim = len(cache.labels), cache.features.shape[-1]
        else:
            cache = ShardStream(train_store, budget)
            n_videos, feature_dim = cache.n_videos, cache.feature_dim
            console.print(
                f"streaming {train_store}: {len(cache.groups)} groups of shards within {budget / 1e9:.1f} GB"
            )
    except StoreError as e:
        fail(str(e))
    mode = (cache.attrs.get("sampling") or {}).get("mode")
    if mode not in (None, "train"):
        console.print(
            f"[yellow]warning:[/] {train_store} is a {mode!r}-mode store; SCALE trains on train mode"
        )
    try:
        cfg = ScaleConfig(
            feature_dim=feature_dim,
            width=width,
            depth=depth,
            heads=heads,
            ff_mult=ff_mult,
            dropout=dropout,
            proj_dim=proj_dim,
            target_head=_layers_x_width(target_head, "--target-head"),
            pred_head=_layers_x_width(pred_head, "--pred-head"),
            k=k,
            mask_ratio=mask_ratio,
            masking=masking,
            loss_form=loss_form,
            temperature=temperature,
            use_mcm=mcm,
            use_set=set_,
            lr=lr,
            weight_decay=weight_decay,
            warmup=warmup,
            batch_size=batch_size,
            drop_last=drop_last,
            epochs=epochs,
            seed=seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    progress = Progress(
        TextColumn("[bold]scale"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "epoch {task.fields[epoch]} loss {task.fields[loss]:.3f} {task.fields[rate]:.0f} samples/s"
        ),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    sizes = cache.group_videos if isinstance(cache, ShardStream) else [n_videos]
    steps_per_epoch = sum(len(batch_bounds(g, min(batch_size, n_videos), drop_last)) for g in sizes)
    task = progress.add_task("scale", total=epochs * steps_per_epoch, epoch=0, loss=0.0, rate=0.0)

    def on_step(info: dict[str, float]) -> None:
        done = info["epoch"] * info["steps"] + info["step"] + 1
        progress.update(
            task, completed=done, epoch=info["epoch"] + 1, loss=info["loss"], rate=info["samples_per_s"]
        )

    try:
        with progress:
            res = train_scale(
                cache, cfg, out, store_path=train_store, resume=resume, device=device, progress=on_step
            )
    except (StoreError, ValueError) as e:
        fail(str(e))
    last = res.history[-1] if res.history else {}
    console.print(
        f"[green]done[/] {res.epochs_done} epochs -> {out}  loss {last.get('total', float('nan')):.3f} "
        f"(mcm {last.get('mcm', float('nan')):.3f}, set {last.get('set', float('nan')):.3f})"
    )


def _layers_x_width(text: str, name: str) -> tuple[int, int]:
    try:
        layers, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{name} {text!r}: expected LAYERSxWIDTH such as 3x2048") from None
    return layers, width


def _show(result: Any, paths: tuple[Path, Path]) -> None:
    from rich.table import Table

    table = Table(title=f"{result.name}  (run {result.run}, seed {result.seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, val in result.metrics.items():
        table.add_row(key, f"{val:.4f}" if isinstance(val, float) else str(val))
    for fam, m in result.per_family.items():
        table.add_row(f"top1 {fam} (n={m['n']})", f"{m['top1']:.4f}")
    chosen = result.selection.get("chosen")
    if chosen:
        table.add_row("chosen on val", f"lr {chosen['lr']:g} wd {chosen['wd']:g} epochs {chosen['epochs']}")
    console.print(table)
    for w in result.provenance.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {w}")
    for d in result.provenance.get("mismatch") or []:
        console.print(f"[yellow]mismatch allowed:[/] {d}")
    console.print(f"results: {paths[0]}  predictions: {paths[1]}")


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"{name} {text!r}: expected comma-separated numbers such as 1e-3,1e-2"
        ) from None


def _classifier(
    kind: str,
    train_store: Path,
    test_store: Path,
    out: Path,
    aggregator: Path | None,
    bn: bool,
    low_shot: float | None,
    lrs: str | None,
    wds: str | None,
    epochs: int | None,
    seed: int,
    device: str,
    extra: dict[str, Any],
) -> None:
    options.check_device(device)
    if low_shot is not None and not 0 < low_shot <= 1:
        raise typer.BadParameter(f"--low-shot {low_shot}: a fraction in (0, 1]")
    from vcache.learn.probes import ProbeSettings, run_probe

    confusion = extra.pop("confusion", False)
    try:
        settings = ProbeSettings(
            bn=bn,
            low_shot=low_shot,
            seed=seed,
            lrs=_floats(lrs, "--lr"),
            wds=_floats(wds, "--wd"),
            epochs=epochs,
            device=device,
            **extra,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    _run(train_store, test_store, out, aggregator, partial(run_probe, kind), settings, confusion)


def _run(
    train_store: Path, test_store: Path, out: Path, aggregator: Path | None, runner, settings, confusion: bool
) -> None:
    """Load the two stores (refusing incompatible ones), run the probe, show and write its results."""
    from vcache.learn.probes import load_pair, write_results
    from vcache.store import StoreError

    if aggregator is not None and not aggregator.is_file():
        fail(f"aggregator checkpoint not found: {aggregator}")
    try:
        train, test = load_pair(train_store, test_store, settings.allow_mismatch)
        result = runner(train, test, settings, aggregator, train_store, test_store)
    except (StoreError, ValueError) as e:
        fail(str(e))
    paths = write_results(result, out)
    _show(result, paths)
    if confusion:
        from vcache.learn.report import confusion_figure

        try:
            png = confusion_figure(
                result.predictions, train.class_names, paths[0].with_suffix(".confusion.png")
            )
        except ValueError as e:
            fail(str(e))
        console.print(f"confusion matrix: {png}")


OVERLAP_HELP = (
    "Allow test videos that are also train videos or that the aggregator was trained on [default: refused]."
)
OUT_HELP = "Folder for <run>.json and <run>_predictions.csv; <run> = <probe>-s<seed>-<hash of the options>."
BN_HELP = "BatchNorm without affine parameters before the head (SCALE: for VideoMAE features) [default: off]."
LOW_SHOT_HELP = "Train on a class-balanced fraction in (0, 1] (SCALE Table 7: 0.1) [default: all]."
TRAIN_HELP = "Store of the train split (eval mode; a train-mode store trains on 8 random views a step)."
TEST_HELP = "Eval-mode store of the test split."
CONFUSION_HELP = "Also draw the confusion matrix as <run>.confusion.png beside the results [default: off]."
MISMATCH_HELP = (
    "Allow stores (or an aggregator) made with other weights, preprocessing or clip length; the differences "
    "are kept in the result [default: refused]. A different feature dim is always refused."
)
VIEWS_HELP = (
    "Random clips per video per training step; 0: all [default: 8 on a train-mode train store, the official "
    "protocol; all on an eval-mode one]."
)
AGG_HELP = "A SCALE checkpoint: linear -> SCALE_linear, transformer -> SCALE_ft, knn -> SCALE_k-NN."
LR_HELP = "Learning rates to try on the validation part, comma-separated [default: per probe]."
WD_HELP = "Weight decays to try, comma-separated [default: per probe]."
EPOCHS_HELP = "Most epochs tried; the best count (checked at 10 points) is chosen on validation."


@probe_app.command("linear")
def linear_cmd(
    train_store: Path = typer.Argument(..., help=TRAIN_HELP),
    test_store: Path = typer.Argument(..., help=TEST_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    aggregator: Path | None = typer.Option(None, help=AGG_HELP),
    bn: bool = typer.Option(False, "--bn", help=BN_HELP),
    low_shot: float | None = typer.Option(None, help=LOW_SHOT_HELP),
    lr: str | None = typer.Option(None, help=LR_HELP),
    wd: str | None = typer.Option(None, help=WD_HELP),
    epochs: int | None = typer.Option(None, help=EPOCHS_HELP),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batches."),
    views: int | None = typer.Option(None, help=VIEWS_HELP),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help=MISMATCH_HELP),
    confusion: bool = typer.Option(False, "--confusion", help=CONFUSION_HELP),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
) -> None:
    """Per-clip linear softmax classifier, softmax averaged over a video's clips (SCALE's Linear)."""
    _classifier(
        "linear", train_store, test_store, out, aggregator, bn, low_shot, lr, wd, epochs, seed, device,
        {"views": views, "allow_overlap": allow_overlap,
        "allow_mismatch": allow_mismatch, "confusion": confusion},
    )  # fmt: skip


@probe_app.command("mlp")
def mlp_cmd(
    train_store: Path = typer.Argument(..., help=TRAIN_HELP),
    test_store: Path = typer.Argument(..., help=TEST_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    hidden: int = typer.Option(512, help="Hidden width of the MLP."),
    bn: bool = typer.Option(False, "--bn", help=BN_HELP),
    low_shot: float | None = typer.Option(None, help=LOW_SHOT_HELP),
    lr: str | None = typer.Option(None, help=LR_HELP),
    wd: str | None = typer.Option(None, help=WD_HELP),
    epochs: int | None = typer.Option(None, help=EPOCHS_HELP),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batches."),
    views: int | None = typer.Option(None, help=VIEWS_HELP),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help=MISMATCH_HELP),
    confusion: bool = typer.Option(False, "--confusion", help=CONFUSION_HELP),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
) -> None:
    """An MLP on each clip's feature, softmax averaged over a video's clips (SCALE's MLP baseline)."""
    _classifier(
        "mlp",
        train_store,
        test_store,
        out,
        None,
        bn,
        low_shot,
        lr,
        wd,
        epochs,
        seed,
        device,
        {
            "hidden": hidden,
            "views": views,
            "allow_overlap": allow_overlap,
            "allow_mismatch": allow_mismatch,
            "confusion": confusion,
        },
    )


@probe_app.command("transformer")
def transformer_cmd(
    train_store: Path = typer.Argument(..., help=TRAIN_HELP),
    test_store: Path = typer.Argument(..., help=TEST_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    aggregator: Path | None = typer.Option(None, help=AGG_HELP),
    width: int = typer.Option(
        256, help="Width of the randomly initialised transformer (ignored with a ckpt)."
    ),
    depth: int = typer.Option(
        2, help="Layers of the randomly initialised transformer (ignored with a ckpt)."
    ),
    bn: bool = typer.Option(False, "--bn", help=BN_HELP),
    low_shot: float | None = typer.Option(None, help=LOW_SHOT_HELP),
    lr: str | None = typer.Option(None, help=LR_HELP),
    wd: str | None = typer.Option(None, help=WD_HELP),
    epochs: int | None = typer.Option(None, help=EPOCHS_HELP),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batches."),
    views: int | None = typer.Option(None, help=VIEWS_HELP),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help=MISMATCH_HELP),
    confusion: bool = typer.Option(False, "--confusion", help=CONFUSION_HELP),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
) -> None:
    """The SCALE architecture over all of a video's clips, trained supervised (random init, or SCALE_ft)."""
    extra = {
        "width": width,
        "depth": depth,
        "views": views,
        "allow_overlap": allow_overlap,
        "allow_mismatch": allow_mismatch,
        "confusion": confusion,
    }
    _classifier(
        "transformer",
        train_store,
        test_store,
        out,
        aggregator,
        bn,
        low_shot,
        lr,
        wd,
        epochs,
        seed,
        device,
        extra,
    )


@probe_app.command("knn")
def knn_cmd(
    train_store: Path = typer.Argument(..., help="Store of the train split: the neighbours (eval mode)."),
    test_store: Path = typer.Argument(..., help="Eval-mode store of the test split: the queries."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    aggregator: Path | None = typer.Option(None, help=AGG_HELP),
    k: int = typer.Option(20, "--k", help="Neighbours (DINO / SCALE: 20)."),
    temperature: float = typer.Option(0.07, help="Vote temperature (DINO: 0.07)."),
    retrieval: bool = typer.Option(
        False, "--retrieval", help="Also report Recall@1/5/20 (test queries train)."
    ),
    pool: str = typer.Option(
        "mean", help="Retrieval pooling over clips: mean or max (STiCA: max over a 10x1 eval store)."
    ),
    low_shot: float | None = typer.Option(
        None, help="Use a class-balanced fraction of the train videos as neighbours [default: all]."
    ),
    seed: int = typer.Option(0, help="Seed of the low-shot draw."),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help=MISMATCH_HELP),
    confusion: bool = typer.Option(False, "--confusion", help=CONFUSION_HELP),
    device: str = typer.Option("auto", help=options.DEVICE_HELP),
) -> None:
    """DINO-style weighted k-NN on video vectors (mean of clips, minus train mean, L2-normalised)."""
    options.check_device(device)
    if pool not in ("mean", "max"):
        raise typer.BadParameter(f"--pool {pool!r}: choose mean or max")
    if low_shot is not None and not 0 < low_shot <= 1:
        raise typer.BadParameter(f"--low-shot {low_shot}: a fraction in (0, 1]")
    from vcache.learn.probes import ProbeSettings, run_knn

    s = ProbeSettings(
        k=k,
        temperature=temperature,
        retrieval=retrieval,
        pool=pool,
        low_shot=low_shot,
        seed=seed,
        allow_overlap=allow_overlap,
        allow_mismatch=allow_mismatch,
        device=device,
    )
    _run(train_store, test_store, out, aggregator, run_knn, s, confusion)
