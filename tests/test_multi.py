"""Several backbones from one decode of each video (issue 12): ``vcache extract --backbone a,b,c -o DIR``.

Two tiny built-in backbones that share their crop settings (16 frames at stride 2, 64 px) and a tiny
VideoMAE saved with ``save_pretrained`` (4 frames at stride 4, 32 px: a second group with another input
size). Every store is compared with a run of its backbone alone, on real decord, real workers, real stores."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_hf import make
from test_reliability import _assert_same_store
from typer.testing import CliRunner

import vcache.extract.workers as workers
from vcache.cli.app import app
from vcache.cli.extract import store_name
from vcache.data.crops import CropSettings
from vcache.extract.workers import (
    DecodePool,
    DecodeTask,
    crop_shape,
    decode_task,
    slot_shape,
    split_crops,
)
from vcache.store import DONE, open_store

VC = [sys.executable, "-m", "vcache.cli"]
COMMON = ["--crops", "2", "--videos-per-shard", "1", "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def vmae(tmp_path_factory) -> Path:
    return make("videomae", tmp_path_factory.mktemp("hf") / "vmae")


def _names(vmae: Path) -> list[str]:
    return ["r3d_18_narrow", "cvrl_r3d_narrow", f"hf:{vmae}"]


def _cli(*args: str) -> str:
    r = CliRunner().invoke(app, ["extract", *args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def singles(tiny_dataset, vmae, tmp_path_factory) -> dict[str, Path]:
    """Each backbone alone (in-process decoding): what the shared run must reproduce, store by store."""
    d = tmp_path_factory.mktemp("singles")
    out = {}
    for name in _names(vmae):
        out[name] = d / f"{store_name(name)}.zarr"
        _cli(str(tiny_dataset), "-o", str(out[name]), "--backbone", name, "--workers", "0", *COMMON)
    return out


def _assert_like_singles(multi: Path, singles: dict[str, Path]) -> None:
    """Same crops, boxes, flips and records as each backbone's own run; the features of the group that
    sets the decode size (64 px) equal within fp16; the 32 px group's crops are cut from that larger
    decode, so its features are close but not fp16-equal (docs/store.md, "Several backbones")."""
    for name, ref in singles.items():
        got = multi / f"{store_name(name)}.zarr"
        if name.startswith("hf:"):
            a, b = open_store(ref), open_store(got)
            assert np.array_equal(a.status(), b.status()) and (b.status() == DONE).all()
            for f in ("boxes", "flip"):
                assert np.array_equal(a.group[f"crops/{f}"][:], b.group[f"crops/{f}"][:]), f
            fa = a.group["crops/features"][:].astype(np.float32)
            fb = b.group["crops/features"][:].astype(np.float32)
            assert np.abs(fa - fb).max() < 0.1 * np.abs(fa).max()
        else:
            _assert_same_store(ref, got)


def test_one_decode_feeds_every_backbone_as_its_own_run_would(
    tiny_dataset, vmae, singles, tmp_path, monkeypatch
):
    calls = []
    real = workers.decode_task

    def counted(task, out=None):
        calls.append(len(task.groups))
        return real(task, out)

    monkeypatch.setattr(workers, "decode_task", counted)  # in-process decoding (--workers 0) calls it
    out = tmp_path / "multi"
    _cli(str(tiny_dataset), "-o", str(out), "--backbone", ",".join(_names(vmae)), "--workers", "0", *COMMON)
    assert calls == [2] * 6  # one decode per video, cutting both crop sets
    assert sorted(p.name for p in out.iterdir()) == [
        "cvrl_r3d_narrow.zarr",
        "hf-vmae.zarr",
        "r3d_18_narrow.zarr",
    ]
    _assert_like_singles(out, singles)
    # the stores that share a group share crops exactly
    a, b = open_store(out / "r3d_18_narrow.zarr"), open_store(out / "cvrl_r3d_narrow.zarr")
    assert np.array_equal(a.group["crops/boxes"][:], b.group["crops/boxes"][:])
    assert a.attrs["sampling"] == b.attrs["sampling"] != open_store(out / "hf-vmae.zarr").attrs["sampling"]


def test_crop_sets_from_one_decode_and_through_a_shared_memory_slot(tiny_dataset):
    """The set with the larger decode size is cut exactly as alone; the other from the same frames."""
    path = str(sorted(tiny_dataset.rglob("*.mp4"))[0])
    a = CropSettings(
        mode="train", clip_frames=8, frame_stride=2, input_size=64, resize_short=73, crops_per_video=3
    )
    b = CropSettings(mode="eval", clip_frames=4, frame_stride=4, input_size=32, resize_short=32, layout="2x3")
    alone = [decode_task(DecodeTask(0, path, "k.mp4", s)) for s in (a, b)]
    both = decode_task(DecodeTask(0, path, "k.mp4", a, more=(b,)))
    shapes = [crop_shape(a), crop_shape(b)]
    va, vb = split_crops(both.crops, shapes)
    assert np.array_equal(va, alone[0].crops)
    assert np.abs(vb.astype(np.int16) - alone[1].crops).mean() < 1.0  # grey levels of 255
    assert np.array_equal(both.boxes, np.concatenate([alone[0].boxes, alone[1].boxes]))
    assert np.array_equal(both.flips, np.concatenate([alone[0].flips, alone[1].flips]))
    # a worker decodes both sets into one flat slot; eval mode's K = 6 crops fit their slot too
    with DecodePool(1, 600, slot_shape((a, b)), slots=2) as pool:
        assert pool.transport == "shm"
        pool.submit(DecodeTask(0, path, "k.mp4", a, more=(b,)))
        pool.submit(DecodeTask(1, path, "k.mp4", b))
        got = {}
        while len(got) < 2:
            for res in pool.get(block=True):
                got[res.index] = res
        assert got[0].slot is not None and got[1].slot is not None
        sa, sb = split_crops(got[0].crops, shapes)
        assert np.array_equal(sa, va) and np.array_equal(sb, vb)
        assert np.array_equal(split_crops(got[1].crops, [crop_shape(b)])[0], alone[1].crops)


def test_kill_then_resume_counts_each_store_apart(tiny_dataset, vmae, singles, tmp_path):
    """One store already complete (its backbone ran alone before); a shared run killed mid-way, then the same
    command again: each store redoes only its own pending videos."""
    out = tmp_path / "multi"
    out.mkdir()
    shutil.copytree(singles["cvrl_r3d_narrow"], out / "cvrl_r3d_narrow.zarr")
    args = [str(tiny_dataset), "-o", str(out), "--backbone", ",".join(_names(vmae)), *COMMON]
    p = subprocess.Popen([*VC, "extract", *args], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        first = out / "r3d_18_narrow.zarr"
        while time.monotonic() < deadline and p.poll() is None:
            if (first / "zarr.json").exists() and (open_store(first).status() == DONE).sum() >= 2:
                break
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    done = (open_store(first).status() == DONE).sum()
    assert 2 <= done < 6, "the kill came too late to test a resume"
    log = "".join(_cli(*args).split())  # without the spaces and line breaks rich adds to fit the terminal
    assert "/cvrl_r3d_narrow.zarr:6/6done,0failed,0pending;thisrun0videos" in log, log
    assert f"/r3d_18_narrow.zarr:6/6done,0failed,0pending;thisrun{6 - done}videos" in log, log
    _assert_like_singles(out, singles)


def test_parts_share_the_work_and_bad_lists_are_refused(tiny_dataset, vmae, singles, tmp_path):
    out = tmp_path / "multi"
    args = [str(tiny_dataset), "-o", str(out), "--backbone", ",".join(_names(vmae)), *COMMON]
    for part in ("0/2", "1/2"):
        _cli(*args, "--part", part)
    _assert_like_singles(out, singles)
    for bad in ("r3d_18_narrow,,cvrl_r3d_narrow", "r3d_18_narrow,r3d_18_narrow"):
        r = CliRunner().invoke(app, ["extract", str(tiny_dataset), "-o", str(out), "--backbone", bad])
        assert r.exit_code == 2 and "each once" in r.output
    r = CliRunner().invoke(
        app, ["extract", *args, "--backbone", "r3d_18_narrow,cvrl_r3d_narrow", "--checkpoint", __file__]
    )
    assert r.exit_code == 2 and "several backbones" in r.output


def test_store_names():
    assert store_name("r3d_18_narrow") == "r3d_18_narrow"
    assert store_name("hf:MCG-NJU/videomae-base") == "hf-MCG-NJU--videomae-base"
    assert store_name("mypkg.models:build") == "mypkg.models-build"
