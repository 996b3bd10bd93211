"""Dense extraction (issue 15): every window of a video with its time in seconds, the schema 2 store with a
variable number of rows per video, its resume / torchrun / --part equality, the npy export, stage 2 on it,
and schema 1 stores still read everywhere. Real videos (PyAV), real decord, real Zarr stores."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch
import zarr

from vcache.data.crops import CropSettings, dense_windows
from vcache.data.datasets import load_manifest
from vcache.extract import ExtractOptions, extract
from vcache.models import build_backbone
from vcache.store import DONE, VideoMeta, create_store, export_h5, export_npy, load_cache, open_store, verify

VC = [sys.executable, "-m", "vcache.cli"]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
GREY, H, W = 90, 48, 64


def write_timeline(path: Path, pts_ms: list[int], event: tuple[float, float], bframes: bool = False) -> Path:
    """H.264 (4:4:4) with the given presentation times in ms: grey frames, and a bright rectangle on the
    frames whose time falls in [event[0], event[1]) seconds. Lossless (crf 0), or with `bframes` crf 12 and
    B-frames (packets then come out of presentation order: x264 uses none in lossless mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        if bframes:
            stream.options = {"crf": "12", "preset": "ultrafast", "x264-params": "bframes=2:b-adapt=0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for t in pts_ms:
            img = np.full((H, W, 3), GREY, np.uint8)
            if event[0] <= t / 1000 < event[1]:
                img[8:40, 10:50] = (250, 40, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


CFR_MS = [40 * i for i in range(125)]  # 25 fps, 5 s
VFR_MS = list(np.cumsum([0] + [90 if i % 3 == 0 else 20 for i in range(1, 90)]))  # gaps 90, 20, 20 ms
EVENT = (2.0, 3.0)  # seconds


def _settings(**kw) -> CropSettings:
    base = dict(mode="dense", clip_frames=4, frame_stride=1, input_size=64, resize_short=73)
    return CropSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("r3d_18_narrow")


@pytest.fixture(scope="module")
def timeline(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("timeline")
    write_timeline(root / "a" / "cfr.mp4", CFR_MS, EVENT)
    write_timeline(root / "a" / "vfr.mp4", VFR_MS, (0.9, 1.4), bframes=True)
    with av.open(str(root / "a" / "vfr.mp4")) as c:  # the test covers packets out of presentation order
        pts = [p.pts for p in c.demux(video=0) if p.size]
    assert pts != sorted(pts)
    write_timeline(root / "b" / "short.mp4", CFR_MS[:3], (0.0, 1.0))  # bright: unlike any first window
    out = root / "dense.zarr"
    opts = ExtractOptions(workers=0, videos_per_shard=2)  # two shards: two row regions
    rep = extract(load_manifest("folder", root), out, backbone, _settings(), opts)
    assert rep.exit_code == 0 and rep.done == 3
    return out


def _rows(st, i: int) -> dict[str, np.ndarray]:
    start, count = (int(x[i]) for x in st.row_spans())
    return {n: st.group[f"crops/{n}"][start : start + count] for n in st.crop_names()}


@pytest.mark.parametrize(
    "name, pts_ms, event", [("a/cfr.mp4", CFR_MS, EVENT), ("a/vfr.mp4", VFR_MS, (0.9, 1.4))]
)
def test_windows_over_the_event_and_only_those_differ(timeline, name, pts_ms, event):
    st = open_store(timeline)
    i = st.paths().index(name)
    rows = _rows(st, i)
    n, span = len(pts_ms), 4  # the 5 s CFR video has 32 windows: two decoding segments of 16
    assert len(rows["features"]) == dense_windows(_settings(), n) == -(-(n - span) // span) + 1
    t = np.append(np.asarray(pts_ms) / 1000, pts_ms[-1] / 1000 + (pts_ms[-1] - pts_ms[-2]) / 1000)
    starts = np.arange(len(rows["features"])) * span
    ends = np.minimum(starts + span, n)
    # time stamps: the presentation time of the window's first frame and of the frame after it (to 1 ms)
    assert np.allclose(rows["start_s"], t[starts], atol=1e-3)
    assert np.allclose(rows["end_s"][:-1], t[ends][:-1], atol=1e-3)
    assert abs(rows["end_s"][-1] - t[-1]) <= 0.1  # the last frame's duration: its packet's, within a frame
    over = (t[starts] < event[1]) & (t[ends] > event[0])  # windows overlapping the event in time
    assert 0 < over.sum() < len(over) - 1
    f = rows["features"].astype(np.float32)
    quiet = f[~over].mean(0)
    dist = np.abs(f - quiet).max(1)
    assert dist[~over].max() < 0.02 and dist[over].min() > 0.2, dist
    assert verify(timeline, require_complete=True)[0] == []


def test_a_video_shorter_than_a_window_gives_one_window(timeline):
    st = open_store(timeline)
    rows = _rows(st, st.paths().index("b/short.mp4"))
    assert len(rows["features"]) == 1 and rows["boxes"][0, 1] == 1.0
    assert rows["start_s"][0] == 0.0 and abs(rows["end_s"][0] - 0.12) < 1e-6  # 3 frames of 40 ms


def test_dense_layout_each_shard_owns_its_chunks(timeline):
    """Plain zarr reads a video by row_start / row_count; every shard's rows start on a chunk boundary
    of its own region, so two writers never touch one chunk file."""
    g = zarr.open_group(str(timeline), mode="r")
    assert g.attrs["schema_version"] == 2 and g.attrs["crops_per_video"] == 0
    per_shard = g.attrs["rows_per_shard"]
    for name in ("features", "boxes", "start_s", "end_s", "flip"):
        assert per_shard % g[f"crops/{name}"].chunks[0] == 0
    starts, counts, vps = g["videos/row_start"][:], g["videos/row_count"][:], g.attrs["videos_per_shard"]
    for i, (a, c) in enumerate(zip(starts, counts, strict=True)):
        shard = i // vps
        assert shard * per_shard <= a and a + c <= (shard + 1) * per_shard


def test_export_npy_and_h5(timeline, tmp_path):
    table, n = export_npy(timeline, tmp_path / "npy")
    assert n == 3
    st = open_store(timeline)
    for i, p in enumerate(st.paths()):
        a = np.load(tmp_path / "npy" / Path(p).with_suffix(".npy"))
        assert a.dtype == np.float32 and a.shape == (int(st.row_spans()[1][i]), st.feature_dim)
        assert np.array_equal(a, _rows(st, i)["features"].astype(np.float32))
    with open(table) as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == int(st.row_spans()[1].sum()) and set(lines[0]) == {
        "video",
        "row",
        "start_s",
        "end_s",
    }
    cfr = [r for r in lines if r["video"] == "a/cfr.mp4"]
    assert float(cfr[1]["start_s"]) == pytest.approx(0.16) and cfr[-1]["row"] == str(len(cfr) - 1)
    h5 = export_h5(timeline, tmp_path / "s.h5")
    with h5py.File(h5) as f:
        for i, p in enumerate(st.paths()):  # both shards: the compacted rows of shard 1 follow shard 0's
            v = f[f"by_video/{Path(p).with_suffix('')}/features"][:]
            assert np.array_equal(v, _rows(st, i)["features"].astype(np.float32))
            s0 = int(f["videos/row_start"][i])
            assert np.array_equal(f["crops/features"][s0 : s0 + len(v)].astype(np.float32), v)


def test_verify_finds_bad_row_times(timeline, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(timeline, bad)
    g = zarr.open_group(str(bad), mode="r+")
    a = int(g["videos/row_start"][0])
    g["crops/end_s"][a] = -1.0
    problems, _ = verify(bad)
    assert any("row times" in p for p in problems) and any("checksum mismatch" in p for p in problems)


def test_stage2_reads_a_dense_store(timeline):
    c = load_cache(timeline)
    st = open_store(timeline)
    k = int(st.row_spans()[1].max())
    assert c.features.shape == (3, k, st.feature_dim) and c.boxes.shape == (3, k, 6)
    short = c.paths.index("b/short.mp4")  # one window, repeated
    assert (c.features[short] == c.features[short][0]).all()
    c4 = load_cache(timeline, rows_per_video=4)
    cfr = c4.paths.index("a/cfr.mp4")
    rows = _rows(st, st.paths().index("a/cfr.mp4"))
    n = len(rows["features"])
    want = np.floor((np.arange(4) + 0.5) * n / 4).astype(int)  # spread evenly
    assert np.array_equal(c4.boxes[cfr], rows["boxes"][want])


def test_probes_retrieval_and_scale_run_on_a_dense_store(timeline, tmp_path):
    from stage2_helpers import TINY_SCALE

    from vcache.learn.aggregator import ScaleConfig
    from vcache.learn.probes import ProbeSettings, run_knn, run_probe
    from vcache.learn.scale import train_scale

    c = load_cache(timeline)  # 32 rows a video: SCALE's two sets of K = 8 need 16
    s = ProbeSettings(k=2, retrieval=True, allow_overlap=True, device="cpu")
    knn = run_knn(c, c, s)
    assert knn.metrics["top1"] == 1.0 and "R@1" in knn.metrics  # each video is its own nearest neighbour
    fast = ProbeSettings(lrs=(1e-2,), wds=(0.0,), epochs=3, eval_points=1, allow_overlap=True, device="cpu")
    lin = run_probe("linear", c, c, fast)
    assert 0 <= lin.metrics["top1"] <= 1
    cfg = ScaleConfig(feature_dim=c.features.shape[-1], epochs=1, **{**TINY_SCALE, "batch_size": 3})
    res = train_scale(c, cfg, tmp_path / "s.pt", store_path=timeline, device="cpu")
    assert res.epochs_done == 1 and np.isfinite(res.history[-1]["total"])


def test_schema_1_stores_stay_readable(tmp_path):
    paths, labels, k, d = [f"c/v{i}.mp4" for i in range(5)], [0, 1, 0, 1, 0], 3, 4
    st = create_store(tmp_path / "v1.zarr", paths, labels, k, d, {"backbone": {}}, videos_per_shard=2,
                      schema_version=1)  # fmt: skip
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5 * k, d)).astype(np.float32)
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        rows = slice(v.start * k, v.stop * k)
        metas = [VideoMeta(status=DONE, num_frames=10, fps=25.0, height=8, width=8)] * len(v)
        boxes = np.tile(np.array([0, 1, 0, 0, 1, 1], np.float32), (len(v) * k, 1))
        st.write_shard(s, feats[rows], boxes, np.zeros(len(v) * k, bool), metas)
    g = zarr.open_group(str(tmp_path / "v1.zarr"), mode="r")
    assert g.attrs["schema_version"] == 1 and "row_start" not in g["videos"] and "start_s" not in g["crops"]
    st = open_store(tmp_path / "v1.zarr")
    assert np.array_equal(st.row_spans()[0], np.arange(5) * k)
    assert np.allclose(load_cache(st.path).features.reshape(-1, d), feats, atol=1e-2)
    _, n = export_npy(st.path, tmp_path / "npy")
    assert n == 5 and np.load(tmp_path / "npy" / "c" / "v4.npy").shape == (k, d)
    assert [p for p in verify(st.path)[0] if "attribute" not in p] == []


# -- the CLI: kill and resume, --part and torchrun give the store of one run --------------------------------
def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "extract", str(root), "--out", str(out), "--backbone", "r3d_18_narrow", "--mode", "dense",
        "--clip-frames", "4", "--frame-stride", "1", "--window-step", "3", "--videos-per-shard", "1",
        "--batch-size", "8", "--quiet", *extra,
    ]  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([*VC, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _assert_same_dense(a_path: Path, b_path: Path) -> None:
    a, b = open_store(a_path), open_store(b_path)
    assert a.paths() == b.paths() and np.array_equal(a.status(), b.status())
    for x, y in zip(a.row_spans(), b.row_spans(), strict=True):
        assert np.array_equal(x, y)
    for i in range(a.n_videos):
        ra, rb = _rows(a, i), _rows(b, i)
        for name in ("boxes", "flip", "start_s", "end_s"):
            assert np.array_equal(ra[name], rb[name]), name
        assert np.allclose(ra["features"].astype(np.float32), rb["features"].astype(np.float32), atol=2e-3)


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A 200-frame video (67 windows: 5 decoding segments), a VFR one, a short one; and one run's store."""
    root = tmp_path_factory.mktemp("dense_cli")
    write_timeline(root / "a" / "long.mp4", [40 * i for i in range(200)], (3.0, 4.0))
    write_timeline(root / "a" / "vfr.mp4", VFR_MS, (0.9, 1.4))
    write_timeline(root / "b" / "short.mp4", CFR_MS[:3], EVENT)
    ref = root / "ref.zarr"
    _run(*_args(root, ref))
    return root, ref


def test_kill_resume_parts_and_torchrun_equal_one_run(long_dataset, tmp_path):
    root, ref = long_dataset
    assert int(open_store(ref).row_spans()[1].max()) == 67
    killed = tmp_path / "killed.zarr"
    for delay in np.random.default_rng(7).uniform(2.0, 6.0, size=2):
        p = subprocess.Popen([*VC, *_args(root, killed)], stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
    _run(*_args(root, killed))
    _assert_same_dense(ref, killed)
    assert verify(killed, require_complete=True)[0] == []
    parts = tmp_path / "parts.zarr"
    _run(*_args(root, parts, "--part", "1/2", "--workers", "1"))
    _run(*_args(root, parts, "--part", "0/2"))
    _assert_same_dense(ref, parts)
    ddp = tmp_path / "ddp.zarr"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "vcache.cli", *_args(root, ddp)]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_dense(ref, ddp)
    assert verify(ddp, require_complete=True)[0] == []


# Loaded into every process of the run (PYTHONPATH): the worker marks the moment video 2 (one window) is
# decoded and slows the later segments of videos 0 and 1, so the stop lands while they are half decoded.
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
        elif task.windows:
            time.sleep(1.0)
        return res

    _w.decode_task = _slow
"""


def test_graceful_stop_keeps_finished_videos_and_the_resume_appends(long_dataset, tmp_path):
    """SIGINT while videos 0 and 1 (67 and 30 windows) are half decoded: video 2 is kept in a partly done
    shard, videos 0 and 1 stay pending; the resume appends their rows after video 2's (written rows never
    move) and the store equals one run's, video by video."""
    root, ref = long_dataset
    out, hook = tmp_path / "stopped.zarr", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    env = dict(os.environ, VCACHE_STOP_TEST_DIR=str(hook))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
    args = _args(root, out, "--videos-per-shard", "3", "--workers", "1")
    proc = subprocess.Popen([*VC, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (hook / "decoded-2").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    time.sleep(1.5)  # video 2's result reaches the engine; the 5 later segments of 0 and 1 take >= 5 s
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, err[-2000:]
    st = open_store(out)
    assert list(st.status()) == [0, 0, DONE], (st.status(), err[-3000:])
    assert str(st.group["shards/digest"][0]) == "" and int(st.row_spans()[0][2]) == 0
    assert verify(out)[0] == []
    _run(*args)
    st = open_store(out)
    starts = st.row_spans()[0]
    assert starts[0] > starts[2] and starts[1] > starts[2]  # appended after the rows written at the stop
    assert verify(out, require_complete=True)[0] == []
    a, b = open_store(ref), st
    for i in range(3):
        ra, rb = _rows(a, i), _rows(b, i)
        for name in ("boxes", "start_s", "end_s"):
            assert np.array_equal(ra[name], rb[name]), name
        assert np.allclose(ra["features"].astype(np.float32), rb["features"].astype(np.float32), atol=2e-3)
