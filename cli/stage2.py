"""`vcache train-aggregator scale`: SCALE on the cache (the probes are in vcache.cli.probe).

The command parses options and calls vcache.learn.scale; torch loads inside the command.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vcache.cli import options
from vcache.cli.common import console, fail
from vcache.cli.tree import train_app


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
        "at a time [default: half of the free host memory, and on a GPU also half of its free memory].",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train SCALE (masked clip modelling + SET loss) on cached clip features."""
    options.check_device(device)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vcache.learn.aggregator import ScaleConfig
    from vcache.learn.scale import ShardStream, steps_per_epoch, train_scale
    from vcache.store import StoreError, cache_nbytes, load_cache

    if out.exists() and not resume:
        fail(f"{out} exists: pass --resume to continue it, or choose another --out")
    from vcache.learn.scale import memory_budget
    from vcache.runtime.devices import resolve_device

    dev = resolve_device(device)
    gpu_free = None
    if dev.type == "cuda":
        import torch

        gpu_free = float(torch.cuda.mem_get_info(dev)[0])
    host_free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget = memory_budget(host_free, gpu_free, memory_gb)
    try:
        if cache_nbytes(train_store) <= budget:
            cache = load_cache(train_store)
            feature_dim = cache.features.shape[-1]
        else:
            cache = ShardStream(train_store, budget)
            feature_dim = cache.feature_dim
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
    steps = steps_per_epoch(cache, batch_size, drop_last)
    task = progress.add_task("scale", total=epochs * steps, epoch=0, loss=0.0, rate=0.0)

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
