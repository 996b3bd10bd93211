"""Entry point of the `vcache` command: one typer app, one module per command group.

Each command module registers its commands on `app` (or on a sub-app) when imported. Heavy libraries
(torch, faiss) are imported inside the commands so that `vcache --help` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vcache",
    help="Decode each video once, cache space-time crop features in Zarr, learn from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules: each import registers its commands on `app`.
from vcache.cli import extract, pretrain, stage2, stica, synth, tables  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
