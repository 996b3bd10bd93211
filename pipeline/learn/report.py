"""Collect probe result files (`<name>.json`, written by vcache.learn.probes.write_results) into one table."""

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
