"""Collect probe result files (`<run>.json`, written by vcache.learn.probes.write_results) into one table and
one bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcache.store.compat import weights_label

METRICS = ("top1", "mean_class_top1", "top5", "R@1", "R@5", "R@20")
_NOT_OPTIONS = {"seed", "device", "probe"}


def collect(folder: str | Path) -> list[dict[str, Any]]:
    """One row per result JSON under `folder` (recursively), sorted by file name."""
    rows = []
    for f in sorted(Path(folder).rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(d, dict) or "metrics" not in d or "name" not in d:
            continue
        prov = d.get("provenance") or {}
        agg = (prov.get("aggregator") or {}).get("path")
        rows.append(
            {
                "file": str(f),
                "run": d.get("run", d["name"]),
                "name": d["name"],
                "metrics": d["metrics"],
                "per_family": d.get("per_family") or {},
                "seconds": d.get("seconds"),
                "seed": d.get("seed"),
                "backbone": weights_label((prov.get("train") or {}).get("backbone")),
                "stores": f"{_short((prov.get('train') or {}).get('path'))} -> "
                f"{_short((prov.get('test') or {}).get('path'))}",
                "options": {
                    **{k: v for k, v in (d.get("settings") or {}).items() if k not in _NOT_OPTIONS},
                    "aggregator": _short(agg) if agg else None,
                },
            }
        )
    return rows


def _short(path: str | None) -> str:
    return "?" if not path else Path(path).name


def group(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in their seed become one group; its metrics are (mean, std, n) over the seeds.
    Each group keeps the options that differ between groups (`differs`): a table shows what each compares."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = json.dumps([r["name"], r["backbone"], r["stores"], r["options"]], sort_keys=True, default=str)
        g = groups.setdefault(key, {**r, "seeds": [], "runs": []})
        g["seeds"].append(r["seed"])
        g["runs"].append(r)
    keys = sorted({k for g in groups.values() for k in g["options"]})
    varying = [
        k for k in keys if len({json.dumps(g["options"].get(k), default=str) for g in groups.values()}) > 1
    ]
    out = []
    for g in groups.values():
        stats = {}
        for m in METRICS:
            vals = [float(r["metrics"][m]) for r in g["runs"] if isinstance(r["metrics"].get(m), int | float)]
            if vals:
                mean = sum(vals) / len(vals)
                sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
                stats[m] = (mean, sd, len(vals))
        fams = {}
        for f in {f for r in g["runs"] for f in r["per_family"]}:
            vals = [float(r["per_family"][f]["top1"]) for r in g["runs"] if f in r["per_family"]]
            fams[f] = sum(vals) / len(vals)
        # an option a probe does not use (None: e.g. no aggregator, the default epochs) is not shown
        differs = ", ".join(f"{k}={g['options'][k]}" for k in varying if g["options"].get(k) is not None)
        out.append({**g, "stats": stats, "family_means": fams, "differs": differs})
    return out


def common_fields(groups: list[dict[str, Any]]) -> dict[str, str]:
    """Backbone, stores and seeds when every line shares them: said once above the table, not per line."""
    cells = {"backbone": lambda g: g["backbone"], "stores": lambda g: g["stores"], "seeds": _seeds}
    return {k: f(groups[0]) for k, f in cells.items() if len({f(g) for g in groups}) == 1}


def _seeds(g: dict[str, Any]) -> str:
    return ",".join(str(s) for s in sorted(g["seeds"]))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per group of seeds: probe, backbone and weights, train -> test store, the options that differ
    between lines, the seeds, then mean ± std of each metric (a single seed: its value). Backbone, stores and
    seeds shared by every line are said once, above the table."""
    groups = group(rows)
    common = common_fields(groups)
    families = sorted({f for g in groups for f in g["family_means"]})
    metrics = [m for m in METRICS if any(m in g["stats"] for g in groups)]
    per_line = [k for k in ("backbone", "stores") if k not in common]
    per_line += ["options"] if any(g["differs"] for g in groups) else []
    per_line += ["seeds"] if "seeds" not in common else []
    head = ["probe", *per_line, *metrics, *(f"{f} top1" for f in families)]
    out = [f"{k}: {v}  " for k, v in common.items()] + ([""] if common else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        fields = {
            "backbone": g["backbone"],
            "stores": g["stores"],
            "options": g["differs"],
            "seeds": _seeds(g),
        }
        cells = [g["name"], *(fields[k] for k in per_line)]
        cells += [_stat(g["stats"].get(m)) for m in metrics]
        cells += [_fmt(g["family_means"].get(f)) for f in families]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(out + lines) + "\n"


def _stat(s: tuple[float, float, int] | None) -> str:
    if s is None:
        return ""
    return f"{s[0]:.3f} ± {s[1]:.3f}" if s[2] > 1 else f"{s[0]:.3f}"


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def bar_figure(rows: list[dict[str, Any]], path: str | Path, metric: str = "top1") -> Path:
    """A horizontal bar chart of `metric` per group of seeds (mean, std as error bar; PNG), in the table's
    order, each bar labelled with its value; groups without the metric are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [g for g in group(rows) if metric in g["stats"]]
    if not have:
        raise ValueError(f"no result has {metric}")
    labels = [g["name"] + (f" ({g['differs']})" if g["differs"] else "") for g in have]
    vals = [g["stats"][metric][0] for g in have]
    errs = [g["stats"][metric][1] for g in have]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(have) + 1.2))
    ax.barh(range(len(vals)), vals, xerr=errs, color="#4c72b0")
    ax.set_yticks(range(len(vals)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    n_test = {r["metrics"].get("n_test") for g in have for r in g["runs"]}
    ax.set_xlabel(f"{metric} on {n_test.pop() if len(n_test) == 1 else 'the'} test videos")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def confusion_figure(predictions: list[dict[str, Any]], class_names: list[str], path: str | Path) -> Path:
    """The confusion matrix (rows: true class, columns: predicted; each row normalised to 1) of a probe's
    predictions over its labelled test videos, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(int(r["label"]), int(r["pred"])) for r in predictions if int(r["label"]) >= 0]
    if not rows:
        raise ValueError("no labelled test video to draw a confusion matrix of")
    n = max(len(class_names), 1 + max(max(a, b) for a, b in rows))
    m = np.zeros((n, n))
    for a, b in rows:
        m[a, b] += 1
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(12.0, 2.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
