"""A graceful stop (SIGINT / SIGTERM) keeps every finished video, a partly done shard included, and the
resume redoes only the pending videos, through the real CLI, real workers and a real store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_reliability import TORCHRUN, VC, _run
from test_reliability import _assert_same_store as _same
from videos import random_video, write_video

from vcache.store import DONE, FAILED, PENDING, open_store, verify

# Loaded into every process of the run (PYTHONPATH): the decoding worker marks the moment video 2 is
# decoded and slows the later videos, so the test's signal lands while a shard is half done.
_HOOK = """
import os, time
_dir = os.environ.get("VCACHE_STOP_TEST_DIR")
if _dir:
    import vcache.extract.workers as _w
    _real = _w.decode_task

    def _slow(task, out=None):
        res = _real(task, out)
        if task.index == 2:
            open(os.path.join(_dir, "decoded-2"), "w").close()
        if task.index >= 3:
            time.sleep(0.4)
        return res

    _w.decode_task = _slow
"""


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twelve")
    rng = np.random.default_rng(1)
    for c in ("alpha", "beta"):
        for i in range(6):
            write_video(root / c / f"{c}_{i}.mp4", random_video(rng, t=24), crf=18)
    return root


def _args(root: Path, out: Path) -> list[str]:
    return [
        "extract", str(root), "--out", str(out), "--backbone", "r3d_18_narrow", "--crops", "3",
        "--clip-frames", "8", "--videos-per-shard", "8", "--batch-size", "3", "--workers", "1", "--quiet",
    ]  # fmt: skip


def _stop_midway(
    root: Path, out: Path, hook_dir: Path, sig: int, launcher: list[str] = VC
) -> subprocess.CompletedProcess:
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(_HOOK)
    env = dict(os.environ, VCACHE_STOP_TEST_DIR=str(hook_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), env.get("PYTHONPATH", "")])
    pipe = subprocess.PIPE
    proc = subprocess.Popen([*launcher, *_args(root, out)], env=env, stdout=pipe, stderr=pipe)
    deadline = time.monotonic() + 120
    while not (hook_dir / "decoded-2").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the worker never decoded video 2"
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout.decode(), stderr.decode())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_keeps_finished_videos_and_resume_redoes_only_pending(twelve, tmp_path, sig):
    out = tmp_path / "stopped.zarr"
    r = _stop_midway(twelve, out, tmp_path / "hook", sig)
    name = signal.Signals(sig).name
    assert r.returncode == 128 + sig, r.stderr[-2000:]
    said = " ".join((r.stdout + r.stderr).split())  # the console wraps long lines
    assert f"stopped by {name}" in said and "rerun the same command to resume" in said, said
    st = open_store(out)
    status = st.status()
    first_shard = status[st.shard_videos(0).start : st.shard_videos(0).stop]
    kept, pending = int((status == DONE).sum()), int((status == PENDING).sum())
    assert (first_shard == DONE).any() and (first_shard == PENDING).any(), status  # a partly done shard
    assert kept >= 2 and pending >= 1, status
    assert str(st.group["shards/digest"][0]) == ""  # no digest until the shard is complete
    problems, counts = verify(out)
    assert problems == [] and counts["done"] == kept, problems
    done_rows = st.group["crops/features"][:].reshape(st.n_videos, 3, -1)[status == DONE]
    assert np.abs(done_rows.astype(np.float32)).sum(axis=(1, 2)).min() > 0  # kept rows hold features

    resumed = _run(*_args(twelve, out))
    said = " ".join((resumed.stdout + resumed.stderr).split())
    assert f"this run {pending} videos" in said, said  # only the pending ones
    ref = tmp_path / "ref.zarr"
    _run(*_args(twelve, ref))
    _same(out, ref)
    problems, counts = verify(out, require_complete=True)
    assert problems == [] and counts["done"] == 12
    assert str(open_store(out).group["shards/digest"][0]) != ""


def test_sigterm_under_torchrun_keeps_each_ranks_finished_videos(twelve, tmp_path):
    """torchrun forwards SIGTERM to every rank and its decoding processes: each rank writes its finished
    videos, a decoding process killed with the group leaves its video pending (never failed), and one
    process resumes the store to an uninterrupted run's."""
    out = tmp_path / "ddp.zarr"
    launcher = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "vcache.cli"]
    r = _stop_midway(twelve, out, tmp_path / "hook", signal.SIGTERM, launcher)
    said = " ".join((r.stdout + r.stderr).split())
    assert said.count("stopped by SIGTERM") == 2, said  # both ranks stopped gracefully
    status = open_store(out).status()
    assert (status == DONE).sum() >= 1 and (status == PENDING).sum() >= 1 and (status == FAILED).sum() == 0
    assert verify(out)[0] == []
    _run(*_args(twelve, out))
    ref = tmp_path / "ref.zarr"
    _run(*_args(twelve, ref))
    _same(out, ref)


def test_retry_failed_redoes_only_the_failed_videos(twelve, tmp_path):
    """--retry-failed makes a shard's failed videos pending again; the run redoes those, not the shard."""
    import shutil

    root = tmp_path / "videos"
    shutil.copytree(twelve, root)
    broken = root / "alpha" / "alpha_1.mp4"
    good = broken.read_bytes()
    broken.write_bytes(b"not a video")
    out = tmp_path / "st.zarr"
    r = _run(*_args(root, out), check=False)
    assert r.returncode == 3 and (open_store(out).status() == FAILED).sum() == 1
    broken.write_bytes(good)
    again = _run(*_args(root, out), "--retry-failed")
    assert "this run 1 videos" in " ".join((again.stdout + again.stderr).split())
    ref = tmp_path / "ref.zarr"
    _run(*_args(twelve, ref))
    _same(out, ref)
