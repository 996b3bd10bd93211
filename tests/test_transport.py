"""Issue 20: crops cross from the decoding workers in shared-memory slots. Same store as through pipes, and
no segment left in /dev/shm after a normal run, a killed worker, Ctrl-C or a SIGKILLed run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from test_reliability import VC, _assert_same_store, _extract_args, _stuck_dataset

from vcache.data.crops import CropSettings
from vcache.data.datasets import load_manifest
from vcache.extract import ExtractOptions, extract
from vcache.extract.slots import PREFIX, SHM_DIR
from vcache.extract.workers import DecodePool, DecodeTask, crop_shape
from vcache.models import build_backbone
from vcache.store import DONE, FAILED, Reason

S = CropSettings(
    mode="train", clip_frames=8, frame_stride=2, input_size=64, resize_short=73, crops_per_video=3
)


def segments(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(f"{PREFIX}{pid}-"))


def test_shared_memory_and_pipes_write_the_same_store(tiny_dataset, tmp_path):
    """Batches of 4 over videos of 3 crops: a slot is held across forward passes until its last crop."""
    manifest = load_manifest("folder", tiny_dataset)
    model = build_backbone("r3d_18_narrow")
    reps, threads = {}, torch.get_num_threads()
    for shm in (True, False):
        opts = ExtractOptions(workers=2, batch_size=4, videos_per_shard=2, shared_memory=shm)
        reps[shm] = extract(manifest, tmp_path / f"{shm}.zarr", model, S, opts)
        assert reps[shm].done == 6 and reps[shm].failed == 0
    assert reps[True].transport == "shm" and reps[False].transport == "pipe"
    t = reps[True].timings  # the forward pass leaves a core to each decoding process, keeps at least one
    assert t["torch_threads"] == max(1, len(os.sched_getaffinity(0)) - 2)
    assert torch.get_num_threads() == threads  # and the caller's setting comes back
    assert 0 < t["startup_workers"] <= t["startup"] < t["total"]
    assert abs(t["startup"] + t["steady"] - t["total"]) < 1e-6
    _assert_same_store(tmp_path / "True.zarr", tmp_path / "False.zarr")
    assert segments(os.getpid()) == []


def test_a_killed_worker_gives_its_slot_back(tiny_dataset, tmp_path):
    os.mkfifo(tmp_path / "stuck.mp4")  # opening it blocks: the worker holds its slot until killed
    good = sorted(tiny_dataset.rglob("*.mp4"))[0]
    with DecodePool(1, 600, crop_shape(S), slots=2) as pool:
        assert pool.transport == "shm"
        pool.submit(DecodeTask(0, str(tmp_path / "stuck.mp4"), "stuck.mp4", S))
        deadline = time.monotonic() + 60
        while pool.workers[0].task is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.slots.free() == 1
        os.kill(pool.workers[0].proc.pid, signal.SIGKILL)
        (res,) = pool.get()
        assert res.meta.status == FAILED and res.meta.reason_code == Reason.WORKER_DIED
        assert pool.slots.free() == 2
        pool.submit(DecodeTask(1, str(good), good.name, S))  # the fresh worker decodes into a slot
        (res,) = pool.get()
        assert res.meta.status == DONE and res.slot is not None and res.crops.shape == crop_shape(S)
        assert res.crops.any()
        pool.release(res.slot)
        assert pool.slots.free() == 2
        assert len(segments(os.getpid())) == 2
    assert segments(os.getpid()) == []


def _start_stuck_run(tiny_dataset: Path, tmp_path: Path) -> subprocess.Popen:
    """An extract CLI run in its own session whose worker hangs on a named pipe after the first video."""
    root, csv = _stuck_dataset(tiny_dataset, tmp_path)
    out = tmp_path / "s.zarr"
    args = _extract_args(root, out, "--format", "csv", "--annotations", str(csv), "--timeout", "600")
    p = subprocess.Popen(
        [*VC, *args],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # a job started with & by a non-interactive shell inherits SIGINT ignored, and Python keeps that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not segments(p.pid) or not (out / "zarr.json").exists():
        assert p.poll() is None and time.monotonic() < deadline, "extract ended early"
        time.sleep(0.1)
    time.sleep(1.5)  # the first video is done; the worker now blocks on the pipe
    return p


def _gone_within(pid: int, seconds: float) -> list[str]:
    t0 = time.monotonic()
    while segments(pid) and time.monotonic() - t0 < seconds:
        time.sleep(0.05)
    return segments(pid)


def test_ctrl_c_leaves_no_segment(tiny_dataset, tmp_path):
    p = _start_stuck_run(tiny_dataset, tmp_path)
    try:
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        p.wait(timeout=60)
        assert _gone_within(p.pid, 2) == []
    finally:
        if p.poll() is None:  # the run alone: its resource tracker must live to unlink the segments
            p.kill()


def test_a_sigkilled_run_leaves_no_segment(tiny_dataset, tmp_path):
    """multiprocessing's resource tracker outlives the run and unlinks what the run created."""
    p = _start_stuck_run(tiny_dataset, tmp_path)
    try:
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert _gone_within(p.pid, 10) == []
    finally:
        if p.poll() is None:
            p.kill()
