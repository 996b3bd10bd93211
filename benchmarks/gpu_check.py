"""The CUDA paths of vcache, one pass/fail line each, on a machine with one GPU (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py WORKDIR [--list]

Each check runs real commands on a small synthetic set and prints `PASS|FAIL name seconds clips/s detail`.
`--list` prints the checks without running anything (what the CPU-only tests do to import-check this file).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
VC = [sys.executable, "-m", "vcache.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "4"}


def vc(*args: str, torchrun: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    head = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(torchrun), "-m", "vcache.cli"]
    cmd = head + list(args) if torchrun else VC + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(args[:3])}: {r.stderr.strip()[-300:]}")
    return r


def rate(r: subprocess.CompletedProcess) -> float:
    m = re.findall(r"([0-9.]+) clips/s", r.stderr)
    return float(m[-1]) if m else 0.0


def ext(w: Path, out: str, *extra: str, **kw) -> subprocess.CompletedProcess:
    return vc(
        "extract", str(w / "data/videos"), "--format", "ucf101", "--annotations", str(w / "data/splits"),
        "--out", str(w / out), "--crops", "8", "--quiet", "--overwrite", *extra, **kw,
    )  # fmt: skip


def features(path: Path):
    from vcache.store import open_store

    return open_store(path).group["crops/features"][:].astype("float32")


def check_nccl(w: Path) -> tuple[float, str]:
    code = (
        "import os, torch; from torch import nn\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533', RANK='0', WORLD_SIZE='1')\n"
        "import torch.distributed as dist; dist.init_process_group('nccl')\n"
        "from vcache.runtime.distributed import *\n"
        "torch.cuda.set_device(0); assert str(collective_device()) == 'cuda:0'\n"
        "assert mean_over_ranks(2.5) == 2.5 and broadcast_object({'a': 1}) == {'a': 1}\n"
        "assert check_replicas(nn.Linear(3, 2).cuda()) == 0.0\n"
        "x = torch.ones(3, device='cuda', requires_grad=True); all_reduce_grad(x).sum().backward()\n"
        "end_distributed(); print('ok')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=ENV, timeout=120)
    return 0.0, "mean_over_ranks, broadcast_object, check_replicas, all_reduce_grad"


def check_extract(w: Path) -> tuple[float, str]:
    import numpy as np

    cpu = ext(w, "cpu.zarr", "--backbone", "r3d_18_narrow", "--device", "cpu")
    fp32 = ext(w, "cuda32.zarr", "--backbone", "r3d_18_narrow", "--device", "cuda", "--no-amp")
    amp = ext(w, "amp.zarr", "--backbone", "r3d_18_narrow", "--device", "cuda", "--amp")
    a, b, c = (features(w / n) for n in ("cpu.zarr", "cuda32.zarr", "amp.zarr"))
    d32, damp = float(np.abs(a - b).max()), float(np.abs(a - c).max())
    assert d32 < 5e-3 and damp < 5e-2, (d32, damp)
    return rate(
        amp
    ), f"max|cpu-cuda| fp32 {d32:.1e} amp {damp:.1e} (cpu {rate(cpu):.0f}, fp32 {rate(fp32):.0f})"


def check_vit_maps(w: Path) -> tuple[float, str]:
    r = ext(w, "vit.zarr", "--backbone", "vit_video_tiny", "--device", "cuda")
    m = ext(w, "maps.zarr", "--backbone", "r3d_18_narrow", "--device", "cuda", "--feature-maps", "--fp32")
    vc("verify", str(w / "vit.zarr"), "--complete")
    vc("verify", str(w / "maps.zarr"), "--complete")
    return rate(r), f"feature maps {rate(m):.0f} clips/s"


def check_torchrun_one_gpu(w: Path) -> tuple[float, str]:
    import numpy as np

    r = ext(w, "ddp.zarr", "--backbone", "r3d_18_narrow", "--device", "cuda", "--no-amp", torchrun=2)
    d = float(np.abs(features(w / "ddp.zarr") - features(w / "cuda32.zarr")).max())
    assert d < 5e-3, d
    return rate(r), f"2 ranks on cuda:0, max|1-2 procs| {d:.1e}"


def check_stage2(w: Path) -> tuple[float, str]:
    s = vc("train-aggregator", "scale", str(w / "amp.zarr"), "--out", str(w / "scale.pt"), "--epochs", "3",
           "--device", "cuda", "--quiet")  # fmt: skip
    for probe in ("knn", "linear", "mlp", "transformer"):
        extra = ["--epochs", "2"] if probe in ("linear", "mlp", "transformer") else []
        vc("probe", probe, str(w / "amp.zarr"), str(w / "amp.zarr"), "--out", str(w / "results"),
           "--device", "cuda", *extra)  # fmt: skip
    return rate(s), "scale + knn, linear, mlp, transformer"


def check_pretrain(w: Path) -> tuple[float, str]:
    rates = []
    for method, extra in (("cvrl", ["--backbone", "r3d_18_narrow"]), ("svt", []), ("stica", [])):
        out = str(w / f"{method}.pt")
        steps = ["--epochs", "1"] if method == "stica" else ["--steps", "2"]
        base = ["pretrain", method, str(w / "data/videos"), "--out", out, "--device", "cuda", *extra]
        first = vc(
            *base, *(["--steps", "1"] if method != "stica" else ["--epochs", "1"]), "--batch-size", "4"
        )
        vc(*base, *steps, "--batch-size", "4", "--resume")
        rates.append(rate(first))
    return max(rates), "cvrl, svt, stica: 1 step then --resume"


def check_faiss_gpu(w: Path) -> tuple[float, str]:
    import faiss
    import numpy as np

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return 0.0, "SKIP: faiss-cpu installed (make install GPU=1 for faiss-gpu)"
    from vcache.learn.knn import search

    x = np.random.default_rng(0).standard_normal((2000, 64)).astype("float32")
    g, c = search(x, x[:100], 5, use_gpu=True), search(x, x[:100], 5, use_gpu=False)
    assert (g[1] == c[1]).mean() > 0.99
    return 0.0, "GPU index equals the CPU index"


CHECKS = [check_nccl, check_extract, check_vit_maps, check_torchrun_one_gpu, check_stage2, check_pretrain,
          check_faiss_gpu]  # fmt: skip


def main() -> int:
    w = Path(sys.argv[1])
    if "--list" in sys.argv:
        print("\n".join(c.__name__[6:] for c in CHECKS))
        return 0
    w.mkdir(parents=True, exist_ok=True)
    vc(
        "synth",
        str(w / "data"),
        "--train",
        "24",
        "--test",
        "8",
        "--task",
        "order",
        "--seed",
        "0",
        "--overwrite",
    )
    failed = 0
    for check in CHECKS:
        t0 = time.perf_counter()
        try:
            clips, detail = check(w)
            dt = time.perf_counter() - t0
            print(f"PASS {check.__name__[6:]:<18} {dt:6.1f} s {clips:8.1f} clips/s  {detail}")
        except Exception as e:  # one line per path, whatever failed
            failed += 1
            print(f"FAIL {check.__name__[6:]:<18} {time.perf_counter() - t0:6.1f} s  {type(e).__name__}: {e}")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
