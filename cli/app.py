"""Entry point of the `vcache` command: one typer app, one module per command group.

Each command module adds its commands to `app` or a group of `vcache.cli.tree` when imported. Heavy
libraries
(torch, faiss) are imported inside the commands so that `vcache --help` stays fast.
"""

from __future__ import annotations

from vcache.cli import (  # noqa: F401  (each adds its commands)
    backbones,
    extract,
    pretrain,
    probe,
    stage2,
    stica,
    store,
    synth,
    tables,
)
from vcache.cli.tree import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
