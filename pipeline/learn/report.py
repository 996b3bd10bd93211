"""Collect probe result files (`<run>.json`, written by vcache.learn.probes.write_results) into one table and
one bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def collect(folder: str | Path) -> list[dict[str, Any]]:
    """One row per result JSON under `folder` (recursively), sorted by name."""
    rows = []
    for f in sorted(Path(folder).rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(d, dict) or "metrics" not in d or "name" not in d:
            continue
        rows.append(
            {
                "file": str(f),
                "run": d.get("run", d["name"]),
                "name": d["name"],
                "metrics": d["metrics"],
                "per_family": d.get("per_family") or {},
                "seconds": d.get("seconds"),
                "seed": d.get("seed"),
            }
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    families = sorted({f for r in rows for f in r["per_family"]})
    metrics = [m for m in ("top1", "top5", "R@1", "R@5", "R@20") if any(m in r["metrics"] for r in rows)]
    head = ["probe", "run", "seed", *metrics, *(f"{f} top1" for f in families)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["run"], _fmt(r["seed"])]
        cells += [_fmt(r["metrics"].get(m)) for m in metrics]
        cells += [_fmt((r["per_family"].get(f) or {}).get("top1")) for f in families]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def bar_figure(rows: list[dict[str, Any]], path: str | Path, metric: str = "top1") -> Path:
    """A horizontal bar chart of `metric` per run (PNG), in the table's order, each bar labelled with its
    value; runs without the metric are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in rows if isinstance(r["metrics"].get(metric), int | float)]
    if not have:
        raise ValueError(f"no result has {metric}")
    labels = [f"{r['name']} (s{r['seed']})" for r in have]
    vals = [float(r["metrics"][metric]) for r in have]
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(have) + 1.2))
    ax.barh(range(len(vals)), vals, color="#4c72b0")
    ax.set_yticks(range(len(vals)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    n_test = {r["metrics"].get("n_test") for r in have}
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
