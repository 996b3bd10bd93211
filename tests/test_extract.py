"""Extraction end to end on real video files, real decord, a real Zarr store on disk."""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner
from videos import gradient_video, random_video, write_video

from vcache.cli.app import app
from vcache.data.crops import CropSettings
from vcache.data.datasets import load_manifest
from vcache.extract import EXIT_OK, EXIT_SOME_FAILED, ExtractOptions, extract
from vcache.models import build_backbone
from vcache.store import DONE, FAILED, Reason, StoreError, load_cache, open_store

VCACHE = [sys.executable, "-m", "vcache.cli"]


def _settings(model, mode="train", **kw):
    p = model.preprocessing
    base = dict(
        mode=mode, clip_frames=8, frame_stride=2, input_size=p.input_size, resize_short=p.resize_short
    )
    base.update(kw)
    return CropSettings(**base)


@pytest.fixture(scope="module")
def narrow():
    return build_backbone("r3d_18_narrow")


def test_extract_train_store_round_trip(tiny_dataset, narrow, tmp_path):
    manifest = load_manifest("folder", tiny_dataset)
    out = tmp_path / "s.zarr"
    rep = extract(
        manifest, out, narrow, _settings(narrow, crops_per_video=4), ExtractOptions(videos_per_shard=2)
    )
    assert rep.exit_code == EXIT_OK and rep.done == 6 and rep.clips == 24
    g = zarr.open_group(str(out), mode="r")  # plain zarr, no vcache
    assert g["crops/features"].shape == (24, narrow.feature_dim) and g["crops/features"].dtype == np.float16
    assert g["crops/boxes"].shape == (24, 6)
    assert list(g["videos/status"][:]) == [DONE] * 6
    assert list(g["videos/num_frames"][:]) == [40] * 6
    assert list(g["videos/label"][:]) == [0, 0, 0, 1, 1, 1]
    assert g.attrs["backbone"]["name"] == "r3d_18_narrow"
    assert g.attrs["sampling"]["mode"] == "train" and g.attrs["class_names"] == ["alpha", "beta"]
    feats = g["crops/features"][:].astype(np.float32)
    assert np.isfinite(feats).all() and feats.std(0).mean() > 0
    # the same features as a direct forward pass would give are not re-tested here; h5 export round trip:
    h5 = tmp_path / "s.h5"
    r = CliRunner().invoke(app, ["export", str(out), str(h5)])
    assert r.exit_code == 0, r.output
    with h5py.File(h5) as f:
        assert np.array_equal(f["crops/features"][:], g["crops/features"][:])
        assert np.array_equal(f["crops/boxes"][:], g["crops/boxes"][:])
        assert [p.decode() for p in f["videos/path"][:]] == [str(p) for p in g["videos/path"][:]]
        assert json.loads(f.attrs["vcache_attrs"])["backbone"]["name"] == "r3d_18_narrow"
    cache = load_cache(out)
    assert cache.features.shape == (6, 4, narrow.feature_dim) and cache.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_boxes_cut_the_right_pixels(tmp_path):
    """A gradient video (R = x, G = y, B = 6 x frame) and a backbone that reports edge pixels."""
    root = tmp_path / "v"
    n, h, w = 40, 48, 64
    write_video(root / "c" / "g.mp4", gradient_video(t=n, h=h, w=w))
    sys.path.insert(0, str(Path(__file__).parent))
    model = build_backbone("pixel_probe:build")
    manifest = load_manifest("folder", root)
    out = tmp_path / "s.zarr"
    for mode in ("train", "eval"):
        s = CropSettings(
            mode=mode, clip_frames=4, frame_stride=3, input_size=32, resize_short=32, crops_per_video=12
        )
        extract(manifest, out, model, s, ExtractOptions(feature_dtype="float32", overwrite=True, workers=0))
        c = load_cache(out)
        size = 32
        for f, box, flip in zip(c.features[0], c.boxes[0], c.flips[0], strict=True):
            t0, t1, y0, x0, y1, x1 = box
            xl = np.clip((x0 * w + 0.5 * (x1 - x0) * w / size - 0.5) / (w - 1), 0, 1)
            xr = np.clip((x1 * w - 0.5 * (x1 - x0) * w / size - 0.5) / (w - 1), 0, 1)
            yt = np.clip((y0 * h + 0.5 * (y1 - y0) * h / size - 0.5) / (h - 1), 0, 1)
            yb = np.clip((y1 * h - 0.5 * (y1 - y0) * h / size - 0.5) / (h - 1), 0, 1)
            left, right = (xr, xl) if flip else (xl, xr)
            first, last = round(t0 * n), round(t1 * n) - 1
            want = [left, right, yt, yb, 6 * first / 255, 6 * last / 255]
            assert np.allclose(f, want, atol=5 / 255), (mode, box, flip, f, want)
        assert c.flips.any() == (mode == "train")


def test_bad_files_are_recorded_and_the_run_goes_on(tiny_dataset, narrow, tmp_path):
    root = tmp_path / "v"
    shutil.copytree(tiny_dataset, root)
    (root / "alpha" / "empty.mp4").write_bytes(b"")
    (root / "beta" / "text.mp4").write_text("not a video\n" * 50)
    good = (root / "alpha" / "alpha_0.mp4").read_bytes()
    (root / "beta" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    manifest = load_manifest("folder", root)
    out = tmp_path / "s.zarr"
    rep = extract(
        manifest, out, narrow, _settings(narrow, crops_per_video=2), ExtractOptions(max_failed_fraction=0.5)
    )
    assert rep.done == 6 and rep.failed == 3 and rep.exit_code == EXIT_SOME_FAILED
    st = open_store(out)
    paths, status, reasons = st.paths(), st.status(), st.reasons()
    for p in ("alpha/empty.mp4", "beta/text.mp4", "beta/truncated.mp4"):
        i = paths.index(p)
        assert status[i] == FAILED and reasons[i]
    assert st.meta("reason_code")[paths.index("alpha/empty.mp4")] == Reason.UNREADABLE


def test_rerun_resumes_and_refuses_other_settings(tiny_dataset, narrow, tmp_path):
    manifest = load_manifest("folder", tiny_dataset)
    out = tmp_path / "s.zarr"
    s = _settings(narrow, crops_per_video=2)
    extract(manifest, out, narrow, s, ExtractOptions(videos_per_shard=2))
    rep = extract(manifest, out, narrow, s, ExtractOptions(videos_per_shard=2))
    assert rep.processed_now == 0 and rep.done == 6
    with pytest.raises(StoreError, match="different settings"):
        extract(manifest, out, narrow, _settings(narrow, crops_per_video=3), ExtractOptions())
    rep = extract(manifest, out, narrow, _settings(narrow, crops_per_video=3), ExtractOptions(overwrite=True))
    assert rep.done == 6 and open_store(out).crops_per_video == 3


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(app, ["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and "video folder not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["extract", str(tmp_path), "--out", str(tmp_path / "s"), "--mode", "bogus"])
    assert r.exit_code == 2 and "bogus" in r.output
    r = CliRunner().invoke(app, ["extract", str(tmp_path), "--out", str(tmp_path / "s"), "--format", "ucf"])
    assert r.exit_code == 2 and "ucf101" in r.output  # a bad option is exit 2, as the README says
    r = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert r.exit_code == 1 and "not a vcache store" in r.output


def test_feature_maps_and_ssv2_webm(tmp_path):
    """SSv2-style .webm (VP9) videos through the ssv2 manifest, with maps stored per crop."""
    import av

    root, ann = tmp_path / "webm", tmp_path / "ann"
    ann.mkdir()
    rng = np.random.default_rng(3)
    for vid in ("11", "12"):
        frames = random_video(rng, t=24)
        root.mkdir(exist_ok=True)
        with av.open(str(root / f"{vid}.webm"), "w") as out:
            s = out.add_stream("libvpx-vp9", rate=12)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    (ann / "something-something-v2-labels.json").write_text(
        json.dumps({"Pushing something": "0", "Pulling something": "1"})
    )
    rows = [{"id": "11", "template": "Pushing [something]"}, {"id": "12", "template": "Pulling [something]"}]
    (ann / "something-something-v2-train.json").write_text(json.dumps(rows))
    manifest = load_manifest("ssv2", root, ann, subset="train")
    model = build_backbone("r2plus1d_18_narrow")
    s = CropSettings(mode="eval", clip_frames=8, frame_stride=1, input_size=64, resize_short=73, layout="2x3")
    rep = extract(manifest, tmp_path / "s.zarr", model, s, ExtractOptions(feature_maps=True))
    assert rep.done == 2, rep.failures
    st = open_store(tmp_path / "s.zarr")
    maps = st.group["crops/maps"]
    assert maps.shape == (12, *model.map_shape(8, 64)) and maps.dtype == np.float16
    pooled = maps[:].astype(np.float32).mean(axis=(1, 2, 3))[:, -model.map_shape(8, 64)[-1] :]
    feats = st.group["crops/features"][:].astype(np.float32)[
        :, -pooled.shape[1] :
    ]  # last stage's pooled part
    assert np.allclose(pooled, feats, atol=2e-2, rtol=2e-2)


def test_random_weights_are_said_at_extraction_and_by_inspect(tiny_dataset, tmp_path):
    out = tmp_path / "r.zarr"
    args = ["extract", str(tiny_dataset), "--out", str(out), "--backbone", "r3d_18_narrow", "--mode", "eval"]
    r = CliRunner().invoke(app, [*args, "--layout", "1x1", "--clip-frames", "8", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert "random weights (init seed 0)" in " ".join(lines[:2])  # said first, before any work
    assert lines[-1] == "weights: random init (seed 0)"  # and in the summary
    r = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=200)
    assert "r3d_18_narrow (random init, seed 0)" in r.output


def test_workers_auto_is_one_per_core_but_one(monkeypatch):
    import typer

    from vcache.cli.options import parse_workers as _parse_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, want in ((16, 15), (2, 1), (1, 1)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert _parse_workers("auto") == want
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on the host share the cores
    assert _parse_workers("auto") == 7
    assert _parse_workers("0") == 0 and _parse_workers("3") == 3
    for bad in ("-1", "many"):
        with pytest.raises(typer.BadParameter):
            _parse_workers(bad)


def test_fp32_maps_stay_fp32_and_the_compute_path_is_recorded(tiny_dataset, narrow, tmp_path):
    manifest = load_manifest("folder", tiny_dataset)
    s = _settings(narrow, mode="eval", layout="1x1")
    out = tmp_path / "m.zarr"
    opts = ExtractOptions(feature_maps=True, feature_dtype="float32", workers=0)
    assert extract(manifest, out, narrow, s, opts).done == 6
    st = open_store(out)
    maps = st.group["crops/maps"][:]
    assert maps.dtype == np.float32
    assert (maps != maps.astype(np.float16).astype(np.float32)).any()  # not rounded to fp16 on the way
    assert st.attrs["compute"] == {"device": "cpu", "amp": False, "channels_last": False, "compile": False}
    # a store computed under CUDA autocast is not resumed with another precision
    st = open_store(out, mode="r+")
    st.update_attrs(compute={"device": "cuda", "amp": True})
    with pytest.raises(StoreError, match="compute.amp"):
        extract(manifest, out, narrow, s, opts)
