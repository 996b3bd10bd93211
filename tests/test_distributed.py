"""Distributed runs on the CPU with real torchrun jobs (gloo, 2 processes): collectives and their device,
the LOCAL_RANK -> GPU rule, CVRL with a VideoResNet backbone, rank 0 deciding a resume, commands that
refuse torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vcache.runtime.devices import pick_device

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
WORKER = str(Path(__file__).with_name("dist_worker.py"))


def torchrun(
    mode: str, out: Path, args: dict | None = None, timeout: float = 240, nproc: int = 2
) -> list[dict]:
    """Run tests/dist_worker.py MODE in `nproc` gloo processes; return each rank's result."""
    cmd = [
        TORCHRUN,
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        WORKER,
        mode,
        str(out),
        json.dumps(args or {}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0 and _TEARDOWN_ABORT in r.stderr:  # see _TEARDOWN_ABORT: one more try, then fail
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(nproc)]


# A C++ std::terminate seen once in a rank of the stica 1-vs-2 run on a fresh CI clone (SIGABRT, "terminate
# called without an active exception"), not reproduced in 4 runs alone; cause not found (gloo or thread
# teardown suspected). Only this signature is retried, once: wrong numbers and every other crash still fail.
_TEARDOWN_ABORT = "terminate called without an active exception"


def test_collectives_under_gloo(tmp_path: Path) -> None:
    a, b = torchrun("collectives", tmp_path)
    for r in (a, b):
        assert r["device"] == "cpu"  # gloo: host tensors (NCCL: the rank's GPU, same code path)
        assert r["mean"] == 1.5
        assert r["broadcast"] == {"from": 0, "run_id": "id-0"}
        assert r["same_spread"] == 0.0
        assert r["diverged_error"] and "replicas differ" in r["diverged_error"]


@pytest.mark.parametrize(
    "requested, n_gpus, local_rank, local_world, want",
    [
        ("auto", 0, None, None, "cpu"),
        ("auto", 2, None, None, "cuda:0"),
        ("cpu", 4, 3, 4, "cpu"),
        ("cuda", 8, 5, 8, "cuda:5"),  # torchrun on 8 GPUs: GPU LOCAL_RANK
        ("auto", 8, 5, 8, "cuda:5"),
        ("cuda", 1, 3, 4, "cuda:0"),  # one visible GPU per rank (SLURM --gpus-per-task=1)
        ("auto", 1, 1, 2, "cuda:0"),  # 2 ranks sharing one GPU
        ("cuda", 2, 3, 4, "cuda:1"),  # more ranks than GPUs: shared round robin
        ("cuda:1", 2, None, None, "cuda:1"),  # one process: the GPU asked for
        ("cuda:1", 4, 0, 1, "cuda:1"),  # torchrun with one rank per node
        ("cuda:0", 1, 1, 2, "cuda:0"),  # one visible GPU per rank: cuda:0 is each rank's own
    ],
)
def test_one_local_rank_to_gpu_rule(requested, n_gpus, local_rank, local_world, want) -> None:
    assert pick_device(requested, n_gpus, local_rank, local_world) == want


@pytest.mark.parametrize(
    "requested, n_gpus, local_rank, local_world, message",
    [
        ("cuda", 0, None, None, "no CUDA device"),
        ("cuda:0", 0, 0, 2, "no CUDA device"),
        ("cuda:3", 2, None, None, "sees 2 GPU"),
        ("cuda:1", 4, 1, 4, "all 4 ranks of this node on one GPU"),
        ("cuda:x", 2, None, None, "expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_device_rule_refusals(requested, n_gpus, local_rank, local_world, message) -> None:
    with pytest.raises(ValueError, match=message):
        pick_device(requested, n_gpus, local_rank, local_world)


def test_init_distributed_takes_the_device_of_the_rule(monkeypatch) -> None:
    """init_distributed and resolve_device are one rule: no separate LOCAL_RANK use in init_distributed."""
    from vcache.runtime import distributed

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_distributed("cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        distributed.init_distributed("cuda")


def _cvrl_config(**kw) -> dict:
    base = dict(
        backbone="r3d_18_narrow",
        clip_frames=4,
        frame_stride=2,
        input_size=32,
        batch_size=4,
        steps=2,
        lr=0.01,
        head_hidden=16,
        head_out=8,
        workers=0,
        warmup_epochs=0,
        save_every=0,
    )
    return {**base, **kw}


def test_cvrl_ddp_with_a_videoresnet_backbone(tiny_dataset: Path, tmp_path: Path) -> None:
    """VideoResNet's fc feeds nothing: with it in the model DDP reduced no gradient at step 1 and raised at
    step 2. Now both ranks finish 2 steps with the same weights (check_replicas all-gathers them)."""
    args = {"videos": str(tiny_dataset), "out": str(tmp_path / "cvrl.pt"), "config": _cvrl_config()}
    a, b = torchrun("cvrl", tmp_path / "res", args)
    assert a["steps"] == b["steps"] == 2
    assert a["replica_spread"] == b["replica_spread"] == 0.0  # bitwise equal replicas on the CPU
    assert a["final_loss"] == b["final_loss"]


def test_every_parameter_of_a_training_backbone_gets_a_gradient() -> None:
    """What DDP's find_unused_parameters=False requires, for each backbone family pretraining can use."""
    import torch

    from vcache.models import build_backbone

    for name in ("r3d_18_narrow", "r2plus1d_18_narrow", "mc3_18", "cvrl_r3d_narrow"):
        model = build_backbone(name).drop_unused().train()
        pooled, _ = model(torch.randn(2, 3, 4, 32, 32))
        pooled.sum().backward()
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused, (name, unused[:4])


@pytest.mark.parametrize(
    "command",
    [
        ["train-aggregator", "scale", "s.zarr", "--out", "x.pt"],
        ["train-aggregator", "stica", "s.zarr", "--out", "x.pt"],
        ["probe", "knn", "a.zarr", "b.zarr"],
        ["probe", "linear", "a.zarr", "b.zarr"],
        ["synth", "out"],
        ["reproduce-tables"],
    ],
)
def test_one_process_commands_refuse_torchrun(command: list[str], tmp_path: Path) -> None:
    """WORLD_SIZE > 1 (as torchrun sets it): one line on rank 0, nothing on the others, exit 2, and the
    command does nothing (no output written)."""
    vc = [sys.executable, "-m", "vcache.cli", *command]
    for rank in ("0", "1"):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank}
        r = subprocess.run(vc, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.returncode == 2, (command, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if rank == "0":
            assert len(lines) == 1 and "cannot use torchrun (WORLD_SIZE=2)" in lines[0], r.stderr
        else:
            assert lines == [], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_multi_process_commands_pass_the_torchrun_gate(tmp_path: Path) -> None:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    for command in (["extract", "missing", "--out", "s.zarr"], ["pretrain", "cvrl", "missing", "--out", "x"]):
        r = subprocess.run(
            [sys.executable, "-m", "vcache.cli", *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert "cannot use torchrun" not in r.stderr and "video folder not found" in r.stderr, r.stderr


def test_rank_0_decides_the_resume_with_node_local_outputs(tiny_dataset: Path, tmp_path: Path) -> None:
    """Each rank writes under its own folder (a node-local disk): only node0 holds the training state. A
    resume to 2 steps must continue on both ranks from rank 0's state and equal an uninterrupted run."""
    out = str(tmp_path / "node{rank}" / "cvrl.pt")
    base = {"videos": str(tiny_dataset), "out": out}
    torchrun("cvrl", tmp_path / "r1", {**base, "config": _cvrl_config(steps=1)})
    assert (tmp_path / "node0" / "cvrl.pt.train").exists()
    assert not (tmp_path / "node1" / "cvrl.pt.train").exists()
    a, b = torchrun("cvrl", tmp_path / "r2", {**base, "config": _cvrl_config(steps=2), "resume": True})
    assert a["replica_spread"] == b["replica_spread"] == 0.0
    import torch

    resumed = torch.load(tmp_path / "node0" / "cvrl.pt.train", weights_only=True)
    ref_out = str(tmp_path / "ref{rank}" / "cvrl.pt")
    torchrun("cvrl", tmp_path / "r3", {**base, "out": ref_out, "config": _cvrl_config(steps=2)})
    ref = torch.load(tmp_path / "ref0" / "cvrl.pt.train", weights_only=True)
    assert resumed["step"] == 2 and resumed["losses"] == ref["losses"]
    for k, v in ref["model"].items():
        assert torch.equal(resumed["model"][k], v), k


def test_faiss_without_gpu_support_falls_back_to_the_cpu() -> None:
    import numpy as np

    from vcache.learn.knn import search

    rng = np.random.default_rng(0)
    train, queries = rng.standard_normal((50, 8)), rng.standard_normal((5, 8))
    with pytest.warns(UserWarning, match="no GPU support"):
        sims, idx = search(train, queries, 3, use_gpu=True)
    ref_sims, ref_idx = search(train, queries, 3, use_gpu=False)
    assert np.array_equal(idx, ref_idx) and np.allclose(sims, ref_sims)
