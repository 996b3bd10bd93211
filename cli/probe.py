"""`vcache probe linear|mlp|transformer|knn`: probes on cached features (stage 2, from the cache).

The commands parse options and call vcache.learn.probes; torch and faiss load inside the commands.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import typer

from vcache.cli import options
from vcache.cli.common import console, fail
from vcache.cli.tree import app, probe_app


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
        train, test = load_pair(train_store, test_store, settings.allow_mismatch, settings.features)
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


# Options shared by the probe commands, each defined once (typer accepts one Option object as the default of
# several commands' parameters).
TRAIN = typer.Argument(..., help=TRAIN_HELP)
TEST = typer.Argument(..., help=TEST_HELP)
OUT = typer.Option(..., "--out", "-o", help=OUT_HELP)
AGGREGATOR = typer.Option(None, help=AGG_HELP)
BN = typer.Option(False, "--bn", help=BN_HELP)
LOW_SHOT = typer.Option(None, help=LOW_SHOT_HELP)
LR = typer.Option(None, help=LR_HELP)
WD = typer.Option(None, help=WD_HELP)
EPOCHS = typer.Option(None, help=EPOCHS_HELP)
SEED = typer.Option(0, help="Seed of the split, the initialisation and the batches.")
VIEWS = typer.Option(None, help=VIEWS_HELP)
ALLOW_OVERLAP = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP)
ALLOW_MISMATCH = typer.Option(False, "--allow-mismatch", help=MISMATCH_HELP)
CONFUSION = typer.Option(False, "--confusion", help=CONFUSION_HELP)
DEVICE = typer.Option("auto", help=options.DEVICE_HELP)
FEATURES = typer.Option(
    "video",
    help="What each row gives the probe: video (crops/features), audio (crops/audio, written by `vcache "
    "extract --audio-backbone`; rows without audio are zeros) or both, concatenated [default: video].",
)


@probe_app.command("linear")
def linear_cmd(
    train_store: Path = TRAIN,
    test_store: Path = TEST,
    out: Path = OUT,
    aggregator: Path | None = AGGREGATOR,
    bn: bool = BN,
    low_shot: float | None = LOW_SHOT,
    lr: str | None = LR,
    wd: str | None = WD,
    epochs: int | None = EPOCHS,
    seed: int = SEED,
    views: int | None = VIEWS,
    allow_overlap: bool = ALLOW_OVERLAP,
    allow_mismatch: bool = ALLOW_MISMATCH,
    confusion: bool = CONFUSION,
    features: str = FEATURES,
    device: str = DEVICE,
) -> None:
    """Per-clip linear softmax classifier, softmax averaged over a video's clips (SCALE's Linear)."""
    _classifier(
        "linear", train_store, test_store, out, aggregator, bn, low_shot, lr, wd, epochs, seed, device,
        {"views": views, "allow_overlap": allow_overlap,
        "allow_mismatch": allow_mismatch, "confusion": confusion, "features": features},
    )  # fmt: skip


@probe_app.command("mlp")
def mlp_cmd(
    train_store: Path = TRAIN,
    test_store: Path = TEST,
    out: Path = OUT,
    hidden: int = typer.Option(512, help="Hidden width of the MLP."),
    bn: bool = BN,
    low_shot: float | None = LOW_SHOT,
    lr: str | None = LR,
    wd: str | None = WD,
    epochs: int | None = EPOCHS,
    seed: int = SEED,
    views: int | None = VIEWS,
    allow_overlap: bool = ALLOW_OVERLAP,
    allow_mismatch: bool = ALLOW_MISMATCH,
    confusion: bool = CONFUSION,
    features: str = FEATURES,
    device: str = DEVICE,
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
            "features": features,
        },
    )


@probe_app.command("transformer")
def transformer_cmd(
    train_store: Path = TRAIN,
    test_store: Path = TEST,
    out: Path = OUT,
    aggregator: Path | None = AGGREGATOR,
    width: int = typer.Option(
        256, help="Width of the randomly initialised transformer (ignored with a ckpt)."
    ),
    depth: int = typer.Option(
        2, help="Layers of the randomly initialised transformer (ignored with a ckpt)."
    ),
    bn: bool = BN,
    low_shot: float | None = LOW_SHOT,
    lr: str | None = LR,
    wd: str | None = WD,
    epochs: int | None = EPOCHS,
    seed: int = SEED,
    views: int | None = VIEWS,
    allow_overlap: bool = ALLOW_OVERLAP,
    allow_mismatch: bool = ALLOW_MISMATCH,
    confusion: bool = CONFUSION,
    features: str = FEATURES,
    device: str = DEVICE,
) -> None:
    """The SCALE architecture over all of a video's clips, trained supervised (random init, or SCALE_ft)."""
    extra = {
        "width": width,
        "depth": depth,
        "views": views,
        "allow_overlap": allow_overlap,
        "allow_mismatch": allow_mismatch,
        "confusion": confusion,
        "features": features,
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
    out: Path = OUT,
    aggregator: Path | None = AGGREGATOR,
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
    allow_overlap: bool = ALLOW_OVERLAP,
    allow_mismatch: bool = ALLOW_MISMATCH,
    confusion: bool = CONFUSION,
    features: str = FEATURES,
    device: str = DEVICE,
) -> None:
    """DINO-style weighted k-NN on video vectors (mean of clips, minus train mean, L2-normalised)."""
    options.check_device(device)
    if pool not in ("mean", "max"):
        raise typer.BadParameter(f"--pool {pool!r}: choose mean or max")
    from vcache.learn.probes import ProbeSettings, run_knn

    try:  # ProbeSettings checks its values (--low-shot); a bad one is a bad option
        s = ProbeSettings(
            k=k,
            temperature=temperature,
            retrieval=retrieval,
            pool=pool,
            low_shot=low_shot,
            seed=seed,
            allow_overlap=allow_overlap,
            allow_mismatch=allow_mismatch,
            features=features,
            device=device,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    _run(train_store, test_store, out, aggregator, run_knn, s, confusion)


@app.command("results")
def results_cmd(
    folder: Path = typer.Argument(..., help="Folder with probe result JSON files (searched recursively)."),
    markdown: Path | None = typer.Option(None, help="Also write the table as markdown to this file."),
    figure: Path | None = typer.Option(
        None, help="Also draw top-1 per run as a bar chart into this PNG [default: no figure]."
    ),
) -> None:
    """Gather the results of `vcache probe` runs into one table: a line per group of seeds (mean ± std), its
    backbone and weights, stores and the options that differ between lines."""
    from rich.table import Table

    from vcache.learn.report import bar_figure, collect, to_markdown

    rows = collect(folder)
    if not rows:
        fail(f"no probe results under {folder}")
    md = to_markdown(rows)
    if markdown:
        markdown.write_text(md)
    if figure:
        try:
            console.print(f"figure: {bar_figure(rows, figure)}")
        except ValueError as e:
            fail(str(e))
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    from rich.console import Console

    out = Console()
    for ln in md.splitlines():
        if ln.strip() and not ln.startswith("|"):
            out.print(ln.strip(), soft_wrap=True, markup=False)
    t = Table(title=f"results in {folder}")
    for h in head:
        t.add_column(h, justify="left" if h == "probe" else "right")
    for ln in lines[2:]:
        t.add_row(*[c.strip() for c in ln.strip("|").split("|")])
    out.print(t)
