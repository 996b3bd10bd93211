"""STiCA Table 3 alone, at a chosen budget: the `reproduce-tables` steps of `vcache.tables.plan.stica_t3`
(synth --audio, pretrain stica per row and pretraining seed, extract, probe linear), cached in WORK like
the driver's, then its section with the bootstrap verdicts.

    python benchmarks/stica_table3.py [--budget quick|small] [--work DIR] [--out FILE.md]

`small` (our choice, sized for about half an hour on 2 heavily shared cores): 24 train / 24 test videos of
the appearance task, 32-px crops (a 3 x 2 x 2 map), 2 epochs of batch 6 (8 steps a run), one run
(pretraining seed 0, probe seed 0), eval layout 1x1, linear probes of 50 epochs with their own lr / wd
selection. Writes the markdown and a JSON of the verdicts (intervals: bootstrap over the test videos).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from vcache.cli.app import app
from vcache.tables import QUICK, set_threads
from vcache.tables.plan import Builder, stica_t3
from vcache.tables.runner import run_plan
from vcache.tables.stica_av import t3_section

SMALL = replace(
    QUICK,
    name="stica-t3-small",
    t3_train=24,
    t3_test=24,
    t3_input=32,
    t3_epochs=2,
    t3_batch=6,
    t3_layout="1x1",
    probe_epochs=50,
    probe_grid=True,  # the probe's own lr / wd selection: lr 1e-3 alone left every probe at one class
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=("quick", "small"), default="small")
    ap.add_argument("--work", type=Path, default=Path("results/stica_t3_work"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stica_table3.md")
    ap.add_argument(
        "--render-only", action="store_true", help="Write the section from WORK's results as they are."
    )
    args = ap.parse_args()
    b = SMALL if args.budget == "small" else QUICK
    set_threads(b.threads)
    t0 = time.perf_counter()
    bl = Builder(b, args.work, None)
    layout = {"stica_t3": stica_t3(bl)}
    marks = {} if args.render_only else run_plan(bl.plan, args.work, "inprocess", print, app)
    md, checks = t3_section(layout)
    spent = {k: round(m["seconds"], 1) for k, m in marks.items()}
    note = (
        f"\nBudget `{b.name}`: {b.t3_train} train / {b.t3_test} test videos (`{b.task}`, "
        f"{b.t3_frames} frames at {b.size}², audio), crops {b.t3_input} px, "
        f"{b.t3_epochs} epochs of batch {b.t3_batch} at lr "
        f"{b.t3_lr:g}, runs (pretraining seed, probe seed) {bl.runs()}, eval layout {b.t3_layout}, linear "
        f"probes {b.probe_epochs} epochs; {sum(spent.values()):.0f} s of step time, "
        f"torch threads {b.threads}.\n"
    )
    verdicts = "".join(f"- {r['verdict']}: {name} ({_interval(r)})\n" for name, r in checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + note + "\n" + verdicts)
    args.out.with_suffix(".json").write_text(
        json.dumps({"checks": dict(checks), "step_seconds": spent}, indent=1, ensure_ascii=False) + "\n"
    )
    print(md + note + verdicts + f"({time.perf_counter() - t0:.0f} s this run)")


def _interval(r: dict) -> str:
    if "ci95" not in r:
        return r.get("verdict", "")
    return f"Δ {r['diff']:+.1f} [{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}] top-1 points"


if __name__ == "__main__":
    main()
