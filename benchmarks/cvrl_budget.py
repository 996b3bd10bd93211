"""Does CVRL's loss leave chance within a CPU budget? Short runs on the synthetic shape/colour-pool task.

Issue 14: at the tables' default budget CVRL's InfoNCE stayed at chance (ln(2N - 1) for a batch of N
videos). This script runs the `cpu` preset with one change per named setting and records each run's
per-step losses, so that a budget is chosen on measured loss curves, not guessed.

    python benchmarks/cvrl_budget.py DATA [--steps 80] [--only NAME ...] [--out FILE.json]

DATA is a `vcache synth` output folder (videos/, splits/), e.g. made by
    vcache synth DATA --task order --train 300 --test 60 --colours pool --seed 0
Runs are added to (or replace) the entries of the same name in the output JSON. The summary of each run:
mean loss of its first and last tenth of steps, against chance. Measured figures: docs/pretrain.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

# before torch: idle OpenMP threads must not spin on a shared machine (docs/tables.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from vcache.pretrain.augment import AugSettings  # noqa: E402
from vcache.pretrain.cvrl import PRESETS, CVRLConfig, train_cvrl  # noqa: E402
from vcache.pretrain.data import list_videos  # noqa: E402
from vcache.runtime.distributed import DistContext  # noqa: E402

CLIP = {"clip_frames": 8, "input_size": 32}
# name -> (config overrides, augmentation overrides); everything else is the cpu preset
SETTINGS: dict[str, tuple[dict, dict]] = {
    "strength_1.0": ({**CLIP, "jitter_strength": 1.0}, {}),  # the official code's colour jitter
    "strength_0.5": ({**CLIP, "jitter_strength": 0.5}, {}),  # the cpu preset's (SimCLR's CIFAR setting)
    "strength_0.5_tau0.2_lr3e-3": ({**CLIP, "temperature": 0.2, "lr": 3e-3}, {}),
    "no_colour_jitter_no_grey": (CLIP, {"jitter_prob": 0.0, "gray_prob": 0.0}),
    "hue_saturation_only": (CLIP, {"jitter": (0.0, 0.0, 0.8, 0.2)}),  # x 0.5: saturation 0.4, hue 0.1
}


def run(name: str, data: Path, steps: int) -> dict:
    over, aug = SETTINGS[name]
    cfg = CVRLConfig(**{**PRESETS["cpu"], "workers": 0, "steps": steps, **over})
    if aug:
        cfg.aug = AugSettings(**{**cfg.aug.__dict__, **aug})
    paths = list_videos(data / "videos", "ucf101", data / "splits", subset="train")
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        train_cvrl(paths, Path(tmp) / "cvrl.pt", cfg, DistContext(), progress=False)
        losses = torch.load(Path(tmp) / "cvrl.pt.train", weights_only=False)["losses"]
    k = max(1, steps // 10)
    return {
        "config": {k_: v for k_, v in cfg.to_dict().items() if k_ in ("temperature", "lr", "jitter_strength")}
        | {"aug": cfg.aug.to_dict(), "batch_size": cfg.batch_size, **CLIP},
        "steps": steps,
        "chance": math.log(2 * cfg.batch_size - 1),
        "first_tenth": sum(losses[:k]) / k,
        "last_tenth": sum(losses[-k:]) / k,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "load_avg_end": os.getloadavg()[0],
        "losses": losses,
    }


def plot(results: dict, path: Path) -> None:
    """One line per run (a 5-step moving mean of its losses) and each batch's chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        if name.startswith("_"):
            continue
        x = torch.tensor(r["losses"])
        smooth = torch.nn.functional.avg_pool1d(x[None, None], 5, 1).flatten()
        ax.plot(range(3, 3 + len(smooth)), smooth.tolist(), label=name)
    chance = {r["chance"] for k, r in results.items() if not k.startswith("_")}
    for c in chance:
        ax.axhline(c, color="grey", ls="--", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE (5-step mean); dashed: chance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a `vcache synth` output folder")
    ap.add_argument("--steps", type=int, default=80, help="optimiser steps per run [80]")
    ap.add_argument("--only", nargs="*", default=None, help=f"settings [all: {', '.join(SETTINGS)}]")
    ap.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    default = Path("benchmarks/results/cvrl_budget.json")
    ap.add_argument("--out", type=Path, default=default, help="[%(default)s]")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for name in a.only or list(SETTINGS):
        r = run(name, a.data, a.steps)
        results[f"{name}@{a.steps}"] = r
        print(f"{name} @ {a.steps} steps: {r['first_tenth']:.3f} -> {r['last_tenth']:.3f} "
              f"(chance {r['chance']:.3f}), {r['wall_s']:.0f} s")  # fmt: skip
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1))
    plot(results, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
