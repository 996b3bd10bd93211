"""The command tree: the `vcache` app and its groups. Command modules add their commands to these; this
module imports none of them, so that `vcache.cli.app` can import every command module without a cycle."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    rich_markup_mode=None,
    name="vcache",
    help="Decode each video once, cache space-time crop features in Zarr, learn from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

pretrain_app = typer.Typer(
    rich_markup_mode=None,
    help="Self-supervised pretraining of a fresh backbone from your videos; writes a checkpoint that "
    "`vcache extract --backbone NAME --checkpoint CKPT` loads.",
    no_args_is_help=True,
)
app.add_typer(pretrain_app, name="pretrain")
train_app = typer.Typer(
    rich_markup_mode=None, help="Train an aggregator on a train-mode store.", no_args_is_help=True
)
probe_app = typer.Typer(
    rich_markup_mode=None,
    help="Probe cached features: train on one store, test on another.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train-aggregator")
app.add_typer(probe_app, name="probe")


# Commands that run under torchrun (one share of the work per rank); every other command is one process.
_MULTI_PROCESS = {"extract", "pretrain cvrl", "pretrain svt", "pretrain stica"}
_GROUPS = {"pretrain", "train-aggregator", "probe"}  # their own callbacks see the full command


def _refuse_torchrun(command: str) -> None:
    """One line, from rank 0 only, when a one-process command was started with WORLD_SIZE > 1: otherwise
    torchrun would run N identical trainings that overwrite one output."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or command in _MULTI_PROCESS or command in _GROUPS:
        return
    if int(os.environ.get("RANK", "0") or 0) == 0:
        typer.echo(
            f"error: `vcache {command}` runs in one process and cannot use torchrun (WORLD_SIZE={world}); "
            "start it without torchrun (only extract and pretrain cvrl, svt and stica use several processes)",
            err=True,
        )
    raise typer.Exit(2)


@app.callback()
def _root(
    ctx: typer.Context,
    storage_option: list[str] = typer.Option(
        [],
        "--storage-option",
        help="KEY=VALUE for stores on object storage (obstore's config keys, e.g. endpoint=http://host:9000, "
        "region=eu-west-1); repeatable; added to VCACHE_STORAGE_OPTIONS. The AWS_* variables work too.",
    ),
    cache_dir: str | None = typer.Option(
        None,
        "--cache-dir",
        help="Folder for verified local copies of stores on object storage that stage 2 reads (probes, "
        "train-aggregator), reused while a store is unchanged [default: VCACHE_CACHE_DIR, else none: read "
        "the bucket each time].",
    ),
) -> None:
    bad = [o for o in storage_option if "=" not in o or "," in o]
    if bad:
        typer.echo(f"error: --storage-option takes KEY=VALUE without commas, got {bad[0]!r}", err=True)
        raise typer.Exit(2)
    if storage_option:
        have = os.environ.get("VCACHE_STORAGE_OPTIONS", "")
        os.environ["VCACHE_STORAGE_OPTIONS"] = ",".join(filter(None, [have, *storage_option]))
    if cache_dir:
        os.environ["VCACHE_CACHE_DIR"] = cache_dir
    if ctx.invoked_subcommand:
        _refuse_torchrun(ctx.invoked_subcommand)


@pretrain_app.callback()
def _pretrain(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand:
        _refuse_torchrun(f"pretrain {ctx.invoked_subcommand}")


@train_app.callback()
def _train(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand:
        _refuse_torchrun(f"train-aggregator {ctx.invoked_subcommand}")


@probe_app.callback()
def _probe(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand:
        _refuse_torchrun(f"probe {ctx.invoked_subcommand}")
