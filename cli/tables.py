"""`vcache reproduce-tables`: rebuild the papers' tables at this machine's scale (see docs/tables.md)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vcache.cli.common import fail, stopped
from vcache.cli.tree import app


@app.command("reproduce-tables")
def reproduce_tables_cmd(
    out: Path = typer.Option(Path("results"), help="Folder for tables.md and the PNG figures."),
    work: Path | None = typer.Option(
        None, help="Folder for data, checkpoints, stores, probe results [OUT/work]."
    ),
    quick: bool = typer.Option(
        False, help="The tiny QUICK budget (within 3 minutes on 2 quiet cores; what the test runs) [off]."
    ),
    data: Path | None = typer.Option(
        None, help="A local UCF-101 / HMDB-51 video folder instead of `vcache synth`."
    ),
    splits: Path | None = typer.Option(
        None, help="Its train/test lists (ucfTrainTestlist or testTrainMulti)."
    ),
    format: str = typer.Option("ucf101", "--format", help="ucf101 or hmdb51 (with --data)."),
    executor: str | None = typer.Option(
        None, help="inprocess (default: one process, torch imported once) or subprocess (one per step)."
    ),
    stores: str | None = typer.Option(
        None,
        help="Where the feature stores go: a folder, or a URL prefix on object storage such as "
        "s3://bucket/tables (the AWS_* variables or --storage-option configure it) [WORK/stores].",
    ),
    readme: Path | None = typer.Option(
        None,
        help="A README whose orderings table (between <!-- orderings:begin/end --> markers) is replaced.",
    ),
) -> None:
    """Run synth -> pretrain -> extract -> train-aggregator -> probe through the CLI, cached, and write
    the papers' tables beside ours. A rerun redoes only the steps whose command line or inputs changed."""
    # Idle OpenMP threads sleep instead of spinning (set before torch loads libgomp; subprocess steps
    # inherit it; a value already in the environment wins). On the shared 2-core machine (load 15) spinning
    # threads burnt 4x the CPU of a pretraining step and 27x the wall time of a matmul loop (docs/tables.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vcache.tables import reproduce
    from vcache.tables.runner import StepFailed

    try:
        reproduce(
            quick=quick,
            out=out,
            work=work,
            data=data,
            splits=splits,
            fmt_=format,
            executor=executor,
            app=app,
            readme=readme,
            stores=stores,
        )
    except KeyboardInterrupt as e:
        stopped(f"{e or 'interrupted'}: rerun the same command to continue (finished steps are cached)")
    except StepFailed as e:
        fail(str(e))
