"""`make reproduce-tables`: the papers' tables rebuilt at a scale a 2-core machine runs, beside the papers.

What and why: a *plan* of steps, each one real `vcache ...` command line (synth -> pretrain -> extract ->
train-aggregator -> probe), run in order and cached. A step is skipped when its marker in
``WORK/.steps/`` holds the same key; the key hashes the step's argv and the keys of the steps it reads
from, so changing one option reruns that step and everything downstream, nothing else. Then the probe
result JSONs are gathered and ``OUT/tables.md`` plus PNG figures (SCALE Tables 8-11) are written, each
table with the paper's numbers beside ours, the probe that fills its cells and a line on the scale.

Steps run in this process through the typer app (the same parser and commands as the console script,
without paying the torch import per step) or, with ``executor="subprocess"``, one process each. The
Table 1 measurements always run as subprocesses: their peak resident memory comes from ``os.wait4``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------------
# Budgets. The paper sizes cannot run here; these are our choices, documented in docs/tables.md.


@dataclass(frozen=True)
class Budget:
    """Sizes of one run. None for clip_frames / input_size keeps each backbone's own default."""

    name: str
    train: int  # synthetic train videos
    test: int
    task: str
    frames: int
    size: int
    clip_frames: int | None
    input_size: int | None
    crops: int  # train-mode crops per video (SCALE: 16)
    layout: str  # eval-mode clips x spatial crops (SCALE: 5x3)
    cvrl_steps: int
    svt_steps: int
    pre_batch: int
    agg_epochs: int
    probe_epochs: int
    probe_grid: bool  # True: the probes' own lr / wd selection on a validation part; False: one fixed value
    seeds: tuple[int, ...]
    masks: tuple[float, ...]
    capacities: tuple[tuple[int, int], ...]  # (width, depth)
    views: tuple[int, ...]  # K per set (two sets)
    batch_fracs: tuple[float, ...]  # Table 11 batch sizes as fractions of the train videos
    default_batch_frac: float  # the batch of every other aggregator, same unit
    columns: tuple[str, ...]
    t1_steps: int  # optimiser steps of each Table 1 measurement
    stica_frames: int  # clip length of the STiCA map stores (R(2+1)D narrow: 8 frames per map step)
    stica_epochs: int
    stica_width: int  # head width (paper: 512)
    stica_pairs: int  # pairs of large crops per video in the pairs-mode map store
    stica_layout: str  # eval layout of the map stores that are embedded and probed


QUICK = Budget(
    name="quick",
    train=10,
    test=5,
    task="appearance",
    frames=24,
    size=32,
    clip_frames=8,
    input_size=32,
    crops=8,
    layout="2x3",
    cvrl_steps=1,
    svt_steps=1,
    pre_batch=4,
    agg_epochs=1,
    probe_epochs=1,
    probe_grid=False,
    seeds=(0,),
    masks=(0.25, 0.45),
    capacities=((64, 1), (256, 2)),
    views=(2, 4),
    batch_fracs=(0.5, 1.0),
    default_batch_frac=1.0,
    columns=("r3d_random", "r3d_cvrl", "vit_svt"),
    t1_steps=3,
    stica_frames=24,
    stica_epochs=1,
    stica_width=64,
    stica_pairs=2,
    stica_layout="1x1",
)

# The default budget. Its whole run was not timed end to end yet; docs/tables.md gives the estimate from
# unit costs measured on this 2-core machine (about 50 minutes when the machine is quiet).
FULL = Budget(
    name="default",
    train=120,
    test=60,
    task="order",  # the task where order-aware aggregation (SCALE) can beat per-clip probes
    frames=64,
    size=64,
    clip_frames=None,
    input_size=None,
    crops=16,
    layout="5x1",  # SCALE: 5x3; the 3 spatial crops of a 64-px frame add little and cost 3x the extraction
    cvrl_steps=16,
    svt_steps=6,
    pre_batch=8,
    agg_epochs=20,
    probe_epochs=30,
    probe_grid=True,
    seeds=(0, 1, 2),
    masks=(0.15, 0.25, 0.35, 0.45),
    capacities=((64, 1), (256, 1), (256, 2), (512, 2)),
    views=(4, 8),
    batch_fracs=(0.25, 1.0),
    default_batch_frac=0.25,
    columns=("r3d_random", "r3d_cvrl", "vit_random", "vit_svt"),
    t1_steps=20,
    stica_frames=32,
    stica_epochs=20,
    stica_width=128,
    stica_pairs=4,
    stica_layout="5x1",
)


@dataclass(frozen=True)
class Column:
    """One backbone column of Tables 4/5: an architecture, and the pretraining that made its weights."""

    key: str
    title: str
    backbone: str
    method: str | None  # None: random init; "cvrl" / "svt": weights from `vcache pretrain`
    pretrain_args: tuple[str, ...] = ()


COLUMNS = {
    # The same architecture at random init beside each pretrained one (issue 8).
    "r3d_random": Column("r3d_random", "R3D (cvrl_r3d_narrow), random init", "cvrl_r3d_narrow", None),
    "r3d_cvrl": Column("r3d_cvrl", "R3D (cvrl_r3d_narrow), CVRL", "cvrl_r3d_narrow", "cvrl"),
    "vit_random": Column("vit_random", "ViT (vit_video_tiny), random init", "vit_video_tiny", None),
    "vit_svt": Column("vit_svt", "ViT (vit_video_tiny), SVT", "vit_video_tiny", "svt"),
    "r2p1d_random": Column("r2p1d_random", "R(2+1)D (narrow), random init", "r2plus1d_18_narrow", None),
    # CVRL / SVT ablation variants: pretrained, extracted, probed with k-NN and linear only.
    "cvrl_uniform": Column(
        "cvrl_uniform", "CVRL uniform", "cvrl_r3d_narrow", "cvrl", ("--interval-dist", "uniform")
    ),
    "cvrl_increasing": Column(
        "cvrl_increasing", "CVRL increasing", "cvrl_r3d_narrow", "cvrl", ("--interval-dist", "increasing")
    ),
    "cvrl_perframe": Column(
        "cvrl_perframe", "CVRL per-frame aug", "cvrl_r3d_narrow", "cvrl", ("--per-frame-aug",)
    ),
    "svt_nomotion": Column("svt_nomotion", "SVT l->g only", "vit_video_tiny", "svt", ("--no-motion",)),
    "svt_nocross": Column("svt_nocross", "SVT g->g only", "vit_video_tiny", "svt", ("--no-cross-view",)),
}
ABLATION_COLUMN = "r3d_cvrl"  # SCALE Tables 8-11 run on the CVRL-pretrained R3D (paper: SVT and rho-BYOL)


@dataclass(frozen=True)
class AggCfg:
    """One SCALE aggregator configuration (the ablated axes of Tables 8-11)."""

    k: int
    mask: float = 0.25
    width: int = 256
    depth: int = 2
    batch: int = 512
    mcm: bool = True
    set: bool = True

    @property
    def tag(self) -> str:
        losses = ("" if self.mcm else "_nomcm") + ("" if self.set else "_noset")
        return f"k{self.k}_m{self.mask:g}_w{self.width}_d{self.depth}_b{self.batch}{losses}"


# ----------------------------------------------------------------------------------------------------
# The plan and its cached execution.


@dataclass
class Step:
    """One `vcache` invocation; `outputs` are removed before a rerun so that a changed step starts clean."""

    name: str
    argv: list[str]
    outputs: list[Path]
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


def _run_inprocess(argv: list[str], log: Path) -> int:
    """Run the `vcache` typer app on ARGV in this process (its output goes to LOG)."""
    from vcache.cli.app import app

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


def run_plan(
    plan: Plan, work: Path, executor: str = "inprocess", echo: Callable[[str], None] = print
) -> dict[str, dict]:
    """Run every step whose key changed; return each step's marker (key, argv, seconds, peak RSS)."""
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
            if old.get("key") == key and all(p.exists() for p in step.outputs):
                done[step.name] = old
                continue
        for p in step.outputs:  # a changed step starts from nothing (resumable commands would mix runs)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        echo(f"[{i}/{len(plan.steps)}] vcache {' '.join(step.argv)}")
        t0 = time.perf_counter()
        measured: dict[str, float] = {}
        log = logs / f"{step.name.replace('/', '__')}.log"
        if step.measure or executor == "subprocess":
            rc, measured = _run_subprocess(step.argv, log)
        else:
            rc = _run_inprocess(step.argv, log)
        secs = time.perf_counter() - t0
        if rc != 0:
            tail = (
                "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                if log.exists()
                else ""
            )
            raise RuntimeError(
                f"step {step.name} failed (exit {rc}): vcache {' '.join(step.argv)}\n{log}:\n{tail}"
            )

        done[step.name] = {"key": key, "argv": step.argv, "wall_s": secs, "seconds": secs, **measured}
        mark.write_text(json.dumps(done[step.name], indent=1))
        ran += 1
    echo(f"{ran} of {len(plan.steps)} steps run, {len(plan.steps) - ran} cached")
    return done


# ----------------------------------------------------------------------------------------------------
# Building the plan.


@dataclass(frozen=True)
class Source:
    """Where the videos come from: generated (DATA unset) or a local UCF-101 / HMDB-51 copy."""

    videos: Path
    annotations: Path
    fmt: str = "ucf101"


PROBES_MAIN = ("knn", "scale_knn", "linear", "scale_linear", "mlp", "transformer", "scale_ft")
PROBE_CMD = {
    "knn": "knn",
    "scale_knn": "knn",
    "linear": "linear",
    "scale_linear": "linear",
    "mlp": "mlp",
    "transformer": "transformer",
    "scale_ft": "transformer",
}


class Builder:
    """Adds the steps of each table to a Plan and remembers where each result JSON will be."""

    def __init__(self, b: Budget, work: Path, src: Source | None) -> None:
        self.b, self.work, self.plan = b, work, Plan()
        if src is None:
            data = work / "data"
            self.plan.add(
                Step(
                    "synth",
                    ["synth", str(data), "--train", str(b.train), "--test", str(b.test), "--task", b.task,
                     "--seed", "0", "--frames", str(b.frames), "--size", str(b.size), "--overwrite", "-q"],
                    [data / "classes.json"],
                )
            )  # fmt: skip
            src = Source(data / "videos", data / "splits")
            self.data_deps = ["synth"]
        else:
            self.data_deps = []
        self.src = src
        self.n_train = b.train if self.data_deps else 0  # 0: unknown (real data), batch fractions of 9537

    def _data_args(self) -> list[str]:
        return [str(self.src.videos), "--format", self.src.fmt, "--annotations", str(self.src.annotations)]

    def _size_args(self) -> list[str]:
        out = []
        if self.b.clip_frames:
            out += ["--clip-frames", str(self.b.clip_frames)]
        if self.b.input_size:
            out += ["--input-size", str(self.b.input_size)]
        return out

    def pretrain(self, col: Column) -> tuple[str | None, Path | None]:
        if col.method is None:
            return None, None
        ckpt = self.work / "ckpt" / f"{col.key}.pt"
        steps = self.b.cvrl_steps if col.method == "cvrl" else self.b.svt_steps
        argv = ["pretrain", col.method, *self._data_args(), "--subset", "train", "--out", str(ckpt)]
        argv += ["--preset", "cpu", "--backbone", col.backbone, "--steps", str(steps), "--seed", "0"]
        argv += ["--batch-size", str(self.b.pre_batch), "--workers", "0", "--overwrite", "-q"]
        if col.method == "cvrl":
            argv += self._size_args()
        elif self.b.input_size:
            argv += ["--global-size", str(self.b.input_size), "--local-size", str(self.b.input_size // 2)]
        argv += list(col.pretrain_args)
        name = self.plan.add(
            Step(f"pretrain/{col.key}", argv, [ckpt, Path(str(ckpt) + ".train")], self.data_deps)
        )
        return name, ckpt

    def _extract_argv(self, col: Column, subset: str, out: Path) -> list[str]:
        """The head of every `vcache extract` step: data, subset, backbone, output store."""
        return [
            "extract",
            *self._data_args(),
            "--subset",
            subset,
            "--backbone",
            col.backbone,
            "--out",
            str(out),
        ]

    def store(self, col: Column, kind: str) -> tuple[str, Path]:
        """kind: train16 (train mode, SCALE's cache), train_eval or test_eval (eval layout)."""
        dep, ckpt = self.pretrain(col)
        out = self.work / "stores" / col.key / f"{kind}.zarr"
        subset = "test" if kind == "test_eval" else "train"
        argv = self._extract_argv(col, subset, out)
        if ckpt is not None:
            argv += ["--checkpoint", str(ckpt)]
        if kind == "train16":
            argv += ["--mode", "train", "--crops", str(self.b.crops)]
        else:
            argv += ["--mode", "eval", "--layout", self.b.layout]
        argv += [*self._size_args(), "--workers", "0", "-q"]
        deps = self.data_deps + ([dep] if dep else [])
        return self.plan.add(Step(f"extract/{col.key}/{kind}", argv, [out], deps)), out

    def default_cfg(self) -> AggCfg:
        return AggCfg(k=self.b.crops // 2, batch=self.batch_size(self.b.default_batch_frac))

    def batch_size(self, frac: float) -> int:
        # Our choice: SCALE's 512 of ~9.5k UCF videos would be a handful of our videos; we scale Table 11's
        # batch sizes as fractions of the train set instead (1.0 = whole set, as the paper's 512 on HMDB).
        return max(2, round(frac * self.n_train)) if self.n_train else round(frac * 1024)

    def aggregator(self, col: Column, cfg: AggCfg, seed: int) -> tuple[str, Path]:
        dep, store = self.store(col, "train16")
        out = self.work / "agg" / col.key / f"{cfg.tag}_s{seed}.pt"
        argv = [
            "train-aggregator",
            "scale",
            str(store),
            "--out",
            str(out),
            "--epochs",
            str(self.b.agg_epochs),
        ]
        argv += ["--k", str(cfg.k), "--mask-ratio", str(cfg.mask), "--width", str(cfg.width)]
        argv += ["--depth", str(cfg.depth), "--batch-size", str(cfg.batch), "--seed", str(seed), "-q"]
        argv += ([] if cfg.mcm else ["--no-mcm"]) + ([] if cfg.set else ["--no-set"])
        return self.plan.add(Step(f"agg/{col.key}/{cfg.tag}_s{seed}", argv, [out], [dep])), out

    def probe(
        self, col: Column, probe: str, seed: int, cfg: AggCfg | None = None, fixed: bool = False
    ) -> Path:
        """Add one probe run; returns the folder its JSON will be written to."""
        d1, tr = self.store(col, "train_eval")
        d2, te = self.store(col, "test_eval")
        deps = [d1, d2]
        tag = f"{probe}_s{seed}" + (f"_{cfg.tag}" if cfg and probe.startswith("scale") else "")
        tag += "_fixed" if fixed and PROBE_CMD[probe] != "knn" else ""
        out = self.work / "probes" / col.key / tag
        argv = ["probe", PROBE_CMD[probe], str(tr), str(te), "--out", str(out), "--seed", str(seed)]
        if probe.startswith("scale"):
            dep, agg = self.aggregator(col, cfg or self.default_cfg(), seed)
            deps.append(dep)
            argv += ["--aggregator", str(agg)]
        if PROBE_CMD[probe] != "knn":
            argv += ["--epochs", str(self.b.probe_epochs)]
            if fixed or not self.b.probe_grid:  # one value: the first of each project default grid
                lr, wd = {"linear": ("1e-3", "0"), "mlp": ("1e-3", "1e-4"), "transformer": ("3e-4", "0.05")}[
                    PROBE_CMD[probe]
                ]
                argv += ["--lr", lr, "--wd", wd]
        self.plan.add(Step(f"probe/{col.key}/{tag}", argv, [out], deps))
        return out

    def stica_1b(self, seeds: Sequence[int]) -> dict[str, list[Path]]:
        """STiCA Table 1b, head-only on a frozen random-init R(2+1)D narrow trunk (labelled so): train the
        feature-crop head with each view set on a pairs-mode map store, embed eval-mode maps, probe linear.

        Crop sizes: the paper's 7 / 6 / 4 cells on a 7 x 7 map and 4 / 3 / 2 steps on 4 become full /
        full - 1 / half of our map (our choice; the narrow trunk at 64 px gives 4 x 4 cells)."""
        t_full = self.b.stica_frames // 8  # R(2+1)D: temporal stride 8 overall
        h_full = 4  # 64-px input, spatial stride 16
        sizes = ["--spatial-medium-size", str(h_full - 1), "--spatial-small-size", str(h_full // 2)]
        sizes += [
            "--temporal-medium-size",
            str(t_full - 1),
            "--temporal-small-size",
            str(max(1, t_full // 2)),
        ]
        full_space = ["--spatial-medium", "1", "--spatial-medium-size", str(h_full), "--spatial-small", "0"]
        full_time = ["--temporal-medium", "1", "--temporal-medium-size", str(t_full), "--temporal-small", "0"]
        one_two = ["--spatial-medium", "1", "--spatial-small", "2"]
        rows = {  # Table 1b's rows, in its order
            "1×7², 1×4 (full map)": [*sizes, *full_space, *full_time],
            "1×6² + 2×4², 1×4": [*sizes, *one_two, *full_time],
            "1×6² + 2×4², 2×3 + 1×2": [*sizes, *one_two, "--temporal-medium", "2", "--temporal-small", "1"],
            "2×6² + 4×4², 2×3 + 1×2": [*sizes],  # the command's defaults: the paper's best
        }
        col = Column("stica_trunk", "R(2+1)D narrow, frozen", "r2plus1d_18_narrow", None)
        clip = ["--clip-frames", str(self.b.stica_frames), "--input-size", "64", "--feature-maps"]
        stores = {}
        eval_mode = ["--mode", "eval", "--layout", self.b.stica_layout]
        pairs = ["--mode", "pairs", "--pairs", str(self.b.stica_pairs)]
        kinds = {"pairs": ("train", pairs), "train_maps": ("train", eval_mode)}
        kinds["test_maps"] = ("test", eval_mode)
        for kind, (subset, mode) in kinds.items():
            out = self.work / "stores" / col.key / f"{kind}.zarr"
            argv = self._extract_argv(col, subset, out)
            argv += [*mode, *clip, "--workers", "0", "-q"]
            stores[kind] = (
                self.plan.add(Step(f"extract/{col.key}/{kind}", argv, [out], self.data_deps)),
                out,
            )
        result: dict[str, list[Path]] = {}
        for i, (row, opts) in enumerate(rows.items()):
            result[row] = []
            for seed in seeds:
                tag = f"v{i}_s{seed}"
                head = self.work / "stica" / f"{tag}.pt"
                argv = ["train-aggregator", "stica", str(stores["pairs"][1]), "--out", str(head), *opts]
                argv += ["--epochs", str(self.b.stica_epochs), "--width", str(self.b.stica_width)]
                argv += ["--batch-size", str(max(2, self.n_train // 4 or 128)), "--seed", str(seed), "-q"]
                dep = self.plan.add(Step(f"stica/{tag}", argv, [head], [stores["pairs"][0]]))
                emb = {}
                for kind in ("train_maps", "test_maps"):
                    out = self.work / "stica" / f"{tag}_{kind}.zarr"
                    argv = ["stica-embed", str(head), str(stores[kind][1]), "--out", str(out), "--overwrite"]
                    emb[kind] = (
                        self.plan.add(Step(f"stica/{tag}_{kind}", argv, [out], [dep, stores[kind][0]])),
                        out,
                    )
                res = self.work / "probes" / col.key / tag
                argv = [
                    "probe",
                    "linear",
                    str(emb["train_maps"][1]),
                    str(emb["test_maps"][1]),
                    "--out",
                    str(res),
                ]
                argv += ["--seed", str(seed), "--epochs", str(self.b.probe_epochs)]
                argv += [] if self.b.probe_grid else ["--lr", "1e-3", "--wd", "0"]
                deps = [emb["train_maps"][0], emb["test_maps"][0]]
                self.plan.add(Step(f"probe/{col.key}/{tag}", argv, [res], deps))
                result[row].append(res)
        return result

    def measure_t1(self) -> dict[str, tuple[str, int, int | str]]:
        """SCALE Table 1: the aggregator trained on the cache vs end-to-end (CVRL) training of the backbone
        on the same videos, same number of optimiser steps; returns {method: (step name, steps, videos
        a step or the store whose done videos are one step)}."""
        col = COLUMNS["r3d_cvrl"]
        dep, store = self.store(col, "train16")
        n = self.b.t1_steps
        batch = self.batch_size(1.0)
        out = self.work / "t1" / "scale.pt"
        # One epoch = one step here: the batch is the whole train set (capped by the data).
        argv = ["train-aggregator", "scale", str(store), "--out", str(out), "--epochs", str(n)]
        argv += ["--k", str(self.b.crops // 2), "--batch-size", str(batch), "--device", "cpu", "-q"]
        scale = self.plan.add(Step("t1/scale", argv, [out], [dep], measure=True))
        out = self.work / "t1" / "e2e.pt"
        argv = ["pretrain", "cvrl", *self._data_args(), "--out", str(out), "--preset", "cpu"]
        argv += ["--backbone", col.backbone, "--steps", str(n), "--batch-size", str(self.b.pre_batch)]
        argv += ["--workers", "0", "--device", "cpu", "--save-every", "100000", "--overwrite", "-q"]
        argv += self._size_args()
        e2e = self.plan.add(
            Step("t1/e2e", argv, [out, Path(str(out) + ".train")], self.data_deps, measure=True)
        )
        # Samples per step: SCALE's batch is the whole train set, counted from the store at render time
        # (a real dataset's size is known only after extraction); CVRL's is its batch.
        return {"scale": (scale, n, str(store)), "e2e": (e2e, n, self.b.pre_batch)}


def build(b: Budget, work: Path, src: Source | None = None) -> tuple[Builder, dict[str, Any]]:
    """The whole plan; returns the builder and a layout saying which result folder fills which cell."""
    bl = Builder(b, work, src)
    layout: dict[str, Any] = {"main": {}, "t8": {}, "t9": {}, "t10": {}, "t11": {}, "cvrl": {}, "svt": {}}
    seeds = b.seeds
    for key in b.columns:
        col = COLUMNS[key]
        for probe in PROBES_MAIN:
            ss = seeds[:1] if probe == "knn" else seeds  # k-NN has no randomness: one run
            layout["main"][(key, probe)] = [bl.probe(col, probe, s) for s in ss]
    col = COLUMNS[ABLATION_COLUMN]
    base = bl.default_cfg()

    def ft(cfg: AggCfg) -> list[Path]:
        return [bl.probe(col, "scale_ft", s, cfg, fixed=True) for s in seeds]

    for name, (mcm, st) in {
        "SET only": (False, True),
        "MCM only": (True, False),
        "SET + MCM": (True, True),
    }.items():
        layout["t8"][name] = ft(AggCfg(**{**base.__dict__, "mcm": mcm, "set": st}))
    for m in b.masks:
        layout["t9"][m] = ft(AggCfg(**{**base.__dict__, "mask": m}))
    for w, d in b.capacities:
        layout["t10"][(w, d)] = ft(AggCfg(**{**base.__dict__, "width": w, "depth": d}))
    for k in b.views:
        for f in b.batch_fracs:
            layout["t11"][(k, bl.batch_size(f))] = ft(
                AggCfg(**{**base.__dict__, "k": k, "batch": bl.batch_size(f)})
            )
    for key in ("r3d_cvrl", "cvrl_uniform", "cvrl_increasing", "cvrl_perframe"):
        layout["cvrl"][key] = [bl.probe(COLUMNS[key], "linear", s) for s in seeds]
    for key in ("vit_svt", "svt_nomotion", "svt_nocross"):
        layout["svt"][key] = {
            "knn": [bl.probe(COLUMNS[key], "knn", seeds[0])],
            "linear": [bl.probe(COLUMNS[key], "linear", s) for s in seeds],
        }
    layout["t1"] = bl.measure_t1()
    layout["stica_1b"] = bl.stica_1b(seeds)
    return bl, layout


# ----------------------------------------------------------------------------------------------------
# Results and rendering.


def _top1(folder: Path) -> float | None:
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        if isinstance(d, dict) and "metrics" in d:
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


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n"  # blank lines around: a table must not touch a paragraph


# The papers' numbers (top-1 %), copied from the tables named in each key.
PAPER_T4_UCF = {  # SCALE Table 4 (UCF-101), columns SVT and rho-BYOL
    "knn": (87.20, 85.19), "scale_knn": (89.00, 83.47), "linear": (91.27, 89.55),
    "scale_linear": (92.65, 91.43), "mlp": (91.17, 93.60), "transformer": (92.20, 94.34),
    "scale_ft": (92.94, 95.00),
}  # fmt: skip
PAPER_T5_HMDB = {  # SCALE Table 5 (HMDB-51)
    "knn": (51.83, 49.67), "scale_knn": (56.01, 51.56), "linear": (63.07, 61.17),
    "scale_linear": (66.33, 63.92), "mlp": (63.00, 64.77), "transformer": (63.98, 66.16),
    "scale_ft": (68.10, 66.79),
}  # fmt: skip
ROW_NAMES = {
    "knn": "k-NN", "scale_knn": "SCALE_k-NN", "linear": "Linear", "scale_linear": "SCALE_linear",
    "mlp": "MLP", "transformer": "Transformer", "scale_ft": "SCALE_ft",
}  # fmt: skip
# SCALE Tables 8-11: UCF-101 SVT, UCF-101 rho-BYOL, HMDB-51 SVT, HMDB-51 rho-BYOL.
PAPER_T8 = {"SET only": (91.80, 92.20, 64.50, 63.59), "MCM only": (92.01, 93.81, 62.81, 64.05),
            "SET + MCM": (93.20, 92.99, 64.57, 65.61)}  # fmt: skip
PAPER_T9 = {0.15: (93.18, 93.25, 64.37, 64.83), 0.25: (93.20, 93.81, 65.49, 65.62),
            0.35: (93.15, 93.06, 64.18, 65.22), 0.45: (92.96, 93.02, 63.39, 64.96)}  # fmt: skip
PAPER_T10 = {(64, 1): (None, 92.62, None, 63.16), (128, 1): (None, 92.83, None, 63.68),
             (256, 1): (None, 92.86, None, 64.39), (128, 2): (92.78, 93.52, 63.26, 65.55),
             (256, 2): (93.20, 93.81, 65.49, 65.62), (512, 2): (92.57, 93.66, 65.68, 64.77),
             (128, 3): (92.33, 93.25, 64.83, 65.55), (256, 3): (92.75, 93.52, 65.49, 65.16),
             (512, 3): (92.86, 92.93, 65.49, 64.84)}  # fmt: skip
PAPER_T11 = {(4, 256): (92.65, 92.83, 64.35, 64.24), (6, 256): (92.70, 93.07, 64.57, 64.37),
             (8, 256): (92.80, 93.49, 64.64, 64.63), (4, 512): (92.67, 93.49, 64.85, 64.50),
             (6, 512): (93.18, 93.68, 64.90, 65.35), (8, 512): (93.20, 93.81, 65.49, 65.62),
             (4, 1024): (92.75, 93.36, 64.77, 65.15), (6, 1024): (92.96, 93.57, 64.96, 65.48),
             (8, 1024): (93.07, None, 65.29, None)}  # fmt: skip
PAPER_ABL_HEAD = "paper UCF SVT / UCF ρBYOL / HMDB SVT / HMDB ρBYOL"


def _paper4(v: Sequence[float | None]) -> str:
    return " / ".join("–" if x is None else f"{x:.2f}" for x in v)


Check = tuple[str, bool | None]  # (ordering, held?) None: a cell is missing


def _verdict(ok: bool | None) -> str:
    return "yes" if ok else "no" if ok is False else "not measured"


def _mean(s: tuple[float, float, int] | None) -> float | None:
    return None if s is None else s[0]


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
        + "R(2+1)D / STiCA column: not run (STiCA pretraining is not in the plan yet; see docs/tables.md).\n"
    )
    checks: list[Check] = []
    for c in cols:
        t = COLUMNS[c].title
        for row in ("scale_ft", "scale_linear"):
            ok = _gt(_mean(main[(c, row)]), _mean(main[(c, "linear")]))
            checks.append((f"{t}: {ROW_NAMES[row]} > Linear", ok))
        checks.append(
            (f"{t}: SCALE_k-NN > k-NN", _gt(_mean(main[(c, "scale_knn")]), _mean(main[(c, "knn")])))
        )
    for rnd, pre in (("r3d_random", "r3d_cvrl"), ("vit_random", "vit_svt")):
        if rnd in cols and pre in cols:
            ok = _gt(_mean(main[(pre, "linear")]), _mean(main[(rnd, "linear")]))
            checks.append((f"{COLUMNS[pre].title} above random init (Linear)", ok))
    return md, checks


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

    t8, t9, t10, t11 = t["t8"], t["t9"], t["t10"], t["t11"]
    checks: list[Check] = [
        ("T8: SET + MCM ≥ each alone", _ge_all(t8["SET + MCM"], [t8["SET only"], t8["MCM only"]]))
    ]
    best = max((v for v in t9.values() if v), key=lambda v: v[0], default=None)
    at25 = t9.get(0.25)
    ok = None if best is None or at25 is None else at25[0] >= best[0] - max(best[1], at25[1])
    checks.append(("T9: mask 0.25 the best or within one std of it", ok))
    d1 = max((v[0] for (_, d), v in t10.items() if v and d == 1), default=None)
    d2 = max((v[0] for (_, d), v in t10.items() if v and d >= 2), default=None)
    checks.append(("T10: best with ≥ 2 layers above best with 1 layer", _gt(d2, d1)))
    bmax = max(bs for _, bs in t11)
    hi, lo = t11.get((max(b.views), bmax)), t11.get((min(b.views), bmax))
    checks.append(
        (f"T11: {max(b.views)} views above {min(b.views)} (largest batch)", _gt(_mean(hi), _mean(lo)))
    )
    return md, checks, t


def _cvrl_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """CVRL Fig. 3 (interval distribution) and Table 9 (consistent vs per-frame augmentation)."""
    cv = {k: stat(v) for k, v in layout["cvrl"].items()}
    rows = [
        ["decreasing interval, consistent aug", fmt(cv["r3d_cvrl"]), "best, Fig. 3 (a-c); Table 9: 63.8"],
        ["uniform interval", fmt(cv["cvrl_uniform"]), "below decreasing, Fig. 3 (d)"],
        ["increasing interval", fmt(cv["cvrl_increasing"]), "lowest, Fig. 3 (e-f)"],
        ["per-frame (inconsistent) aug", fmt(cv["cvrl_perframe"]), "Table 9: 52.3"],
    ]
    md = (
        "\n## CVRL Fig. 3 and Table 9: interval distribution, consistent augmentation\n"
        "Cells: `vcache probe linear` on cvrl_r3d_narrow features after `vcache pretrain cvrl` with the "
        "setting named; paper: linear evaluation on Kinetics-400 (Fig. 3 gives its numbers only in a plot).\n"
        + _table(["pretraining", "ours (linear)", "paper"], rows)
    )
    g = {k: _mean(v) for k, v in cv.items()}
    return md, [
        ("CVRL: decreasing above increasing interval", _gt(g["r3d_cvrl"], g["cvrl_increasing"])),
        ("CVRL: consistent above per-frame augmentation", _gt(g["r3d_cvrl"], g["cvrl_perframe"])),
    ]


def _svt_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """SVT Table 4: which correspondence losses are on."""
    sv = {k: {p: stat(v) for p, v in d.items()} for k, d in layout["svt"].items()}
    paper = {"svt_nomotion": "84.11 / 50.72", "svt_nocross": "81.95 / 49.04", "vit_svt": "84.64 / 52.17"}
    names = {"svt_nomotion": "cross-view (l→g) only", "svt_nocross": "motion (g→g) only", "vit_svt": "both"}
    rows = [[names[k], fmt(sv[k]["knn"]), fmt(sv[k]["linear"]), paper[k]] for k in names]
    md = (
        "\n## SVT Table 4: correspondence losses\n"
        "Cells: `vcache probe knn` and `vcache probe linear` on vit_video_tiny features after "
        "`vcache pretrain svt`; paper: linear evaluation, "
        " UCF-101 / HMDB-51 (ViT-B pretrained on Kinetics-400).\n"
        + _table(["losses on", "ours k-NN", "ours linear", "paper UCF / HMDB"], rows)
    )
    alone = [sv["svt_nomotion"]["linear"], sv["svt_nocross"]["linear"]]
    return md, [("SVT: both losses ≥ each alone (linear)", _ge_all(sv["vit_svt"]["linear"], alone))]


def render(b: Budget, layout: dict[str, Any], marks: dict[str, dict], out: Path, src_note: str) -> Path:
    """Write OUT/tables.md, OUT/orderings.json and the Table 8-11 figures; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    ns = len(b.seeds)
    seeds_note = f"mean ± std over {ns} stage-2 seeds" if ns > 1 else "one stage-2 seed (QUICK)"
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
    part, c = _stica_section(layout)
    md.append(part)
    checks += c
    md.append("\n## Which orderings reproduced in this run\n")
    md += [f"- {_verdict(ok)}: {name}\n" for name, ok in checks]
    figs = _figures(out, abl["t8"], abl["t9"], abl["t10"], abl["t11"])
    md.append("\nFigures: " + ", ".join(f"[{f.name}]({f.name})" for f in figs) + "\n")
    path = out / "tables.md"
    path.write_text("".join(md))
    (out / "orderings.json").write_text(json.dumps({n: ok for n, ok in checks}, indent=1) + "\n")
    return path


HONESTY = (
    "**Read this first.** These numbers come from a small synthetic dataset (`vcache synth`) or a small "
    "local copy of UCF-101 / HMDB-51, tiny backbones and minutes of training. The absolute numbers are *not* "
    "comparable with the papers'. What can carry over is the *ordering* within a table (SCALE_ft above "
    "Linear, mask 0.25 near the best, decreasing interval sampling above increasing, pretrained above "
    "random init); "
    "the last section says which orderings held in this run.\n"
)


def _gt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a > b


def _ge_all(a: tuple | None, others: list[tuple | None]) -> bool | None:
    if a is None or any(o is None for o in others):
        return None
    return all(a[0] >= o[0] for o in others)  # type: ignore[index]


def _paper_t11(k: int, bs: int, t11: dict) -> tuple:
    """The paper's cell at the same place of the grid: our batch sizes matched by rank to 256 / 512 / 1024."""
    ours = sorted({x for _, x in t11})
    paper = (256, 512, 1024)[max(0, 3 - len(ours)) :]
    i = min(ours.index(bs), len(paper) - 1)
    return PAPER_T11.get((k, paper[i]), (None,) * 4)


def _t1(runs: dict[str, tuple[str, int, int | str]], marks: dict[str, dict]) -> str:
    from vcache.store import summary

    rows = []
    labels = {"scale": "SCALE aggregator on the cache", "e2e": "end-to-end CVRL training of the backbone"}
    for key, label in labels.items():
        name, steps, per_step = runs[key]
        m = marks.get(name) or {}
        if isinstance(per_step, str):
            per_step = summary(per_step)["done"] if Path(per_step).exists() else 0
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
        + "Paper (SCALE Table 1, one RTX 3090, ViT-B; GB of VRAM at batch 8 / 19 / 57 / 2048, samples/s): "
        "MoCo v3 23.47 / OOM / OOM / OOM, 8.66; VideoMAE 11.42 / 22.80 / OOM / OOM, 33.54; "
        "MoCo v3 sparse 5.49 / 9.27 / 23.62 / OOM, 28.83; SCALE 1.21 / 1.23 / 1.58 / 19.52, 9224.65.\n"
    )


def _stica_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """STiCA Table 1f (from the benchmark's JSON) and Table 1b (head-only, trunk frozen)."""
    f = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "stica.json"
    md = "\n## STiCA Table 1f: step cost of input crops vs feature crops\n"
    if f.exists():
        d = json.loads(f.read_text())
        fr, tr, setting = d.get("flop_ratio", {}), d.get("time_ratio", {}), d.get("setting", {})
        md += (
            "From `benchmarks/bench_stica.py` (benchmarks/results/stica.json, not remeasured here): "
            f"{setting.get('timed_backbone', '?')} on {setting.get('timed_device', '?')}.\n"
        )
        md += _table(
            ["setting", "ours FLOPs ratio", "ours time ratio", "paper GPU-h/epoch (ratio)"],
            [
                ["2 input crops 112² (a)", "1.00", "1.00", "29.3 (1.00)"],
                ["2 × 112² + 6 × 96² input crops (b)", f"{fr.get('b/a', float('nan')):.2f}",
                 f"{tr.get('b/a', float('nan')):.2f}", "100.7 (3.44)"],
                ["2 × 112² + feature crops (c)", f"{fr.get('c/a', float('nan')):.2f}",
                 f"{tr.get('c/a', float('nan')):.2f}", "30.0 (1.02)"],
            ],
        )  # fmt: skip
    else:
        md += "not run: benchmarks/results/stica.json is missing (`python benchmarks/bench_stica.py`).\n"
    paper = {"1×7², 1×4 (full map)": "59.9", "1×6² + 2×4², 1×4": "58.4", "1×6² + 2×4², 2×3 + 1×2": "60.4",
             "2×6² + 4×4², 2×3 + 1×2": "60.4"}  # fmt: skip
    st = {k: stat(v) for k, v in layout["stica_1b"].items()}
    md += (
        "\n## STiCA Table 1b: feature-crop settings (head-only STiCA, trunk frozen)\n"
        "Cells: `vcache probe linear` on `vcache stica-embed` embeddings from a head trained by `vcache "
        "train-aggregator stica` on a pairs-mode map store of a frozen, randomly initialised "
        "r2plus1d_18_narrow trunk (64 px: 4 × 4 cells; sizes 7 / 6 / 4 and 4 / 3 / 2 of the paper's map "
        "become "
        "full / full − 1 / half of ours). The paper trains the trunk end to end (HMDB-51 accuracy after 100 "
        "epochs, audio-visual); end-to-end `vcache pretrain stica` is not run here.\n"
        + _table(
            ["spatial, temporal feature crops", "ours (linear)", "paper"],
            [[k, fmt(v), paper[k]] for k, v in st.items()],
        )  # fmt: skip
    )
    rows = list(st.values())
    ok = _gt(_mean(rows[-1]), _mean(rows[0]))
    return md, [("STiCA 1b (head-only): the paper's best view set above no feature crops", ok)]


def _figures(out: Path, t8: dict, t9: dict, t10: dict, t11: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(name: str, title: str, labels: list[str], stats: list) -> Path:
        fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * len(labels) + 1.5), 3.0))
        m = [s[0] if s else float("nan") for s in stats]
        e = [s[1] if s else 0.0 for s in stats]
        ax.bar(range(len(m)), m, yerr=e, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(m)), labels, rotation=30 if len(labels) > 4 else 0, fontsize=8)
        ax.set_ylabel("SCALE_ft top-1 (%)")
        ax.set_title(title, fontsize=9)
        lo = min((v for v in m if v == v), default=0.0)
        ax.set_ylim(max(0.0, lo - 10), None)
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=100)
        plt.close(fig)
        return p

    return [
        bars("scale_table8_losses.png", "SCALE Table 8: loss terms", list(t8), list(t8.values())),
        bars("scale_table9_mask.png", "SCALE Table 9: mask ratio", [f"{k:g}" for k in t9], list(t9.values())),
        bars(
            "scale_table10_capacity.png",
            "SCALE Table 10: width × depth",
            [f"{w}×{d}" for w, d in t10],
            list(t10.values()),
        ),  # fmt: skip
        bars(
            "scale_table11_views.png",
            "SCALE Table 11: views × batch",
            [f"{k}×2, b{bs}" for k, bs in t11],
            list(t11.values()),
        ),  # fmt: skip
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
) -> Path:
    """Build the plan, run what changed, write OUT/tables.md and the figures. Returns the markdown path.

    data/splits: a local UCF-101 (or HMDB-51 with fmt_="hmdb51") copy instead of the synthetic set.
    executor: "inprocess" (default: no torch import per step) or "subprocess" (each step isolated).
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
    t0 = time.perf_counter()
    bl, layout = build(b, work, src)
    marks = run_plan(bl.plan, work, executor, echo)
    src_note = (
        f"synthetic `{b.task}` task, {b.train} train / {b.test} test videos of {b.frames} frames at {b.size}²"
        if src is None
        else f"{fmt_} at {data} (split 1)"
    )
    path = render(b, layout, marks, out, src_note)
    spent = sum(m["seconds"] for m in marks.values())
    echo(
        f"wrote {path} ({len(marks)} steps, {spent:.0f} s of step time in all, "
        f"{time.perf_counter() - t0:.0f} s this run)"
    )
    return path
