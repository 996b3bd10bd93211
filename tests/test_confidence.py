"""Bootstrap verdicts of the tables' orderings (issue 14), on constructed predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vcache.tables.confidence import (
    HELD,
    INCONCLUSIVE,
    NOT_MEASURED,
    REVERSED,
    bootstrap_diff,
    combine,
    compare,
    not_worse,
)

N = 300


def run(folder: Path, correct: np.ndarray, seed: int) -> Path:
    """A probe result folder as `vcache probe` writes it: <run>.json and <run>_predictions.csv."""
    folder.mkdir(parents=True)
    labels = np.arange(len(correct)) % 5
    preds = np.where(correct, labels, (labels + 1) % 5)
    (folder / f"linear-s{seed}-abc.json").write_text(json.dumps({"metrics": {"top1": float(correct.mean())}}))
    with (folder / f"linear-s{seed}-abc_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "pred"])
        w.writerows(
            [f"v{i:03d}.mp4", int(lab), int(p)] for i, (lab, p) in enumerate(zip(labels, preds, strict=True))
        )
    return folder


def cell(tmp: Path, name: str, acc: float, seeds: int = 3) -> list[Path]:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    return [run(tmp / f"{name}{s}", rng.random(N) < acc, s) for s in range(seeds)]


def test_clear_win_held_equal_inconclusive_clear_loss_reversed(tmp_path: Path) -> None:
    hi, lo, lo2 = cell(tmp_path, "hi", 0.8), cell(tmp_path, "lo", 0.5), cell(tmp_path, "lo_again", 0.5)
    win = compare(hi, lo)
    assert win["verdict"] == HELD and win["ci95"][0] > 0 and win["videos"] == N and win["runs"] == [3, 3]
    assert compare(lo, lo2)["verdict"] == INCONCLUSIVE
    assert compare(lo, hi)["verdict"] == REVERSED
    # The same runs on both sides: difference exactly 0, interval [0, 0]: inconclusive, never "yes".
    same = compare(lo, lo)
    assert same["verdict"] == INCONCLUSIVE and same["diff"] == 0
    assert compare(hi, [tmp_path / "missing"])["verdict"] == NOT_MEASURED
    assert not_worse(lo, lo2)["verdict"] == HELD and not_worse(lo, hi)["verdict"] == REVERSED
    assert combine([win, compare(lo, lo2)])["verdict"] == INCONCLUSIVE
    assert combine([win, compare(lo, hi)])["verdict"] == REVERSED


def test_a_small_gap_on_few_videos_is_inconclusive_and_on_many_held() -> None:
    """Two points of top-1 are noise on 60 videos and one run, and clear on 30k videos."""
    rng = np.random.default_rng(1)
    for n, expected in ((60, INCONCLUSIVE), (30000, HELD)):
        a = (rng.random((1, n)) < 0.62).astype(float)
        b = (rng.random((1, n)) < 0.60).astype(float)
        diff, lo, hi = bootstrap_diff(a, b)
        assert (HELD if lo > 0 else REVERSED if hi < 0 else INCONCLUSIVE) == expected, (n, diff, lo, hi)


def test_seeds_are_resampled_too() -> None:
    """The same videos scored by runs that disagree widely: the run-to-run spread widens the interval."""
    rng = np.random.default_rng(2)
    steady = (rng.random((3, 300)) < 0.6).astype(float)
    base = (rng.random((1, 300)) < 0.55).astype(float)
    wild = np.concatenate([(rng.random((1, 300)) < p) for p in (0.35, 0.55, 0.75)]).astype(float)
    _, lo1, hi1 = bootstrap_diff(steady, np.repeat(base, 3, axis=0))
    _, lo2, hi2 = bootstrap_diff(steady, wild)
    assert hi2 - lo2 > 1.5 * (hi1 - lo1)


def test_readme_table_is_generated_from_the_checks(tmp_path: Path) -> None:
    from vcache.tables import update_readme
    from vcache.tables.markdown import orderings_table

    hi, lo = cell(tmp_path, "hi", 0.8, 1), cell(tmp_path, "lo", 0.5, 1)
    table = orderings_table([("A above B", compare(hi, lo)), ("B above A", compare(lo, hi))])
    assert "| A above B | held | +" in table and "| B above A | reversed | -" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- orderings:begin -->\nold\n<!-- orderings:end -->\nrest\n")
    update_readme(readme, table)
    text = readme.read_text()
    assert (
        "old" not in text
        and "| A above B | held |" in text
        and text.endswith("<!-- orderings:end -->\nrest\n")
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="orderings"):
        update_readme(readme, table)
