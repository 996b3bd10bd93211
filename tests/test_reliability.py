"""Reliability: torchrun and --part shares, run locks, kills, the hang guard, bad inputs, full disks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from videos import (
    big_frames,
    gradient_video,
    random_video,
    write_audio_only,
    write_gray,
    write_lying_avi,
    write_vfr,
    write_video,
)

from vcache.data.crops import CropSettings
from vcache.data.datasets import load_manifest
from vcache.extract import ExtractOptions, extract
from vcache.models import build_backbone
from vcache.store import DONE, FAILED, PENDING, Reason, open_store, verify
from vcache.store.lock import LOCK_DIR

VC = [sys.executable, "-m", "vcache.cli"]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _extract_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "extract", str(root), "--out", str(out), "--backbone", "r3d_18_narrow", "--crops", "4",
        "--clip-frames", "8", "--videos-per-shard", "1", "--batch-size", "4", "--quiet", *extra,
    ]  # fmt: skip


def _run(*args: str, check: bool = True, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([*VC, *args], capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr[-2000:]}")
    return r


def _assert_same_store(a_path: Path, b_path: Path) -> None:
    """Boxes, status and metadata identical; features equal within fp16 tolerance."""
    a, b = open_store(a_path), open_store(b_path)
    assert a.paths() == b.paths()
    assert np.array_equal(a.status(), b.status())
    for name in ("boxes", "flip"):
        assert np.array_equal(a.group[f"crops/{name}"][:], b.group[f"crops/{name}"][:]), name
    for name in ("num_frames", "decoded_frames", "fps", "height", "width", "label", "reason_code"):
        assert np.array_equal(a.meta(name), b.meta(name)), name
    fa = a.group["crops/features"][:].astype(np.float32)
    fb = b.group["crops/features"][:].astype(np.float32)
    assert np.allclose(fa, fb, atol=2e-3, rtol=2e-3)


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> Path:
    """An uninterrupted one-process run that the other runs must reproduce."""
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    _run(*_extract_args(tiny_dataset, ref))
    return ref


def test_torchrun_two_processes_equal_one(tiny_dataset, reference, tmp_path):
    out = tmp_path / "ddp.zarr"
    cmd = [
        TORCHRUN,
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vcache.cli",
        *_extract_args(tiny_dataset, out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_store(reference, out)
    assert verify(out, require_complete=True)[0] == []


def test_parts_equal_one_run(tiny_dataset, reference, tmp_path):
    out = tmp_path / "parts.zarr"
    r = _run(*_extract_args(tiny_dataset, out, "--part", "1/2"))
    assert (open_store(out).status() == DONE).all()  # a part alone also claims the shards of part 0
    assert "this run 6 videos" in r.stderr
    r = _run(*_extract_args(tiny_dataset, out, "--part", "0/2"))
    assert "this run 0 videos" in r.stderr
    _assert_same_store(reference, out)
    r = _run(*_extract_args(tiny_dataset, out, "--part", "3/2"), check=False)
    assert r.returncode == 2 and "0 <= I < N" in r.stderr


def _stuck_dataset(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two good videos and a named pipe (decoding it blocks on open until the deadline)."""
    root = tmp_path / "v"
    shutil.copytree(tiny_dataset / "alpha", root / "alpha")
    os.mkfifo(root / "alpha" / "stuck.mp4")
    rows = ["path,label", "alpha/alpha_0.mp4,alpha", "alpha/stuck.mp4,alpha", "alpha/alpha_1.mp4,alpha"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    return root, tmp_path / "list.csv"


def test_a_second_run_is_refused_and_a_killed_run_is_taken_over(tiny_dataset, tmp_path):
    root, csv = _stuck_dataset(tiny_dataset, tmp_path)
    out = tmp_path / "locked.zarr"
    args = _extract_args(
        root, out, "--format", "csv", "--annotations", str(csv), "--max-failed-fraction", "1"
    )
    first = subprocess.Popen([*VC, *args, "--timeout", "600"], stderr=subprocess.DEVNULL)  # held by the pipe
    try:
        deadline = time.monotonic() + 120
        while not list((out / LOCK_DIR).glob("*.json")) and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended before its lock was seen"
            time.sleep(0.05)
        second = _run(*args, check=False)
        assert second.returncode == 1 and "is being written by run" in second.stderr
        lock = json.loads(next((out / LOCK_DIR).glob("*.json")).read_text())
        assert lock["pid"] == first.pid and lock["host"] and lock["run_id"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the dead run's lock stays behind; a new run on this host sees its pid is gone and takes over
    assert list((out / LOCK_DIR).glob("*.json"))
    r = _run(*args, "--timeout", "2", check=False)
    assert r.returncode == 3, r.stderr
    assert open_store(out).status().tolist() == [DONE, FAILED, DONE]
    assert not (out / LOCK_DIR).exists() and verify(out, require_complete=True)[0] == []


def test_five_kills_at_seeded_points_then_resume(tiny_dataset, reference, tmp_path):
    """SIGKILL at 5 seeded moments (store creation included); the final store equals an uninterrupted run."""
    out = tmp_path / "killed.zarr"
    rng = np.random.default_rng(1234)
    for delay in rng.uniform(0.5, 5.0, size=5):
        p = subprocess.Popen([*VC, *_extract_args(tiny_dataset, out)], stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
    _run(*_extract_args(tiny_dataset, out))
    _assert_same_store(reference, out)
    problems, counts = verify(out, require_complete=True)
    assert problems == [] and counts["done"] == 6
    r = _run("verify", str(out))
    assert "valid" in r.stderr


def test_hang_guard_kills_a_stuck_decoder(tiny_dataset, tmp_path):
    """A named pipe as the video path blocks on open forever: the worker is killed at the deadline."""
    root, csv = _stuck_dataset(tiny_dataset, tmp_path)
    manifest = load_manifest("csv", root, csv)
    model = build_backbone("r3d_18_narrow")
    s = CropSettings(
        mode="train", clip_frames=8, frame_stride=2, input_size=64, resize_short=73, crops_per_video=2
    )
    t0 = time.monotonic()
    rep = extract(manifest, tmp_path / "s.zarr", model, s, ExtractOptions(timeout_s=3, max_failed_fraction=1))
    assert time.monotonic() - t0 < 60
    st = open_store(tmp_path / "s.zarr")
    i = st.paths().index("alpha/stuck.mp4")
    assert st.status()[i] == FAILED and st.meta("reason_code")[i] == Reason.TIMED_OUT
    assert "timed out" in st.reasons()[i]
    assert st.status()[st.paths().index("alpha/alpha_0.mp4")] == DONE
    assert rep.done == 2 and rep.failed == 1


def test_bad_input_suite(tiny_dataset, tmp_path):
    """Every bad input ends done or failed-with-reason; the run never crashes and loses nothing."""
    root = tmp_path / "v"
    c = root / "c"
    shutil.copytree(tiny_dataset / "alpha", c)
    rng = np.random.default_rng(0)
    (c / "empty.mp4").write_bytes(b"")
    good = (c / "alpha_0.mp4").read_bytes()
    (c / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (c / "text.mp4").write_text("definitely not a video\n" * 40)
    write_audio_only(c / "audio_only.mp4")
    write_video(c / "one_frame.mp4", gradient_video(t=1))
    write_lying_avi(c / "lying.avi", gradient_video(t=30), claimed=100)
    write_gray(c / "gray.mkv", gradient_video(t=20))
    write_vfr(c / "vfr.mp4", gradient_video(t=30))
    write_video(c / "odd.mp4", random_video(rng, t=20, h=61, w=97), crf=18)
    out = tmp_path / "s.zarr"
    r = _run(*_extract_args(root, out, "--max-failed-fraction", "1"), check=False)
    assert r.returncode == 3, r.stderr  # finished, with failures
    st = open_store(out)
    got = dict(
        zip(st.paths(), zip(st.status(), st.meta("reason_code"), st.reasons(), strict=True), strict=True)
    )
    failed = {
        "empty.mp4": Reason.UNREADABLE,
        "truncated.mp4": Reason.UNREADABLE,
        "text.mp4": Reason.UNREADABLE,
        "audio_only.mp4": Reason.NO_VIDEO_STREAM,
    }
    for name, code in failed.items():
        status, rc, reason = got[f"c/{name}"]
        assert status == FAILED and rc == code and reason, name
    for name in ("one_frame.mp4", "lying.avi", "gray.mkv", "vfr.mp4", "odd.mp4", "alpha_0.mp4"):
        assert got[f"c/{name}"][0] == DONE, (name, got[f"c/{name}"])
    frames = dict(zip(st.paths(), st.meta("num_frames"), strict=True))
    assert frames["c/lying.avi"] == 30  # counted from packets, not the header's 100
    assert frames["c/one_frame.mp4"] == 1
    assert verify(out, require_complete=True)[0] == []


_PEAK_RSS = """
import resource, sys
from vcache.data.crops import CropSettings
from vcache.extract.workers import DecodeTask, decode_task
s = CropSettings(mode="train", clip_frames=16, frame_stride=2, input_size=64, resize_short=73)
r = decode_task(DecodeTask(0, sys.argv[1], "v", s))
assert r.crops is not None, r.meta
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_4k_decoding_memory_does_not_grow_with_length(tmp_path):
    """Peak RSS decoding a 4K video of 45 frames is at most 1.5x that of the same video cut at 15 frames."""
    short = write_video(tmp_path / "k15.mp4", big_frames(15), crf=30, pix_fmt="yuv420p")
    long = write_video(tmp_path / "k45.mp4", big_frames(45), crf=30, pix_fmt="yuv420p")
    rss = {}
    for p in (short, long):
        r = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(p)], capture_output=True, text=True, check=True
        )
        rss[p.name] = int(r.stdout.strip())
    assert rss["k45.mp4"] <= 1.5 * rss["k15.mp4"], rss


_DISK_FULL = """
import errno, sys
from vcache.store import FeatureStore
real, calls = FeatureStore.write_shard, []
def write_shard(self, *a, **kw):
    calls.append(1)
    if len(calls) > 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *a, **kw)
FeatureStore.write_shard = write_shard
sys.argv = ["vcache", *sys.argv[1:]]
from vcache.cli.app import main
main()
"""


def test_disk_full_stops_cleanly_and_the_store_stays_valid(tiny_dataset, reference, tmp_path):
    out = tmp_path / "full.zarr"
    r = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, *_extract_args(tiny_dataset, out)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "No space left on device" in r.stderr and "Traceback" not in r.stderr
    problems, counts = verify(out)
    assert problems == [] and counts["done"] == 2 and counts["pending"] == 4
    _run(*_extract_args(tiny_dataset, out))  # space is back: resume
    _assert_same_store(reference, out)


def test_unwritable_output_path_is_a_clear_error(tiny_dataset, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = _run(*_extract_args(tiny_dataset, blocker / "s.zarr"), check=False)
    assert r.returncode == 1 and "cannot write the store" in r.stderr and "Traceback" not in r.stderr


def _torchrun_extract(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "vcache.cli", *_extract_args(root, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_resume_spreads_one_ranks_leftovers_over_every_rank(tiny_dataset, reference, tmp_path):
    """The old share of rank 1 (odd shards) is all that is left: with s % world both would go to rank 1
    while rank 0 waits at the barrier; claimed dynamically, both ranks take some."""
    out = tmp_path / "resume.zarr"
    shutil.copytree(reference, out)
    st = open_store(out, mode="r+")
    status = st.status()
    status[1::2] = PENDING  # shards of 1 video: videos 1, 3, 5 = rank 1's share of 2
    st.group["videos/status"][:] = status
    r = _torchrun_extract(tiny_dataset, out)
    per_rank = sorted(int(x) for x in re.findall(r"this run (\d+) videos", r.stderr))
    assert len(per_rank) == 2 and sum(per_rank) == 3 and per_rank[0] >= 1, r.stderr[-2000:]
    _assert_same_store(reference, out)
    assert verify(out, require_complete=True)[0] == []


def test_two_parts_started_together(tiny_dataset, reference, tmp_path):
    out = tmp_path / "together.zarr"
    procs = [
        subprocess.Popen(
            [*VC, *_extract_args(tiny_dataset, out, "--part", p)], stderr=subprocess.PIPE, text=True
        )
        for p in ("0/2", "1/2")
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    _assert_same_store(reference, out)
    assert verify(out, require_complete=True)[0] == []
    assert not list(tmp_path.glob(".together.zarr.creating-*"))


def test_a_part_removes_only_leftovers_of_dead_runs(tiny_dataset, tmp_path):
    """Another part (this test process, live lock) is creating and writing: its `.creating-*` folder and
    fresh `*.partial` stay; a dead process's folder and an hour-old temporary are removed."""
    out = tmp_path / "s.zarr"
    _run(*_extract_args(tiny_dataset, out, "--part", "0/2"))
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_dir = tmp_path / f".s.zarr.creating-aaaa-{os.getpid()}-{host}"
    dead_dir = tmp_path / f".s.zarr.creating-bbbb-{dead.pid}-{host}"
    for d in (live_dir, dead_dir):
        d.mkdir()
    fresh = out / "crops" / "features" / "x.1234.partial"
    old = out / "crops" / "features" / "y.5678.partial"
    for f in (fresh, old):
        f.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (out / LOCK_DIR).mkdir()
    other = {"run_id": "other", "host": host, "pid": os.getpid(), "share": [1, 2], "heartbeat": time.time()}
    (out / LOCK_DIR / "1-of-2.json").write_text(json.dumps(other))
    _run(*_extract_args(tiny_dataset, out, "--part", "0/2"))
    assert live_dir.exists() and fresh.exists()
    assert not dead_dir.exists() and not old.exists()


def test_overwrite_checks_the_locks_before_deleting(tiny_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    _run(*_extract_args(tiny_dataset, out, "--part", "0/2"))
    (out / LOCK_DIR).mkdir()
    rec = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "share": [0, 1]}
    (out / LOCK_DIR / "0-of-1.json").write_text(json.dumps({**rec, "heartbeat": time.time()}))
    r = _run(*_extract_args(tiny_dataset, out, "--overwrite"), check=False)
    assert r.returncode == 1 and "nothing was deleted" in r.stderr, r.stderr
    assert (open_store(out).status() == DONE).all()
