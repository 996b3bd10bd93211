"""Stage 2 on object storage: whole-shard concurrent reads and the verified local copy (`--cache-dir`),
against moto's S3 server on 127.0.0.1 (the fixture of test_object_store)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading

import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("obstore")

from stage2_helpers import make_store  # noqa: E402

from vcache.store import FAILED, StoreError, VideoMeta, load_cache, open_store  # noqa: E402
from vcache.store.location import location  # noqa: E402
from vcache.store.mirror import RECORD, copy_path  # noqa: E402


def _fail_some(path, videos) -> None:
    """Mark `videos` failed (rewriting their shards), so loads must skip them."""
    st = open_store(path, mode="r+")
    for s in sorted({v // st.videos_per_shard for v in videos}):
        data = st.shard_data(s)
        metas = st.finished_metas(s, data)
        for j, v in enumerate(st.shard_videos(s)):
            if v in videos:
                metas[j] = VideoMeta(status=FAILED, reason="test")
        st.write_shard(s, data["crops/features"], data["crops/boxes"], data["crops/flip"], metas)


def _same(a, b) -> None:
    assert np.array_equal(a.index, b.index) and a.paths == b.paths
    for name in ("features", "boxes", "flips", "labels"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory):
    """The same store locally and on S3, 12 videos in 3 shards of 4, two of them failed."""
    local = tmp_path_factory.mktemp("st") / "s.zarr"
    url = "s3://vc-test/stage2/s.zarr"
    make_store(local, n_videos=12, crops=2, dim=4, videos_per_shard=4, seed=3)
    _fail_some(local, {1, 9})
    loc = location(url)
    for f in sorted(f for f in local.rglob("*") if f.is_file()):  # the same objects, put as they are
        loc.put(str(f.relative_to(local)), f.read_bytes())
    return local, url


def test_remote_loads_equal_local(pair):
    local, url = pair
    whole = load_cache(local)
    assert whole.index.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 10, 11]  # failed videos 1 and 9 left out
    st = open_store(local)  # the rows straight from the arrays, as reference
    for name, got in (("features", whole.features), ("boxes", whole.boxes), ("flip", whole.flips)):
        rows = st.group[f"crops/{name}"][:].reshape(12, 2, *got.shape[2:])
        assert np.array_equal(got, rows[whole.index]), name
    _same(whole, load_cache(url))
    _same(load_cache(local, shards=[2, 0]), load_cache(url, shards=[2, 0]))
    _same(load_cache(local, include_failed=True), load_cache(url, include_failed=True))
    assert load_cache(url, shards=[2, 0]).index.tolist() == [8, 10, 11, 0, 2, 3]  # the order asked for


def test_reads_are_whole_shards_in_flight_together(pair, monkeypatch):
    """One read per (shard, array) of the crops, several in flight at once: not row by row, not in turn."""
    from zarr.storage import ObjectStore

    _, url = pair
    real = ObjectStore.get
    keys, flight, top = [], [0], [0]
    lock = threading.Lock()

    async def counted(self, key, *a, **kw):
        with lock:
            keys.append(key)
            flight[0] += 1
            top[0] = max(top[0], flight[0])
        try:
            if key.startswith("crops/") and "/c/" in key:
                await asyncio.sleep(0.02)  # a slower network: reads that overlap show it
            return await real(self, key, *a, **kw)
        finally:
            with lock:
                flight[0] -= 1

    monkeypatch.setattr(ObjectStore, "get", counted)
    load_cache(url)
    chunks = sorted(k for k in keys if k.startswith("crops/") and "/c/" in k)
    ends = {"features": "/0", "boxes": "/0", "flip": ""}  # 2-d arrays: one chunk across the columns
    want = [f"crops/{a}/c/{s}{end}" for a, end in ends.items() for s in range(3)]
    assert chunks == sorted(want)
    assert top[0] > 1, "reads went one at a time"


def test_local_copy_reused_refreshed_and_verified(pair, tmp_path, monkeypatch):
    local, url = pair
    monkeypatch.setenv("VCACHE_CACHE_DIR", str(tmp_path / "cache"))
    copy = copy_path(url, tmp_path / "cache")
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = copy.parent / f".{copy.name}.copying-0a1b2c3d-{dead.pid}"  # a copy killed half-way
    (killed / "crops").mkdir(parents=True)
    _same(load_cache(local), load_cache(url))
    assert not killed.exists()
    rec = json.loads((copy / RECORD).read_text())
    assert rec["url"] == url and not (copy / ".vcache-locks").exists()
    stamp = (copy / RECORD).stat().st_mtime_ns
    load_cache(url)
    assert (copy / RECORD).stat().st_mtime_ns == stamp  # unchanged store: the copy is reused
    # the store changes (one shard rewritten): the next load copies it again and sees the change
    other = "s3://vc-test/stage2/changed.zarr"
    make_store(other, n_videos=8, crops=2, dim=4, videos_per_shard=4, seed=3)
    load_cache(other)
    st = open_store(other, mode="r+")
    data = st.shard_data(1)
    metas = st.finished_metas(1, data)
    st.write_shard(1, data["crops/features"] + 1, data["crops/boxes"], data["crops/flip"], metas)
    got = load_cache(other)
    monkeypatch.delenv("VCACHE_CACHE_DIR")
    _same(got, load_cache(other))
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one copy per store, the old one replaced


def test_a_damaged_remote_shard_is_not_copied(s3, tmp_path, monkeypatch):
    url = "s3://vc-test/stage2/damaged.zarr"
    make_store(url, n_videos=8, crops=2, dim=4, videos_per_shard=4)
    loc = location(url)
    loc.put("crops/boxes/c/1/0", loc.read("crops/boxes/c/0/0"))  # shard 1's boxes swapped for shard 0's
    monkeypatch.setenv("VCACHE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(StoreError, match="shard 1 of the copy is damaged.*checksum"):
        load_cache(url)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-copied left behind


def test_cache_dir_on_the_command_line(pair, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vcache.cli.app import app

    _, url = pair
    monkeypatch.delenv("VCACHE_CACHE_DIR", raising=False)  # the option sets it: undone after the test
    out, cache = tmp_path / "r", tmp_path / "cache"
    argv = ["--cache-dir", str(cache), "probe", "knn", url, url, "--out", str(out), "--k", "3"]
    r = CliRunner().invoke(app, [*argv, "--allow-overlap"])
    assert r.exit_code == 0, r.output
    assert (copy_path(url, cache) / RECORD).exists()
    (res,) = out.rglob("*.json")
    assert url in res.read_text()  # the result names the store, not its copy
