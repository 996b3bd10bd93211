"""`vcache inspect`, `vcache verify`, `vcache export`: what is in a store and whether it is intact."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from vcache.cli.common import console, fail, print_warnings
from vcache.cli.tree import app


@app.command("inspect")
def inspect_cmd(
    store: str = typer.Argument(..., help="A store made by `vcache extract` (a folder or a URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a store: videos done / failed (with reasons), dims, provenance."""
    from rich.table import Table

    from vcache.store import StoreError, summary

    try:
        s = summary(store)
    except StoreError as e:
        fail(str(e))
    except Exception as e:  # a damaged chunk: zarr / numcodecs raise several types
        fail(f"{store}: cannot read ({type(e).__name__}: {e}); `vcache verify {store}` finds the damage")
    if as_json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        return
    from vcache.store.compat import weights_label

    t = Table(title=str(store), show_header=False)
    t.add_column(style="bold")
    t.add_column()
    bb = s["backbone"] or {}
    sm = s["sampling"] or {}
    rows = [
        ("videos", f"{s['videos']}: {s['done']} done, {s['failed']} failed, {s['pending']} pending"),
        (
            "crops",
            f"{s['crops_per_video'] or 'a variable number of'} per video, {s['rows']} rows, features "
            f"{s['feature_dim']}-d {s['feature_dtype']} (schema {s['schema_version']})",
        ),  # fmt: skip
        ("feature maps", str(s["map_shape"]) if s["map_shape"] else "no"),
        ("shards", f"{s['shards']} of {s['videos_per_shard']} videos"),
        (
            "backbone",
            f"{bb.get('name')} checkpoint={bb.get('checkpoint')} sha256={bb.get('checkpoint_sha256')}",
        ),
        ("weights", weights_label(bb)),
        ("preprocessing", json.dumps(bb.get("preprocessing"))),
        ("sampling", json.dumps(sm)),
        ("manifest", json.dumps(s["manifest"])),
        ("classes", str(s["classes"])),
    ]
    if s["failure_reasons"]:
        rows.append(("failure reasons", ", ".join(f"{k}: {v}" for k, v in s["failure_reasons"].items())))
    for p, r in s["failed_examples"]:
        rows.append(("  failed", f"{p} ({r})"))
    if s["warned"]:
        rows.append(("done with warnings", f"{s['warned']} (truncated, decoder errors or rotated)"))
    for p, n, w in s["warned_examples"]:
        rows.append(("  warning", f"{p} ({n} decoder messages) {w}"))
    if s["rotated"]:
        rows.append(("rotated", f"{s['rotated']} (display matrix recorded in videos/rotation, not applied)"))
    if s["partial_files"]:
        rows.append(("partial files", f"{s['partial_files']} (left by a killed run; a resume removes them)"))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


@app.command("export")
def export_cmd(
    store: str = typer.Argument(..., help="A store made by `vcache extract` (a folder or a URL)."),
    out: Path = typer.Argument(
        ..., help="h5: the HDF5 file to write; npy: the folder for one .npy per video and windows.csv."
    ),
    fmt: str = typer.Option(
        "h5",
        "--format",
        help="h5: every array under its store name plus by_video/<path> groups; npy: OUT/<video path "
        "without extension>.npy (rows, D) float32 per done video and OUT/windows.csv (video, row, start_s, "
        "end_s). Default: h5.",
    ),
) -> None:
    """Write a store's done videos for tools that do not read Zarr: one HDF5 file, or one .npy per video."""
    from vcache.store import StoreError, export_h5, export_npy

    if fmt not in ("h5", "npy"):
        fail(f"--format {fmt!r}: choose h5 or npy", code=2)
    try:
        if fmt == "npy":
            table, n = export_npy(store, out)
            console.print(f"wrote {n} videos to {out} ({table.name} lists their rows)")
            return
        export_h5(store, out)
    except StoreError as e:
        fail(str(e))
    console.print(f"wrote {out}")


@app.command("verify")
def verify_cmd(
    store: str = typer.Argument(..., help="A store made by `vcache extract` (a folder or a URL)."),
    complete: bool = typer.Option(False, "--complete", help="Also fail when videos are still pending."),
) -> None:
    """Check a store: shapes and dtypes, finite done rows, valid boxes, failure reasons, provenance,
    no half-written files. Exits 1 with a report on any problem."""
    from vcache.store import verify
    from vcache.store.verify import warned_videos

    problems, counts = verify(store, require_complete=complete)
    if counts.get("warned"):
        from vcache.store import open_store

        warned = warned_videos(open_store(store))
        print_warnings(warned, f"{len(warned)} done with warnings (not problems of the store)")
    if problems:
        console.print(f"[bold red]{store}: {len(problems)} problem(s)[/]", soft_wrap=True)
        for p in problems[:50]:
            console.print(f"  - {p}", soft_wrap=True, markup=False)
        raise typer.Exit(1)
    console.print(
        f"[green]{store}: valid[/] ({counts['done']} done, {counts['failed']} failed, "
        f"{counts['pending']} pending, {counts.get('warned', 0)} with warnings)",
        soft_wrap=True,
    )
