"""`make reproduce-tables`: the papers' tables rebuilt at a scale a 2-core machine runs, beside the papers.

What and why: a *plan* of steps, each one real `vcache ...` command line (synth -> pretrain -> extract ->
train-aggregator -> probe), run in order and cached. A step is skipped when its marker in
``WORK/.steps/`` holds the same key; the key hashes the step's argv and the keys of the steps it reads
from, so changing one option reruns that step and everything downstream, nothing else. Then the probe
result JSONs are gathered and ``OUT/tables.md`` plus PNG figures (SCALE Tables 8-11) are written, each
table with the paper's numbers beside ours, the probe that fills its cells and a line on the scale.

One module per concept; data flows down this list (each imports only modules above it):

- ``budgets``: the scale knobs: Budget, QUICK, FULL, the backbone Columns, AggCfg.
- ``runner``: the step cache: Step, Plan, run_plan (in-process or subprocess steps).
- ``plan``: which CLI steps make which cells: Source, Builder, build.
- ``papers``: the papers' published numbers, as data, each citing its table.
- ``figures``: the matplotlib figures of SCALE Tables 8-11.
- ``markdown``: our cells (stat, fmt), one markdown section per table, the orderings' verdicts, and
  render(), which writes tables.md, orderings.json and the figures.
- ``stica_av``: STiCA Table 3's section (end-to-end, audio-visual), handed to render().
- this file: reproduce(), which builds the plan, runs it and renders.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vcache.store.location import is_remote
from vcache.tables.budgets import ABLATION_COLUMN, COLUMNS, FULL, QUICK, AggCfg, Budget, Column
from vcache.tables.markdown import HONESTY, ROW_NAMES, Check, fmt, render, stat
from vcache.tables.papers import (
    PAPER_ABL_HEAD,
    PAPER_T4_UCF,
    PAPER_T5_HMDB,
    PAPER_T8,
    PAPER_T9,
    PAPER_T10,
    PAPER_T11,
)
from vcache.tables.plan import PROBE_CMD, PROBES_MAIN, Builder, Source, build
from vcache.tables.runner import Plan, Step, profile, run_plan
from vcache.tables.stica_av import t3_section

__all__ = [
    "ABLATION_COLUMN",
    "COLUMNS",
    "FULL",
    "HONESTY",
    "PAPER_ABL_HEAD",
    "PAPER_T4_UCF",
    "PAPER_T5_HMDB",
    "PAPER_T8",
    "PAPER_T9",
    "PAPER_T10",
    "PAPER_T11",
    "PROBES_MAIN",
    "PROBE_CMD",
    "QUICK",
    "ROW_NAMES",
    "AggCfg",
    "Budget",
    "Builder",
    "Check",
    "Column",
    "Plan",
    "Source",
    "Step",
    "build",
    "fmt",
    "render",
    "reproduce",
    "profile",
    "run_plan",
    "set_threads",
    "stat",
    "update_readme",
]


def reproduce(
    quick: bool = False,
    out: Path | str = "results",
    work: Path | str | None = None,
    data: Path | str | None = None,
    splits: Path | str | None = None,
    fmt_: str = "ucf101",
    executor: str | None = None,
    echo: Callable[[str], None] = print,
    app: Callable[..., Any] | None = None,
    readme: Path | str | None = None,
    stores: str | Path | None = None,
) -> Path:
    """Build the plan, run what changed, write OUT/tables.md and the figures. Returns the markdown path.

    data/splits: a local UCF-101 (or HMDB-51 with fmt_="hmdb51") copy instead of the synthetic set.
    executor: "inprocess" (default: no torch import per step) or "subprocess" (each step isolated).
    app: the `vcache` typer app that in-process steps run (`vcache.cli.app.app`).
    readme: a README whose orderings table (between ORDERINGS_BEGIN and ORDERINGS_END) is replaced by
    this run's (OUT/orderings.md).
    stores: where the feature stores go: a folder, or a URL prefix such as ``s3://bucket/tables``
    (object storage, see docs/store.md) [WORK/stores].
    """
    b = QUICK if quick else FULL
    out = Path(out)
    work = Path(work) if work else out / "work"
    src = None
    if data:
        if not splits:
            raise ValueError("DATA needs SPLITS (the folder of train/test lists)")
        src = Source(Path(data), Path(splits), fmt_)
    executor = executor or "inprocess"
    set_threads(b.threads)
    t0 = time.perf_counter()
    if stores is not None and not is_remote(stores):
        stores = Path(stores)
    bl, layout = build(b, work, src, stores)
    marks = run_plan(bl.plan, work, executor, echo, app)
    src_note = (
        f"synthetic `{b.task}` task (`--colours {b.colours} --sprite {b.sprite:g}`: digits "
        f"{round(b.sprite * b.size)} px), {b.train} train / {b.test} test videos of {b.frames} frames at "
        f"{b.size}²"
        if src is None
        else f"{fmt_} at {data} (split 1)"
    )
    path = render(b, layout, marks, out, src_note, extra=(t3_section,))
    if readme:
        update_readme(Path(readme), (out / "orderings.md").read_text())
    spent = sum(m["seconds"] for m in marks.values())
    prof = profile(marks)
    (out / "profile.json").write_text(json.dumps(prof, indent=1))
    kinds = (f"{k} {v['wall_s']:.0f} s ({v['cpu_s']:.0f} s CPU)" for k, v in prof.items())
    echo("step time by kind: " + ", ".join(kinds))
    echo(
        f"wrote {path} ({len(marks)} steps, {spent:.0f} s of step time in all, "
        f"{time.perf_counter() - t0:.0f} s this run)"
    )
    return path


ORDERINGS_BEGIN, ORDERINGS_END = "<!-- orderings:begin -->", "<!-- orderings:end -->"


def set_threads(n: int) -> None:
    """Fix torch's intra-op threads for in-process steps and OMP / MKL threads for subprocess steps: the
    cells move by points between thread counts (float rounding), so the count is fixed and recorded."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the README's orderings markers with `table` (the markers must exist)."""
    text = readme.read_text()
    i, j = text.find(ORDERINGS_BEGIN), text.find(ORDERINGS_END)
    if i < 0 or j < i:
        raise ValueError(f"{readme} has no {ORDERINGS_BEGIN} ... {ORDERINGS_END} block")
    readme.write_text(text[: i + len(ORDERINGS_BEGIN)] + "\n" + table.strip() + "\n" + text[j:])
