"""Races of the object-storage protocol (vcache.store.remote) against moto's S3 server on 127.0.0.1: runs
started at one instant, claims, and a process killed in the middle of a takeover."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("obstore")

from vcache.store.lease import StoreLocked  # noqa: E402
from vcache.store.location import location  # noqa: E402
from vcache.store.remote import CREATED, LOCK_DIR, RemoteClaims, RemoteLock, create_remote  # noqa: E402

ROUNDS = 6


def _racer(url: str, run_id: str, start, held, out) -> None:
    """One of two processes: in each round, wait for the other, then both try to take the same share."""
    for r in range(ROUNDS):
        lock = RemoteLock(location(f"{url}/r{r}"), (0, 1), run_id, n_shards=4, heartbeat_s=60)
        start.wait()
        try:
            lock.acquire(wait_s=30)
            out.put((r, run_id, "held"))
            held.wait()  # keep the lease until both have tried
            lock.release()
        except StoreLocked:
            out.put((r, run_id, "refused"))
            held.wait()


def test_two_runs_started_at_one_instant_are_serialised(s3):
    """Two processes released by one barrier each check the leases and write their own, ROUNDS times: the
    mutex lets exactly one through each time (without it, both see no lease and both write one)."""
    ctx = mp.get_context("spawn")
    start, held, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    url = "s3://vc-test/race/mutex"
    procs = [ctx.Process(target=_racer, args=(url, rid, start, held, out)) for rid in ("run-a", "run-b")]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(2 * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(ROUNDS):
        outcomes = sorted(o for rr, _, o in results if rr == r)
        assert outcomes == ["held", "refused"], f"round {r}: {outcomes}"


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _record(pid: int, **kw) -> bytes:
    return json.dumps({"host": os.uname().nodename, "pid": pid, "time": 0, **kw}).encode()


def test_a_claim_is_held_by_one_process_only(s3):
    """Two live runs: the second claim of a shard fails while the first holds it (a plain put would let it
    through), and succeeds once the first gives it back."""
    loc = location("s3://vc-test/race/claims")
    a = RemoteClaims(RemoteLock(loc, (0, 2), "run-a", n_shards=4))
    b = RemoteClaims(RemoteLock(loc, (1, 2), "run-b", n_shards=4))
    assert a.claim(3)
    assert not b.claim(3), "a second process got a shard that is held"
    assert json.loads(loc.read(f"{LOCK_DIR}/shard-3.claim"))["run_id"] == "run-a"
    assert a.live() == [3]
    a.release(3)
    assert b.claim(3) and not a.claim(3)
    b.release(3)


def test_a_taker_killed_mid_takeover_does_not_block_the_object(s3):
    """A process that won `KEY.takeover-<ETag>` and died before removing KEY: the next process takes over
    the dead taker's key and then KEY (a claim, and a creation marker)."""
    loc = location("s3://vc-test/race/taker")
    claims = RemoteClaims(RemoteLock(loc, (0, 1), "run-new", n_shards=2))
    key = f"{LOCK_DIR}/shard-1.claim"
    loc.put(key, _record(_dead_pid(), run_id="run-dead", nonce="1"))
    tag = str(loc.head(key)["e_tag"]).strip('"')
    loc.put(f"{key}.takeover-{tag}", _record(_dead_pid(), nonce="2"))
    assert claims.claim(1), "the dead claim could not be taken over"
    assert json.loads(loc.read(key))["run_id"] == "run-new"
    claims.release(1)
    assert not loc.list(f"{key}")  # the claim and every takeover key of it are gone

    store = location("s3://vc-test/race/created.zarr")
    store.put(CREATED, _record(_dead_pid(), nonce="3"))
    tag = str(store.head(CREATED)["e_tag"]).strip('"')
    store.put(f"{CREATED}.takeover-{tag}", _record(_dead_pid(), nonce="4"))
    attrs = {"schema_version": 1, "n_videos": 1, "crops_per_video": 1, "videos_per_shard": 1}
    create_remote(store, lambda root: root.create_group("videos"), {**attrs, "feature_dim": 1}, wait_s=20)
    assert json.loads(store.read(CREATED))["pid"] == os.getpid()
    assert not store.list(f"{CREATED}.takeover-")


def test_the_root_is_published_in_one_put(s3, monkeypatch):
    """Every root zarr.json written during creation either lacks schema_version or carries every attribute:
    a reader (another rank) or a kill never sees a half-published store (zarr's attrs.update writes once
    per key)."""
    from zarr.storage import ObjectStore

    real, roots = ObjectStore.set, []

    async def recorded(self, key, value, *a, **kw):
        if key == "zarr.json":
            roots.append(json.loads(value.to_bytes()).get("attributes", {}))
        return await real(self, key, value, *a, **kw)

    monkeypatch.setattr(ObjectStore, "set", recorded)
    attrs = {"schema_version": 1, "n_videos": 1, "crops_per_video": 1, "videos_per_shard": 1}
    attrs["feature_dim"] = 1
    create_remote(location("s3://vc-test/race/one-put.zarr"), lambda root: None, attrs)
    published = [r for r in roots if "schema_version" in r]
    assert published == [attrs], roots
