"""The command tree: the `vcache` app and its groups. Command modules add their commands to these; this
module imports none of them, so that `vcache.cli.app` can import every command module without a cycle."""

from __future__ import annotations

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
