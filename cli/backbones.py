"""`vcache backbones`: the registered backbones with their feature dim and preprocessing."""

from __future__ import annotations

import typer

from vcache.cli.common import console, fail
from vcache.cli.tree import app


@app.command("backbones")
def backbones_cmd(
    names: list[str] | None = typer.Argument(
        None, help="Backbones to describe, e.g. hf:FOLDER [default: every registered one]."
    ),
) -> None:
    """List the registered backbones (or the ones named) with their feature dim and preprocessing."""
    from rich.table import Table

    from vcache.models import build_backbone, list_backbones
    from vcache.models.hf import FAMILIES

    t = Table(title="backbones (--backbone NAME; hf:<model id or folder>; or package.module:factory)")
    for col in ("name", "dim", "input", "clip", "stride", "pool", "params"):
        t.add_column(col)
    for name in names or list_backbones():
        try:
            m = build_backbone(name)
        except (ValueError, KeyError, ImportError, RuntimeError) as e:
            fail(f"backbone {name!r}: {e}")
        p = m.preprocessing
        n = sum(x.numel() for x in m.parameters())
        t.add_row(
            name,
            str(m.feature_dim),
            str(p.input_size),
            str(p.clip_frames),
            str(p.frame_stride),
            p.pool,
            f"{n / 1e6:.1f} M",
        )
    console.print(t)
    if not names:
        console.print(f"hf: model types: {', '.join(sorted(FAMILIES))} (docs/models.md)")
