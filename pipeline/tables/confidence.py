"""Orderings judged with confidence: 95 % bootstrap intervals over test videos and seeds (issue 14).

Why: on a few hundred test videos one video moves top-1 by a fraction of a point, and runs that differ only
in float rounding (thread count) move it by several; a mean that is higher is not an ordering that held.
Each probe run writes ``<run>_predictions.csv`` (path, label, pred, ...); a cell is the list of its runs
(stage-2 seeds, pretraining seeds). For an ordering "A above B" we bootstrap the difference of mean top-1:

- each resample draws the test videos with replacement (the same draw for A and B: both are scored on
  the same videos, so the comparison is paired), and the runs of A and the runs of B with replacement
  (independently: run i of A and run i of B share no randomness that pairs them);
- the difference is mean over (drawn runs, drawn videos) of A's correct minus B's;
- ``held`` when the 95 % percentile interval lies above 0, ``reversed`` when below, otherwise
  ``inconclusive`` (a difference inside the interval is never "yes").

Choices (the issue fixes the level and what is resampled; the rest is ours): percentile intervals, 2000
resamples, a fixed generator seed so that a re-render gives the same verdict.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HELD, REVERSED, INCONCLUSIVE, NOT_MEASURED = "held", "reversed", "inconclusive", "not measured"
RESAMPLES = 2000
LEVEL = 0.95


def newest_predictions(folder: Path) -> Path | None:
    """The predictions CSV of the newest probe result JSON in a step's folder (the file `_top1` reads)."""
    for f in sorted(Path(folder).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        d = json.loads(f.read_text())
        if isinstance(d, dict) and "top1" in (d.get("metrics") or {}):
            csv_path = f.with_name(f.stem + "_predictions.csv")
            return csv_path if csv_path.exists() else None
    return None


def correct_matrix(folders: Sequence[Path]) -> tuple[list[str], np.ndarray] | None:
    """(video paths, (runs, videos) 0/1 correct) over the runs that wrote predictions; None if none did.

    Videos are the intersection over the runs, sorted by path, so that two cells line up video by video.
    Rows with a negative label (unlabelled test videos) are left out."""
    runs: list[dict[str, bool]] = []
    for folder in folders:
        path = newest_predictions(folder)
        if path is None:
            continue
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["label"]) >= 0]
        runs.append({r["path"]: int(r["label"]) == int(r["pred"]) for r in rows})
    if not runs:
        return None
    videos = sorted(set.intersection(*(set(r) for r in runs)))
    return videos, np.array([[r[v] for v in videos] for r in runs], dtype=np.float64)


def bootstrap_diff(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """(difference of mean top-1 in %, lower, upper) of A minus B; a, b: (runs, videos) 0/1, same videos."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B must be scored on the same videos: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    # Per-run, per-video correctness summed through count weights: resampling videos with replacement is
    # a multinomial weight vector; resampling runs is an index draw.
    vids = rng.integers(0, n, size=(resamples, n))
    ra = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    rb = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))
    diffs = np.empty(resamples)
    for i in range(resamples):
        diffs[i] = a[ra[i]][:, vids[i]].mean() - b[rb[i]][:, vids[i]].mean()
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return 100 * float(a.mean() - b.mean()), 100 * float(lo), 100 * float(hi)


def verdict_of(lo: float, hi: float) -> str:
    return HELD if lo > 0 else REVERSED if hi < 0 else INCONCLUSIVE


def compare(a: Sequence[Path], b: Sequence[Path], seed: int = 0) -> dict:
    """The verdict of "A above B" from the two cells' result folders, with the interval (top-1 points)."""
    ma, mb = correct_matrix(a), correct_matrix(b)
    if ma is None or mb is None:
        return {"verdict": NOT_MEASURED}
    common = sorted(set(ma[0]) & set(mb[0]))
    if not common:
        return {"verdict": NOT_MEASURED, "note": "no test video in common"}
    ia = [ma[0].index(v) for v in common]
    ib = [mb[0].index(v) for v in common]
    diff, lo, hi = bootstrap_diff(ma[1][:, ia], mb[1][:, ib], seed=seed)
    return {
        "verdict": verdict_of(lo, hi),
        "diff": round(diff, 2),
        "ci95": [round(lo, 2), round(hi, 2)],
        "videos": len(common),
        "runs": [int(ma[1].shape[0]), int(mb[1].shape[0])],
    }


def combine(results: Sequence[dict]) -> dict:
    """All of several orderings: held when every one held, reversed when any reversed, else inconclusive."""
    vs = [r["verdict"] for r in results]
    if not vs or NOT_MEASURED in vs:
        v = NOT_MEASURED
    elif REVERSED in vs:
        v = REVERSED
    elif all(x == HELD for x in vs):
        v = HELD
    else:
        v = INCONCLUSIVE
    return {"verdict": v, "parts": list(results)}


def not_worse(a: Sequence[Path], b: Sequence[Path], seed: int = 0) -> dict:
    """ "A within the interval of B" (B the best): held unless B is above A with confidence (reversed)."""
    r = compare(a, b, seed)
    if r["verdict"] in (INCONCLUSIVE, HELD):
        r["verdict"] = HELD
    return r


def describe(r: dict) -> str:
    """One line: verdict, difference and interval in top-1 points."""
    if "ci95" not in r:
        parts = [p for p in r.get("parts", []) if "ci95" in p]
        inner = "; ".join(describe(p) for p in parts)
        return r["verdict"] + (f" ({inner})" if inner else "")
    lo, hi = r["ci95"]
    return f"{r['verdict']} (Δ {r['diff']:+.1f}, 95 % CI [{lo:+.1f}, {hi:+.1f}], {r['videos']} videos)"
