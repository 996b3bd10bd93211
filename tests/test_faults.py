"""Faults of issue 13: orphaned decoders, decoder noise, truncated and damaged input, racing runs, worker
start-up crashes, damaged stores and their repair. Real processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from test_reliability import VC, _extract_args, _stuck_dataset

from vcache.store import DONE, open_store


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
