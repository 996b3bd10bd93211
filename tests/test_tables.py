"""`vcache reproduce-tables --quick` end to end through the real CLI, and the step cache of the driver.

Checks that the files exist and that every cell of ours holds a number, not what the numbers are.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vcache.cli.app import app
from vcache.tables import Plan, Step, profile, run_plan

NUMBER = re.compile(r"^-?\d+(\.\d+)?( ± \d+(\.\d+)?)?$")


def _vcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vcache.cli", *args], capture_output=True, text=True, timeout=600
    )


def _tables(md: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (the header row first, the --- row dropped)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_quick_tables_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = _vcache("reproduce-tables", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (out / "tables.md").read_text()
    for name in (
        "Tables 4 / 5",
        "Table 8",
        "Table 9",
        "Table 10",
        "Table 11",
        "Table 1:",
        "CVRL",
        "SVT",
        "1b",
        "STiCA Table 3",
    ):
        assert name in md
    tables = _tables(md)
    assert len(tables) >= 9
    n_cells = 0
    for t in tables:
        head = t[0]
        ours = [i for i, h in enumerate(head) if i > 0 and not h.startswith("paper")]
        for row in t[1:]:
            assert len(row) == len(head), row
            for i in ours:
                assert NUMBER.match(row[i]), f"not a number: {row[i]!r} in column {head[i]!r} of {row}"
                n_cells += 1
    assert n_cells >= 50
    for png in ("scale_table8_losses", "scale_table9_mask", "scale_table10_capacity", "scale_table11_views"):
        data = (out / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    orderings = json.loads((out / "orderings.json").read_text())
    run = orderings.pop("_run")
    assert run["threads"] == 2 and run["pretrain_seeds"] == [0]
    verdicts = {"held", "reversed", "inconclusive"}
    assert orderings and all(r["verdict"] in verdicts for r in orderings.values()), orderings
    assert all("ci95" in r or r.get("parts") for r in orderings.values())
    assert any("BN statistics only" in name for name in orderings)  # the lr-0 control is compared
    assert "STiCA T3: full method above its lr-0 control" in orderings
    assert "| ordering | verdict |" in (out / "orderings.md").read_text()
    curves = json.loads((out / "pretrain_losses.json").read_text())["curves"]
    assert {"r3d_cvrl", "r3d_cvrl_bn", "vit_svt", "stica_t3_r0", "stica_t3_r3"} <= set(curves)
    assert (out / "pretrain_losses.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun finds every step cached and only renders again.
    r = _vcache("reproduce-tables", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\b0 of \d+ steps run", r.stdout), r.stdout[-2000:]
    shutil.rmtree(out / "work")  # ~0.5 GB of stores and checkpoints; pytest keeps its last temp folders


def _synth(out: Path, seed: int) -> list[str]:
    return ["synth", str(out), "--train", "2", "--test", "1", "--task", "appearance", "--frames", "8"] + [
        "--size", "32", "--seed", str(seed), "--overwrite", "-q"
    ]  # fmt: skip


def test_changed_step_reruns_it_and_what_depends_on_it(tmp_path: Path) -> None:
    def plan(seed_a: int, seed_c: int) -> Plan:
        p = Plan()
        p.add(Step("a", _synth(tmp_path / "a", seed_a), [tmp_path / "a" / "classes.json"]))
        p.add(Step("b", _synth(tmp_path / "b", 0), [tmp_path / "b" / "classes.json"], deps=["a"]))
        p.add(Step("c", _synth(tmp_path / "c", seed_c), [tmp_path / "c" / "classes.json"]))
        return p

    said: list[str] = []
    marks = run_plan(plan(0, 0), tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("3 of 3 steps run")
    # each step records its CPU seconds beside its wall time; the profile sums them per kind of step
    assert all(0 < m["cpu_s"] and 0 < m["wall_s"] for m in marks.values()), marks
    prof = profile({"synth/a": marks["a"], "synth/b": marks["b"], "other": marks["c"]})
    assert prof["synth"]["steps"] == 2 and prof["other"]["steps"] == 1
    assert prof["synth"]["cpu_s"] == pytest.approx(marks["a"]["cpu_s"] + marks["b"]["cpu_s"])
    run_plan(plan(0, 0), tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("0 of 3 steps run")
    said.clear()
    # a changed: a and b (downstream) rerun, not c
    run_plan(plan(1, 0), tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("2 of 3 steps run")
    assert [s.split("] ")[1].split()[1] for s in said[:-1]] == ["synth", "synth"]
    (tmp_path / "c" / "classes.json").unlink()  # an output gone: that step reruns
    run_plan(plan(1, 0), tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("1 of 3 steps run")


def test_inprocess_steps_need_the_cli_app(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="typer app"):
        run_plan(Plan(), tmp_path / "work")


def test_a_step_stopped_by_a_signal_stops_the_run_and_is_not_cached(tmp_path: Path) -> None:
    """A command that stopped gracefully (exit 130 / 143, e.g. `pretrain` on Ctrl-C) ends the whole run
    with KeyboardInterrupt instead of a failure, and its step is redone by the next run."""
    out = tmp_path / "d"
    plan = Plan()
    plan.add(Step("synth", _synth(out, 0), [out / "classes.json"]))
    plan.add(Step("second", ["synth", "--help"], [tmp_path / "never"], ["synth"]))
    calls = []

    def stopping_app(argv, **kw):  # the real app for synth, a graceful stop for the second step
        calls.append(argv[0] if argv[1:] != ["--help"] else "second")
        return 130 if calls[-1] == "second" else app(argv, **kw)

    with pytest.raises(KeyboardInterrupt, match="second was stopped"):
        run_plan(plan, tmp_path / "work", echo=lambda _: None, app=stopping_app)
    assert (tmp_path / "work" / ".steps" / "synth.json").exists()
    assert not (tmp_path / "work" / ".steps" / "second.json").exists()


def test_ctrl_c_inside_an_inprocess_step_stops_the_run_and_is_not_cached(tmp_path: Path) -> None:
    """A real SIGINT while an in-process step without a handler of its own runs (synth here): typer turns
    the KeyboardInterrupt into exit 130, and the run ends as a stop naming the step (the CLI's one line and
    exit 130), not as a failure; the step is not marked done, so the next run redoes it from nothing."""
    import os
    import signal
    import threading

    out = tmp_path / "d"
    plan = Plan()
    many = _synth(out, 0)
    many[many.index("--train") + 1] = "400"  # a few seconds: long enough to be interrupted
    plan.add(Step("synth", many, [out / "classes.json"]))
    log = tmp_path / "work" / "logs" / "synth.log"

    def interrupt() -> None:  # the step has started once its log exists (and its first video is written)
        while not (log.exists() and any((out / "videos").rglob("*.mp4"))):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="step synth was stopped \\(exit 130\\)"):
        run_plan(plan, tmp_path / "work", echo=lambda _: None, app=app)
    assert not (tmp_path / "work" / ".steps" / "synth.json").exists()


def test_a_failed_step_raises_step_failed_naming_it(tmp_path: Path) -> None:
    """A non-zero exit other than a graceful stop is StepFailed (the CLI prints it as one error); other
    exceptions from inside a step keep their traceback."""
    from vcache.tables.runner import StepFailed

    plan = Plan()
    plan.add(Step("broken", ["synth", "--help"], [tmp_path / "never"]))
    with pytest.raises(StepFailed, match="step broken failed \\(exit 1\\)"):
        run_plan(plan, tmp_path / "work", echo=lambda _: None, app=lambda argv, **kw: 1)
    assert not (tmp_path / "work" / ".steps" / "broken.json").exists()


def test_stores_on_object_storage(s3, tmp_path: Path) -> None:
    """`reproduce-tables --stores s3://...` in tiny form: the QUICK plan puts every store under the URL; the
    steps one k-NN cell needs (synth, two extractions, the probe) run against the local S3 server, and a
    rerun finds them cached (a store URL counts as present once its root exists)."""
    from vcache.store.location import location
    from vcache.tables import QUICK, build
    from vcache.tables.runner import output_exists, remove_output

    url = "s3://vc-test/tables"
    bl, layout = build(QUICK, tmp_path / "work", stores=url)
    outs = [str(o) for s in bl.plan.steps.values() for o in s.outputs if str(o).endswith(".zarr")]
    assert outs and all(o.startswith(f"{url}/") for o in outs)
    (cell,) = layout["main"][("r3d_random", "knn")]
    probe = next(s for s in bl.plan.steps.values() if cell in s.outputs)
    sub = Plan()
    for name in [*bl.data_deps, *probe.deps, probe.name]:
        sub.add(bl.plan.steps[name])
    said: list[str] = []
    run_plan(sub, tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("4 of 4 steps run"), said
    (res,) = cell.rglob("*.json")
    assert f"{url}/r3d_random_p0/test_eval.zarr" in res.read_text()
    run_plan(sub, tmp_path / "work", echo=said.append, app=app)
    assert said[-1].startswith("0 of 4 steps run")
    store = f"{url}/r3d_random_p0/test_eval.zarr"
    assert output_exists(store)
    remove_output(store)  # what a changed step does to its old store first
    assert not output_exists(store) and not location(store).list()
