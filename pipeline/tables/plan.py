"""Which `vcache` command lines make which table cells: Source (where the videos come from), Builder (adds
each table's steps to a Plan) and build (the whole plan plus the layout of result folders per cell)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcache.data.synth_sprites import SPRITE_FRACTION
from vcache.pretrain.loop import student_path
from vcache.tables.budgets import ABLATION_COLUMN, COLUMNS, AggCfg, Budget, Column
from vcache.tables.plan_av import stica_t3
from vcache.tables.runner import Plan, Step, at


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


# SCALE's contrastive heads at these budgets: the official 3 x 2048 / 2 x 4096 (the command's default) made a
# step 3.6x slower on 2 cores than these, on features 64-128 wide from tiny backbones (our choice).
AGG_HEADS = ["--target-head", "3x512", "--pred-head", "2x512"]


class Builder:
    """Adds the steps of each table to a Plan and remembers where each result JSON will be."""

    def __init__(self, b: Budget, work: Path, src: Source | None, stores: str | Path | None = None) -> None:
        self.b, self.work, self.plan = b, work, Plan()
        self.stores = stores if stores is not None else work / "stores"  # a folder, or a URL prefix
        if src is None:
            data = work / "data"
            self.plan.add(
                Step(
                    "synth",
                    ["synth", str(data), "--train", str(b.train), "--test", str(b.test), "--task", b.task,
                     "--seed", "0", "--frames", str(b.frames), "--size", str(b.size), "--colours", b.colours,
                     *([] if b.sprite == SPRITE_FRACTION else ["--sprite", f"{b.sprite:g}"]),
                     "--overwrite", "-q"],
                    [data / "classes.json"],
                )
            )  # fmt: skip
            src = Source(data / "videos", data / "splits")
            self.data_deps = ["synth"]
        else:
            self.data_deps = []
        self.src = src
        self.n_train = b.train if self.data_deps else 0  # 0: unknown (real data), batch fractions of 9537
        self.ckpts: dict[str, list[Path]] = {}  # pretraining column key -> its checkpoints (loss curves)

    def _data_args(self) -> list[str]:
        return [str(self.src.videos), "--format", self.src.fmt, "--annotations", str(self.src.annotations)]

    def _size_args(self) -> list[str]:
        out = []
        if self.b.clip_frames:
            out += ["--clip-frames", str(self.b.clip_frames)]
        if self.b.input_size:
            out += ["--input-size", str(self.b.input_size)]
        return out

    def runs(self) -> list[tuple[int, int]]:
        """(pretraining seed, stage-2 seed) of each run of a cell: as many runs as the longer list."""
        ps, ss = self.b.pretrain_seeds, self.b.seeds
        return [(ps[r % len(ps)], ss[r % len(ss)]) for r in range(max(len(ps), len(ss)))]

    def pretrain(self, col: Column, pseed: int = 0) -> tuple[str | None, Path | None]:
        if col.method is None:
            return None, None
        if col.student and col.of:  # the student written beside the teacher by the same run
            dep, teacher = self.pretrain(COLUMNS[col.of], pseed)
            return dep, student_path(teacher)  # type: ignore[arg-type]
        ckpt = self.work / "ckpt" / f"{col.key}_p{pseed}.pt"
        steps = self.b.cvrl_steps if col.method == "cvrl" else self.b.svt_steps
        argv = ["pretrain", col.method, *self._data_args(), "--subset", "train", "--out", str(ckpt)]
        argv += ["--preset", "cpu", "--backbone", col.backbone, "--steps", str(steps), "--seed", str(pseed)]
        argv += ["--batch-size", str(self.b.pre_batch), "--workers", "0", "--overwrite", "-q"]
        if col.method == "cvrl":
            argv += self._size_args() + ["--jitter-strength", f"{self.b.cvrl_jitter_strength:g}"]
        else:
            argv += ["--momentum-teacher", f"{svt_momentum(steps):g}"]
            if self.b.input_size:
                argv += ["--global-size", str(self.b.input_size), "--local-size", str(self.b.input_size // 2)]
        argv += list(col.pretrain_args)
        outs = [ckpt, Path(str(ckpt) + ".train")] + ([student_path(ckpt)] if col.method == "svt" else [])
        name = self.plan.add(Step(f"pretrain/{col.key}_p{pseed}", argv, outs, self.data_deps))
        if ckpt not in self.ckpts.setdefault(col.key, []):
            self.ckpts[col.key].append(ckpt)
        return name, ckpt

    def _extract_argv(self, col: Column, subset: str, out: Path | str) -> list[str]:
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

    def store(self, col: Column, kind: str, pseed: int = 0) -> tuple[str, Path | str]:
        """kind: train16 (train mode, SCALE's cache), train_eval or test_eval (eval layout)."""
        dep, ckpt = self.pretrain(col, pseed)
        out = at(self.stores, f"{col.key}_p{pseed}", f"{kind}.zarr")
        subset = "test" if kind == "test_eval" else "train"
        argv = self._extract_argv(col, subset, out)
        if ckpt is not None:
            argv += ["--checkpoint", str(ckpt)]
        else:  # random init: the pretraining seed is the init seed
            argv += ["--init-seed", str(pseed)]
        if kind == "train16":
            argv += ["--mode", "train", "--crops", str(self.b.crops)]
        else:
            argv += ["--mode", "eval", "--layout", self.b.layout]
        argv += [*self._size_args(), "--workers", "0", "-q"]
        deps = self.data_deps + ([dep] if dep else [])
        return self.plan.add(Step(f"extract/{col.key}_p{pseed}/{kind}", argv, [out], deps)), out

    def default_cfg(self) -> AggCfg:
        return AggCfg(k=self.b.crops // 2, batch=self.batch_size(self.b.default_batch_frac))

    def batch_size(self, frac: float) -> int:
        # Our choice: SCALE's 512 of ~9.5k UCF videos would be a handful of our videos; we scale Table 11's
        # batch sizes as fractions of the train set instead (1.0 = whole set, as the paper's 512 on HMDB).
        return max(2, round(frac * self.n_train)) if self.n_train else round(frac * 1024)

    def aggregator(self, col: Column, cfg: AggCfg, seed: int, pseed: int = 0) -> tuple[str, Path]:
        dep, store = self.store(col, "train16", pseed)
        out = self.work / "agg" / f"{col.key}_p{pseed}" / f"{cfg.tag}_s{seed}.pt"
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
        argv += AGG_HEADS
        argv += ([] if cfg.mcm else ["--no-mcm"]) + ([] if cfg.set else ["--no-set"])
        return self.plan.add(Step(f"agg/{col.key}_p{pseed}/{cfg.tag}_s{seed}", argv, [out], [dep])), out

    def probe(
        self,
        col: Column,
        probe: str,
        seed: int,
        cfg: AggCfg | None = None,
        fixed: bool = False,
        pseed: int = 0,
    ) -> Path:
        """Add one probe run; returns the folder its JSON will be written to."""
        d1, tr = self.store(col, "train_eval", pseed)
        d2, te = self.store(col, "test_eval", pseed)
        deps = [d1, d2]
        named = cfg is not None and cfg != self.default_cfg() and probe.startswith("scale")
        tag = f"{probe}_s{seed}" + (f"_{cfg.tag}" if named else "")
        # Without the lr / wd grid every probe already runs at the fixed values: the ablations' fixed run is
        # then the main one (one step, not two with equal options).
        tag += "_fixed" if fixed and self.b.probe_grid and PROBE_CMD[probe] != "knn" else ""
        out = self.work / "probes" / f"{col.key}_p{pseed}" / tag
        argv = ["probe", PROBE_CMD[probe], str(tr), str(te), "--out", str(out), "--seed", str(seed)]
        if probe.startswith("scale"):
            dep, agg = self.aggregator(col, cfg or self.default_cfg(), seed, pseed)
            deps.append(dep)
            argv += ["--aggregator", str(agg)]
        if PROBE_CMD[probe] != "knn":
            argv += ["--epochs", str(self.b.probe_epochs)]
            if fixed or not self.b.probe_grid:  # one value: the first of each project default grid
                lr, wd = {"linear": ("1e-3", "0"), "mlp": ("1e-3", "1e-4"), "transformer": ("3e-4", "0.05")}[
                    PROBE_CMD[probe]
                ]
                argv += ["--lr", lr, "--wd", wd]
        self.plan.add(Step(f"probe/{col.key}_p{pseed}/{tag}", argv, [out], deps))
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
            out = at(self.stores, col.key, f"{kind}.zarr")
            argv = self._extract_argv(col, subset, out)
            argv += [*mode, *clip, "--workers", "0", "-q"]
            stores[kind] = (
                self.plan.add(Step(f"extract/{col.key}/{kind}", argv, [out], self.data_deps)),
                out,
            )
        result: dict[str, list[Path]] = {}
        for i, (row, opts) in enumerate(rows.items()):
            result[row] = []
            for seed in self.b.ablation_seeds or seeds:  # head-only: no pretraining comparison
                tag = f"v{i}_s{seed}"
                head = self.work / "stica" / f"{tag}.pt"
                argv = ["train-aggregator", "stica", str(stores["pairs"][1]), "--out", str(head), *opts]
                argv += ["--epochs", str(self.b.stica_epochs), "--width", str(self.b.stica_width)]
                argv += ["--batch-size", str(max(2, self.n_train // 4 or 128)), "--seed", str(seed), "-q"]
                dep = self.plan.add(Step(f"stica/{tag}", argv, [head], [stores["pairs"][0]]))
                emb = {}
                for kind in ("train_maps", "test_maps"):
                    out = at(self.stores, "stica", f"{tag}_{kind}.zarr")
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
        argv += [
            "--k",
            str(self.b.crops // 2),
            "--batch-size",
            str(batch),
            "--device",
            "cpu",
            "-q",
            *AGG_HEADS,
        ]
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


def build(
    b: Budget, work: Path, src: Source | None = None, stores: str | Path | None = None
) -> tuple[Builder, dict[str, Any]]:
    """The whole plan; returns the builder and a layout saying which result folder fills which cell.
    `stores`: where the feature stores go, a folder or a URL prefix (``s3://bucket/tables``) [WORK/stores]."""
    bl = Builder(b, work, src, stores)
    layout: dict[str, Any] = {"main": {}, "t8": {}, "t9": {}, "t10": {}, "t11": {}, "cvrl": {}, "svt": {}}
    seeds, runs = b.seeds, bl.runs()
    knn_runs = [(p, seeds[0]) for p in b.pretrain_seeds]  # k-NN has no randomness: one run per weights
    for key in b.columns:
        col = COLUMNS[key]
        for probe in PROBES_MAIN:
            rs = knn_runs if probe == "knn" else runs
            layout["main"][(key, probe)] = [bl.probe(col, probe, s, pseed=p) for p, s in rs]
    col = COLUMNS[ABLATION_COLUMN]
    base = bl.default_cfg()

    def ft(cfg: AggCfg) -> list[Path]:
        return [bl.probe(col, "scale_ft", s, cfg, fixed=True) for s in b.ablation_seeds or seeds]

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
        layout["cvrl"][key] = [bl.probe(COLUMNS[key], "linear", s, pseed=p) for p, s in runs]
    for key in ("vit_svt", "svt_nomotion", "svt_nocross"):
        layout["svt"][key] = {
            "knn": [bl.probe(COLUMNS[key], "knn", s, pseed=p) for p, s in knn_runs],
            "linear": [bl.probe(COLUMNS[key], "linear", s, pseed=p) for p, s in runs],
        }
    layout["t1"] = bl.measure_t1()
    layout["stica_1b"] = bl.stica_1b(seeds)
    layout["stica_t3"] = stica_t3(bl) if src is None else {}  # needs audio: the generated set only
    layout["pretrain"] = dict(bl.ckpts)
    return bl, layout


def svt_momentum(steps: int) -> float:
    """SVT's starting teacher momentum for a run of `steps` (our rule, issue 14): DINO's 0.996 suits
    ~10^5 steps; an EMA's memory is about 1 / (1 - m) steps, so we keep it at a tenth of the run or less,
    m = 1 - 10 / steps, within [0.9, 0.996] (6 steps: 0.9; 2500 steps and more: 0.996)."""
    return float(min(0.996, max(0.9, 1 - 10 / max(1, steps))))
