"""Results into markdown: our cells (stat / fmt over the seeds' probe JSONs), the papers' numbers beside
them (papers.py), one section per table, the orderings each table should show and whether they held
(verdicts), and render(), which writes OUT/tables.md, OUT/orderings.json and the figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vcache.tables.budgets import ABLATION_COLUMN, COLUMNS, Budget
from vcache.tables.confidence import HELD, INCONCLUSIVE, REVERSED, combine, compare, describe, not_worse
from vcache.tables.figures import write_figures, write_loss_curves
from vcache.tables.papers import (
    PAPER_ABL_HEAD,
    PAPER_CVRL,
    PAPER_STICA_1B,
    PAPER_STICA_1F,
    PAPER_SVT_T4,
    PAPER_T1,
    PAPER_T1_BATCHES,
    PAPER_T4_UCF,
    PAPER_T5_HMDB,
    PAPER_T8,
    PAPER_T9,
    PAPER_T10,
    PAPER_T11,
    PAPER_T11_BATCHES,
)
from vcache.tables.plan import PROBES_MAIN
from vcache.tables.runner import output_exists

# Our cells: top-1 % over the seeds' probe result JSONs.


def _top1(folder: Path) -> float | None:
    """The newest probe result in a step's folder (result files are named per run, so a step rerun with
    other options leaves its old file beside the new one)."""
    for f in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        d = json.loads(f.read_text())
        if isinstance(d, dict) and "top1" in (d.get("metrics") or {}):
            return 100.0 * float(d["metrics"]["top1"])
    return None


def stat(folders: Sequence[Path]) -> tuple[float, float, int] | None:
    """(mean, std, n) of top-1 % over the seeds' result folders; None when none has a result."""
    vals = [v for v in (_top1(f) for f in folders) if v is not None]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd, len(vals)


def fmt(s: tuple[float, float, int] | None) -> str:
    if s is None:
        return "not run"
    return f"{s[0]:.1f} ± {s[1]:.1f}" if s[2] > 1 else f"{s[0]:.1f}"


# Markdown.


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n"  # blank lines around: a table must not touch a paragraph


ROW_NAMES = {
    "knn": "k-NN", "scale_knn": "SCALE_k-NN", "linear": "Linear", "scale_linear": "SCALE_linear",
    "mlp": "MLP", "transformer": "Transformer", "scale_ft": "SCALE_ft",
}  # fmt: skip


def _paper4(v: Sequence[float | None]) -> str:
    return " / ".join("–" if x is None else f"{x:.2f}" for x in v)


HONESTY = (
    "**Read this first.** These numbers come from a small synthetic dataset (`vcache synth`) or a small "
    "local copy of UCF-101 / HMDB-51, tiny backbones and minutes of training. The absolute numbers are *not* "
    "comparable with the papers'. What can carry over is the *ordering* within a table (SCALE_ft above "
    "Linear, mask 0.25 near the best, decreasing interval sampling above increasing, pretrained above "
    "random init); "
    "the last section says which orderings held in this run.\n"
)


# The orderings a table should show, and whether they held.


# (ordering, result): result = confidence.compare's dict (verdict held / reversed / inconclusive / not
# measured, difference and 95 % bootstrap interval in top-1 points over test videos and runs).
Check = tuple[str, dict]


def _best(cells: dict, keys: list) -> Any:
    """The key of the cell with the highest mean top-1 among `keys` (None when none was measured)."""
    scored = [(s[0], k) for k in keys if (s := stat(cells[k])) is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None


# One section per table (or group of tables): markdown and its ordering checks.


def _main_section(b: Budget, layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """SCALE Tables 4 / 5: rows = probes, columns = backbones (pretrained beside random init)."""
    cols = list(b.columns)
    main = {k: stat(v) for k, v in layout["main"].items()}
    head = [
        "",
        *(COLUMNS[c].title for c in cols),
        "paper UCF SVT / ρBYOL (T4)",
        "paper HMDB SVT / ρBYOL (T5)",
    ]
    rows = [
        [
            ROW_NAMES[p],
            *(fmt(main[(c, p)]) for c in cols),
            _paper4(PAPER_T4_UCF[p]),
            _paper4(PAPER_T5_HMDB[p]),
        ]
        for p in PROBES_MAIN
    ]
    md = (
        "\n## SCALE Tables 4 / 5: probes on frozen features, per backbone\n"
        "Probes: `vcache probe knn|linear|mlp|transformer`; the SCALE_* rows add `--aggregator` (a SCALE "
        "aggregator trained on the train-mode cache with the default config).\n"
        + _table(head, rows)
        + "R(2+1)D / STiCA column: not run here; end-to-end STiCA pretraining runs for Table 3 below, on "
        "its own audio-visual set (docs/tables.md).\n"
    )
    checks: list[Check] = []
    lay = layout["main"]
    for c in cols:
        t = COLUMNS[c].title
        for row in ("scale_ft", "scale_linear"):
            checks.append((f"{t}: {ROW_NAMES[row]} > Linear", compare(lay[(c, row)], lay[(c, "linear")])))
        checks.append(
            (f"{t}: SCALE_ft > Transformer", compare(lay[(c, "scale_ft")], lay[(c, "transformer")]))
        )
        checks.append((f"{t}: Transformer > Linear", compare(lay[(c, "transformer")], lay[(c, "linear")])))
        checks.append((f"{t}: SCALE_k-NN > k-NN", compare(lay[(c, "scale_knn")], lay[(c, "knn")])))
    # Pretraining comparisons (issue 14): each pretrained column against random init and against the
    # batch-norm-statistics control (the same run at lr 0), on k-NN and on linear.
    for pre, controls in PRETRAIN_CONTROLS.items():
        for ctl in (c for c in controls if c in cols and pre in cols):
            for row in ("knn", "linear"):
                name = f"{COLUMNS[pre].title} above {COLUMNS[ctl].title} ({ROW_NAMES[row]})"
                checks.append((name, compare(lay[(pre, row)], lay[(ctl, row)])))
    return md, checks


PRETRAIN_CONTROLS = {
    "r3d_cvrl": ("r3d_random", "r3d_cvrl_bn"),
    "vit_svt": ("vit_random",),  # a ViT has no batch norm: its lr-0 run is its random init
    "vit_svt_student": ("vit_random",),
}


def _paper_t11(k: int, bs: int, t11: dict) -> tuple:
    """The paper's cell at the same place of the grid: our batch sizes matched by rank to 256 / 512 / 1024."""
    ours = sorted({x for _, x in t11})
    paper = PAPER_T11_BATCHES[max(0, len(PAPER_T11_BATCHES) - len(ours)) :]
    i = min(ours.index(bs), len(paper) - 1)
    return PAPER_T11.get((k, paper[i]), (None,) * 4)


def _ablation_sections(b: Budget, layout: dict[str, Any]) -> tuple[str, list[Check], dict[str, dict]]:
    """SCALE Tables 8-11, cells = SCALE_ft accuracy as in the paper."""
    t = {n: {k: stat(v) for k, v in layout[n].items()} for n in ("t8", "t9", "t10", "t11")}
    note = (
        "Cells: SCALE_ft (`vcache probe transformer --aggregator`, lr 3e-4, wd 0.05) on "
        f"{COLUMNS[ABLATION_COLUMN].title}; paper: SVT and ρBYOL features, UCF-101 / HMDB-51, 200 epochs.\n"
    )
    md = "\n## SCALE Table 8: loss terms\n" + note + "The paper used mask 0.20 here; we keep 0.25.\n"
    md += _table(
        ["losses", "ours", PAPER_ABL_HEAD], [[k, fmt(v), _paper4(PAPER_T8[k])] for k, v in t["t8"].items()]
    )
    md += "\n## SCALE Table 9: mask ratio\n" + note
    md += _table(
        ["mask", "ours", PAPER_ABL_HEAD], [[k, fmt(v), _paper4(PAPER_T9[k])] for k, v in t["t9"].items()]
    )
    md += "\n## SCALE Table 10: transformer capacity\n" + note
    rows = [[w, d, fmt(v), _paper4(PAPER_T10.get((w, d), (None,) * 4))] for (w, d), v in t["t10"].items()]
    md += _table(["width", "depth", "ours", PAPER_ABL_HEAD], rows)
    md += "\n## SCALE Table 11: views per set × batch size\n" + note
    md += "Batch sizes are fractions of our train set (paper: 256 / 512 / 1024 of ~9.5k videos).\n"
    rows = [[k, bs, fmt(v), _paper4(_paper_t11(k, bs, t["t11"]))] for (k, bs), v in t["t11"].items()]
    md += _table(["views per set (2 sets)", "batch", "ours", "paper, batch 256/512/1024 by rank"], rows)

    l8, l9, l10, l11 = (layout[n] for n in ("t8", "t9", "t10", "t11"))
    both = [compare(l8["SET + MCM"], l8[k]) for k in ("SET only", "MCM only")]
    checks: list[Check] = [("T8: SET + MCM ≥ each alone", combine(both))]
    best = _best(l9, [m for m in l9 if m != 0.25])
    r9 = not_worse(l9[0.25], l9[best]) if 0.25 in l9 and best is not None else {"verdict": "not measured"}
    checks.append((f"T9: mask 0.25 within the interval of the best other mask ({best})", r9))
    d1, d2 = _best(l10, [k for k in l10 if k[1] == 1]), _best(l10, [k for k in l10 if k[1] >= 2])
    r10 = compare(l10[d2], l10[d1]) if d1 and d2 else {"verdict": "not measured"}
    checks.append((f"T10: best with ≥ 2 layers {d2} above best with 1 layer {d1}", r10))
    bmax = max(bs for _, bs in l11)
    hi, lo = l11.get((max(b.views), bmax), []), l11.get((min(b.views), bmax), [])
    checks.append((f"T11: {max(b.views)} views above {min(b.views)} (largest batch)", compare(hi, lo)))
    return md, checks, t


def _t1(runs: dict[str, tuple[str, int, int | str]], marks: dict[str, dict]) -> str:
    from vcache.store import summary

    rows = []
    labels = {"scale": "SCALE aggregator on the cache", "e2e": "end-to-end CVRL training of the backbone"}
    for key, label in labels.items():
        name, steps, per_step = runs[key]
        m = marks.get(name) or {}
        if isinstance(per_step, str):
            per_step = summary(per_step)["done"] if output_exists(per_step) else 0
        samples = steps * per_step
        if "seconds" not in m or "peak_rss_mb" not in m or not samples:
            rows.append([label, "not run", "not run", "not run"])
            continue
        extra = m["peak_rss_mb"] - m.get("base_rss_mb", 0.0)
        rows.append([label, f"{m['peak_rss_mb']:.0f}", f"{extra:.0f}", f"{samples / m['seconds']:.1f}"])
    return (
        "Ours, on this machine's CPU, the same number of optimiser steps each: peak resident memory of the "
        "process, the same above the process after importing torch, and training samples/s (videos per "
        "second of the command's own run time, which includes loading the store or the model, so a lower "
        "bound). A sample is one video: its cached clip features for SCALE, two decoded and augmented "
        "clips for CVRL.\n"
        + _table(["method", "peak RSS (MB)", "above torch import (MB)", "samples/s"], rows)
        + "Paper (SCALE Table 1, one RTX 3090, ViT-B; GB of VRAM at batch "
        + " / ".join(str(n) for n in PAPER_T1_BATCHES)
        + ", samples/s): "
        + "; ".join(
            f"{name} " + " / ".join("OOM" if g is None else f"{g:.2f}" for g in gb) + f", {sps:.2f}"
            for name, (gb, sps) in PAPER_T1.items()
        )
        + ".\n"
    )


def _cvrl_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """CVRL Fig. 3 (interval distribution) and Table 9 (consistent vs per-frame augmentation)."""
    cv = {k: stat(v) for k, v in layout["cvrl"].items()}
    names = {
        "r3d_cvrl": "decreasing interval, consistent aug",
        "cvrl_uniform": "uniform interval",
        "cvrl_increasing": "increasing interval",
        "cvrl_perframe": "per-frame (inconsistent) aug",
    }
    rows = [[name, fmt(cv[k]), PAPER_CVRL[k]] for k, name in names.items()]
    md = (
        "\n## CVRL Fig. 3 and Table 9: interval distribution, consistent augmentation\n"
        "Cells: `vcache probe linear` on cvrl_r3d_narrow features after `vcache pretrain cvrl` with the "
        "setting named; paper: linear evaluation on Kinetics-400 (Fig. 3 gives its numbers only in a plot).\n"
        + _table(["pretraining", "ours (linear)", "paper"], rows)
    )
    lc = layout["cvrl"]
    return md, [
        ("CVRL: decreasing above increasing interval", compare(lc["r3d_cvrl"], lc["cvrl_increasing"])),
        ("CVRL: decreasing ≥ uniform interval", compare(lc["r3d_cvrl"], lc["cvrl_uniform"])),
        ("CVRL: uniform above increasing interval", compare(lc["cvrl_uniform"], lc["cvrl_increasing"])),
        ("CVRL: consistent above per-frame augmentation", compare(lc["r3d_cvrl"], lc["cvrl_perframe"])),
    ]


def _svt_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """SVT Table 4: which correspondence losses are on."""
    sv = {k: {p: stat(v) for p, v in d.items()} for k, d in layout["svt"].items()}
    names = {"svt_nomotion": "cross-view (l→g) only", "svt_nocross": "motion (g→g) only", "vit_svt": "both"}
    paper = {k: f"{ucf:.2f} / {hmdb:.2f}" for k, (ucf, hmdb) in PAPER_SVT_T4.items()}
    rows = [[names[k], fmt(sv[k]["knn"]), fmt(sv[k]["linear"]), paper[k]] for k in names]
    md = (
        "\n## SVT Table 4: correspondence losses\n"
        "Cells: `vcache probe knn` and `vcache probe linear` on vit_video_tiny features after "
        "`vcache pretrain svt`; paper: linear evaluation, "
        " UCF-101 / HMDB-51 (ViT-B pretrained on Kinetics-400).\n"
        + _table(["losses on", "ours k-NN", "ours linear", "paper UCF / HMDB"], rows)
    )
    ls = layout["svt"]
    both = [compare(ls["vit_svt"]["linear"], ls[k]["linear"]) for k in ("svt_nomotion", "svt_nocross")]
    return md, [("SVT: both losses ≥ each alone (linear)", combine(both))]


def _stica_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """STiCA Table 1f (from the benchmark's JSON) and Table 1b (head-only, trunk frozen)."""
    f = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "stica.json"
    md = "\n## STiCA Table 1f: step cost of input crops vs feature crops\n"
    if f.exists():
        d = json.loads(f.read_text())
        fr, tr, setting = d.get("flop_ratio", {}), d.get("time_ratio", {}), d.get("setting", {})
        md += (
            "From `benchmarks/bench_stica.py` (benchmarks/results/stica.json, not remeasured here): "
            f"{setting.get('timed_backbone', '?')} on {setting.get('timed_device', '?')}.\n"
        )
        gpu_h = {k: f"{v:.1f} ({v / PAPER_STICA_1F['a']:.2f})" for k, v in PAPER_STICA_1F.items()}
        md += _table(
            ["setting", "ours FLOPs ratio", "ours time ratio", "paper GPU-h/epoch (ratio)"],
            [
                ["2 input crops 112² (a)", "1.00", "1.00", gpu_h["a"]],
                ["2 × 112² + 6 × 96² input crops (b)", f"{fr.get('b/a', float('nan')):.2f}",
                 f"{tr.get('b/a', float('nan')):.2f}", gpu_h["b"]],
                ["2 × 112² + feature crops (c)", f"{fr.get('c/a', float('nan')):.2f}",
                 f"{tr.get('c/a', float('nan')):.2f}", gpu_h["c"]],
            ],
        )  # fmt: skip
    else:
        md += "not run: benchmarks/results/stica.json is missing (`python benchmarks/bench_stica.py`).\n"
    st = {k: stat(v) for k, v in layout["stica_1b"].items()}
    md += (
        "\n## STiCA Table 1b: feature-crop settings (head-only STiCA, trunk frozen)\n"
        "Cells: `vcache probe linear` on `vcache stica-embed` embeddings from a head trained by `vcache "
        "train-aggregator stica` on a pairs-mode map store of a frozen, randomly initialised "
        "r2plus1d_18_narrow trunk (64 px: 4 × 4 cells; sizes 7 / 6 / 4 and 4 / 3 / 2 of the paper's map "
        "become "
        "full / full − 1 / half of ours). The paper trains the trunk end to end (HMDB-51 accuracy after 100 "
        "epochs, audio-visual); end-to-end `vcache pretrain stica` runs for Table 3 below.\n"
        + _table(
            ["spatial, temporal feature crops", "ours (linear)", "paper"],
            [[k, fmt(v), f"{PAPER_STICA_1B[k]:.1f}"] for k, v in st.items()],
        )  # fmt: skip
        + "\nPaper column: Table 1b as printed (its first row, no feature crops, is 54.0). The paper's "
        "prose and Table 1e give the spatial-only 1×6² + 2×4² variant 59.9, not 58.4 (docs/tables.md).\n"
    )
    runs = list(layout["stica_1b"].values())
    ok = compare(runs[-1], runs[0])
    return md, [("STiCA 1b (head-only): the paper's best view set above the full-map crop", ok)]


def render(
    b: Budget,
    layout: dict[str, Any],
    marks: dict[str, dict],
    out: Path,
    src_note: str,
    extra: Sequence[Callable[[dict[str, Any]], tuple[str, list[Check]]]] = (),
) -> Path:
    """Write OUT/tables.md, OUT/orderings.json and the Table 8-11 figures; returns the markdown path.
    `extra`: sections of modules below this one (layout -> markdown and checks), after STiCA's."""
    out.mkdir(parents=True, exist_ok=True)
    ns = max(len(b.seeds), len(b.pretrain_seeds))
    seeds_note = (
        f"mean ± std over {ns} runs (pretraining seeds {list(b.pretrain_seeds)} paired with stage-2 seeds "
        f"{list(b.seeds)}; k-NN one run per pretraining seed"
        + (f"; SCALE Tables 8-11: stage-2 seeds {list(b.ablation_seeds)}" if b.ablation_seeds else "")
        + f"); torch threads {b.threads}"
        if ns > 1
        else f"one run (QUICK); torch threads {b.threads}"
    )
    scale = (
        f"Scale: {src_note}; {b.crops} train crops and {b.layout} eval clips per video; aggregators "
        f"{b.agg_epochs} epochs, probes ≤ {b.probe_epochs} epochs; CVRL {b.cvrl_steps} and SVT {b.svt_steps} "
        f"pretraining steps of {b.pre_batch} videos (papers: Kinetics-400 pretraining for "
        "hundreds of epochs, ViT-B / R3D-50 / R(2+1)D-18 backbones at 112-224 px)."
    )
    md = [
        f"# The papers' tables, rebuilt ({b.name} budget)\n\n",
        HONESTY,
        f"\n{scale}\n\nCells: top-1 %, {seeds_note}.\n",
    ]
    checks: list[Check] = []
    part, c = _main_section(b, layout)
    md.append(part)
    checks += c
    part, c, abl = _ablation_sections(b, layout)
    md.append(part)
    checks += c
    md.append("\n## SCALE Table 1: cost of training on the cache vs end to end\n" + _t1(layout["t1"], marks))
    for section in (_cvrl_section, _svt_section):
        part, c = section(layout)
        md.append(part)
        checks += c
    for section in (_stica_section, *extra):
        part, c = section(layout)
        md.append(part)
        checks += c
    md.append(
        "\n## Which orderings reproduced in this run\n"
        "Each ordering: **held** when the 95 % bootstrap interval of the difference in top-1 (resampling "
        "test videos and runs; docs/tables.md) lies above 0, **reversed** when below, **inconclusive** "
        f"when it contains 0. Torch threads: {b.threads}.\n"
    )
    counts = {v: sum(r["verdict"] == v for _, r in checks) for v in (HELD, REVERSED, INCONCLUSIVE)}
    md.append(", ".join(f"{n} {v}" for v, n in counts.items()) + ".\n\n")
    md += [f"- {describe(r)}: {name}\n" for name, r in checks]
    figs = write_figures(out, abl["t8"], abl["t9"], abl["t10"], abl["t11"])
    curves = write_loss_curves(out, layout.get("pretrain", {}), b.pre_batch)
    if curves:
        figs.append(curves)
    md.append("\nFigures: " + ", ".join(f"[{f.name}]({f.name})" for f in figs) + "\n")
    path = out / "tables.md"
    path.write_text("".join(md))
    meta = {"budget": b.name, "threads": b.threads, "pretrain_seeds": list(b.pretrain_seeds)}
    meta["stage2_seeds"] = list(b.seeds)
    meta["ablation_stage2_seeds"] = list(b.ablation_seeds or b.seeds)
    orderings = {"_run": meta, **{n: r for n, r in checks}}
    (out / "orderings.json").write_text(json.dumps(orderings, indent=1, ensure_ascii=False) + "\n")
    (out / "orderings.md").write_text(orderings_table(checks))
    return path


def orderings_table(checks: list[Check]) -> str:
    """The README's orderings table, generated from the run's checks (verdict, Δ and 95 % interval)."""
    rows = []
    for name, r in checks:
        ci = f"{r['diff']:+.1f} [{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}]" if "ci95" in r else ""
        if not ci and r.get("parts"):
            ci = "; ".join(f"{p['diff']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]" for p in r["parts"]
                           if "ci95" in p)  # fmt: skip
        rows.append([name, r["verdict"], ci])
    return _table(["ordering", "verdict", "Δ top-1 [95 % CI]"], rows).lstrip("\n")
