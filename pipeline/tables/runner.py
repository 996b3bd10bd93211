"""The step cache of `reproduce-tables`: a Plan of Steps (each one `vcache ...` command line) and run_plan.

A step is skipped when its marker in ``WORK/.steps/`` holds the same key; the key hashes the step's argv
and the keys of the steps it reads from, so changing one option reruns that step and everything
downstream, nothing else. Steps run in this process through the typer app (the same parser and commands
as the console script, without paying the torch import per step) or, with ``executor="subprocess"``, one
process each. Steps marked ``measure`` (SCALE Table 1) always run as subprocesses: their peak resident
memory comes from ``os.wait4``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcache.store.location import Remote, location


@dataclass
class Step:
    """One `vcache` invocation; `outputs` are removed before a rerun so that a changed step starts clean."""

    name: str
    argv: list[str]
    outputs: list[Path | str]  # files, folders, or store URLs
    deps: list[str] = field(default_factory=list)
    measure: bool = False  # always a subprocess; wall time and peak RSS recorded (Table 1)


class Plan:
    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def add(self, step: Step) -> str:
        """Add a step (a step of the same name is shared: tables that need the same run get one run)."""
        old = self.steps.get(step.name)
        if old is not None and old.argv != step.argv:
            raise ValueError(f"two different steps named {step.name!r}")
        self.steps.setdefault(step.name, step)
        return step.name


def _run_inprocess(app: Callable[..., Any], argv: list[str], log: Path) -> int:
    """Run the `vcache` typer app on ARGV in this process (its output goes to LOG)."""
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        rc = app(argv, standalone_mode=False, prog_name="vcache")
    return rc if isinstance(rc, int) else 0


# Subprocess steps run as two processes. The inner one imports the CLI, notes its resident memory, runs the
# command and writes the command's own wall time (interpreter and import start-up excluded). The outer one is
# a fresh small interpreter that waits for it with wait4: a child forked straight from this (large) process
# would inherit its RSS high-water mark through fork + exec and report it as its own peak.
_INNER = (
    "import json, os, sys, time\n"
    "from vcache.cli.app import app\n"
    "import torch  # noqa: the baseline below includes torch, which every command loads\n"
    "base = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
    "t = time.perf_counter()\n"
    "rc = app(sys.argv[2:], standalone_mode=False, prog_name='vcache')\n"
    "json.dump({'seconds': time.perf_counter() - t, 'base_rss_mb': base}, open(sys.argv[1], 'w'))\n"
    "sys.exit(rc if isinstance(rc, int) else 0)\n"
)
_OUTER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, st, ru = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def _run_subprocess(argv: list[str], log: Path) -> tuple[int, dict[str, float]]:
    """Run the `vcache` command ARGV in its own process; returns (exit code, measurements): the command's
    seconds, the peak RSS of its process and its RSS after the imports (both MB; Linux only)."""
    rss_file, timing = log.with_suffix(".maxrss"), log.with_suffix(".timing")
    rss_file.unlink(missing_ok=True)
    timing.unlink(missing_ok=True)
    inner = [sys.executable, "-c", _INNER, str(timing), *argv]
    with open(log, "w") as fh:
        rc = subprocess.run(
            [sys.executable, "-c", _OUTER, str(rss_file), *inner], stdout=fh, stderr=subprocess.STDOUT
        ).returncode
    got: dict[str, float] = json.loads(timing.read_text()) if timing.exists() else {}
    if rss_file.exists():
        got["peak_rss_mb"] = float(rss_file.read_text()) / 1024.0  # Linux: ru_maxrss in KB
    return rc, got


def output_exists(p: Path | str) -> bool:
    """A local output exists; a store URL exists once its root `zarr.json` does."""
    loc = location(p)
    return loc.exists() if isinstance(loc, Path) else loc.exists("zarr.json")


def remove_output(p: Path | str) -> None:
    loc = location(p)
    if isinstance(loc, Remote):
        loc.delete_all()
    elif loc.is_dir():
        shutil.rmtree(loc, ignore_errors=True)
    else:
        loc.unlink(missing_ok=True)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children: unlike wall time, this
    hardly moves with the load other jobs put on the machine, so the step profile stays comparable."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def profile(marks: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Steps, wall seconds and CPU seconds per kind of step (the name's first part: extract, probe, ...)."""
    out: dict[str, dict[str, float]] = {}
    for name, m in marks.items():
        row = out.setdefault(name.split("/")[0], {"steps": 0, "wall_s": 0.0, "cpu_s": 0.0})
        row["steps"] += 1
        row["wall_s"] += m.get("wall_s", m.get("seconds", 0.0))
        row["cpu_s"] += m.get("cpu_s", 0.0)
    return out


class StepFailed(RuntimeError):
    """A step's command exited non-zero (not a graceful stop); the message names it and its log's tail."""


def run_plan(
    plan: Plan,
    work: Path,
    executor: str = "inprocess",
    echo: Callable[[str], None] = print,
    app: Callable[..., Any] | None = None,
) -> dict[str, dict]:
    """Run every step whose key changed; return each step's marker (key, argv, seconds, peak RSS).

    In-process steps run ``app``, the `vcache` typer app (`vcache.cli.app.app`), handed in by the caller so
    that this library package never imports the command line that imports it."""
    if executor == "inprocess" and app is None:
        raise ValueError("in-process steps need the vcache typer app: pass app=, or executor='subprocess'")
    marks = work / ".steps"
    logs = work / "logs"
    marks.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    done: dict[str, dict] = {}
    ran = 0
    for i, step in enumerate(plan.steps.values(), 1):
        h = hashlib.sha1(json.dumps([step.argv, [keys[d] for d in step.deps]]).encode())
        keys[step.name] = key = h.hexdigest()[:16]
        mark = marks / f"{step.name.replace('/', '__')}.json"
        if mark.exists():
            old = json.loads(mark.read_text())
            if old.get("key") == key and all(map(output_exists, step.outputs)):
                done[step.name] = old
                continue
        for p in step.outputs:  # a changed step starts from nothing (resumable commands would mix runs)
            remove_output(p)
        echo(f"[{i}/{len(plan.steps)}] vcache {' '.join(step.argv)}")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        measured: dict[str, float] = {}
        log = logs / f"{step.name.replace('/', '__')}.log"
        if step.measure or executor == "subprocess":
            rc, measured = _run_subprocess(step.argv, log)
        else:
            rc = _run_inprocess(app, step.argv, log)
        secs, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        if rc in (130, 143):  # SIGINT / SIGTERM stopped the step (typer: Ctrl-C is exit 130): stop the run
            raise KeyboardInterrupt(f"step {step.name} was stopped (exit {rc}); {len(done)} steps are cached")
        if rc != 0:
            tail = (
                "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                if log.exists()
                else ""
            )
            raise StepFailed(
                f"step {step.name} failed (exit {rc}): vcache {' '.join(step.argv)}\n{log}:\n{tail}"
            )

        done[step.name] = {"key": key, "argv": step.argv, "wall_s": secs, "seconds": secs, "cpu_s": cpu}
        done[step.name].update(measured)
        mark.write_text(json.dumps(done[step.name], indent=1))
        ran += 1
    echo(f"{ran} of {len(plan.steps)} steps run, {len(plan.steps) - ran} cached")
    return done


def at(base: str | Path, *parts: str) -> Path | str:
    """`base / parts` for a folder, `base/parts` for a URL prefix (pathlib would fold its `//`)."""
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([str(base).rstrip("/"), *parts])
