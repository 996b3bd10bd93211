"""Creation, run locks and shard claims of a store on object storage, built on conditional puts.

Object stores have no rename and no O_EXCL file; they have whole-object puts and ``If-None-Match: *`` puts
(`Remote.put_if_absent`: of two processes creating one key, exactly one succeeds). Three uses:

- Creation: ``.vcache-created`` is put-if-absent by the creator (host, pid, time); the winner deletes whatever
  a dead creator left (every key but ``.vcache-*``), builds every array, and writes the root ``zarr.json``
  with the store's attributes last. A store is published once its root carries ``schema_version``; until
  then `open_store` refuses it and other processes wait. A dead creator's marker (its pid gone on this host,
  or older than an hour) is taken over by whoever wins ``.vcache-created.takeover-<etag>``, a put-if-absent
  keyed on the dead marker's ETag, so two processes never both take over one marker.
- Run locks (`RemoteLock`, the interface of `vcache.store.lock.StoreLock`): ``.vcache-locks/<i>-of-<n>.json``
  leases whose heartbeat a thread rewrites every ``heartbeat_s``. The check-and-write runs under
  ``.vcache-locks/acquire.mutex``, put-if-absent, so two runs starting at once are serialised. A stale lease
  (heartbeat older than ``stale_s``, or its pid gone on this host) is removed; a stale mutex is taken over as
  above (takeover key on its ETag).
- Shard claims (`RemoteClaims`, as `vcache.store.lock.ShardClaims`): ``.vcache-locks/shard-<s>.claim``
  put-if-absent; a dead claim is taken over through a takeover key on its ETag.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable

import zarr

from vcache.store.lease import StoreLocked, shares_overlap
from vcache.store.lease import pid_alive as _pid_alive
from vcache.store.location import AlreadyExists, Remote

LOCK_DIR = ".vcache-locks"
CREATED = ".vcache-created"
OTHER_HOST_DEAD_S = 3600.0  # a creation marker from another host this old is a dead creation
MUTEX_STALE_S = 30.0
TAKEOVER_STALE_S = 30.0  # a takeover key from another host this old: its taker died mid-takeover


def _me() -> dict:
    """Who writes an object; the nonce makes every version's bytes, hence its ETag (an MD5 on S3), unique."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "nonce": uuid.uuid4().hex}


def _load(loc: Remote, key: str) -> dict | None:
    raw = loc.read(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def _tag(head: dict) -> str:
    return str(head.get("e_tag") or head.get("last_modified")).strip('"')


def _taker_dead(rec: dict) -> bool:
    """Whether the process that wrote a takeover key died before finishing its takeover (a takeover takes
    a few requests: one older than TAKEOVER_STALE_S from another host is dead too)."""
    if rec.get("host") == socket.gethostname():
        return not _pid_alive(int(rec.get("pid", -1)))
    return time.time() - float(rec.get("time", 0)) > TAKEOVER_STALE_S


def _take_over(loc: Remote, key: str, depth: int = 0) -> bool:
    """Remove the dead object at `key` if this process wins its takeover (one winner per object version).

    A taker killed between winning ``KEY.takeover-<ETag>`` and removing the object would leave that version
    unremovable forever; so a takeover key whose writer is dead is itself taken over (one level deeper, the
    same way), and the race for it run again."""
    head = loc.head(key)
    if head is None:
        return True  # gone already: try to create it again
    tag = _tag(head)
    right = f"{key}.takeover-{tag}"
    try:
        loc.put_if_absent(right, json.dumps(_me()).encode())
    except AlreadyExists:
        rec = _load(loc, right)
        if depth >= 3 or rec is None or not _taker_dead(rec) or not _take_over(loc, right, depth + 1):
            return False
        try:  # the dead taker's key is gone: race for the right again
            loc.put_if_absent(right, json.dumps(_me()).encode())
        except AlreadyExists:
            return False
    again = loc.head(key)  # still the version we judged dead (not one created after its removal)?
    if again is not None and _tag(again) == tag:
        loc.delete(key)
    return True


def published(loc: Remote) -> bool:
    raw = loc.read("zarr.json")
    return raw is not None and "schema_version" in json.loads(raw).get("attributes", {})


def create_remote(
    loc: Remote, build: Callable[[zarr.Group], None], attrs: dict, wait_s: float = 600.0
) -> None:
    """Create the store at `loc` (see the module docstring). Raises FileExistsError when another process
    created it (after waiting for it to be published): the caller opens that store instead."""
    deadline = time.monotonic() + wait_s
    while True:
        if published(loc):
            raise FileExistsError(str(loc))
        try:
            loc.put_if_absent(CREATED, json.dumps(_me()).encode())
            break
        except AlreadyExists:
            rec = _load(loc, CREATED) or {}
            same = rec.get("host") == socket.gethostname()
            dead = (same and not _pid_alive(int(rec.get("pid", -1)))) or (
                not same and time.time() - float(rec.get("time", 0)) > OTHER_HOST_DEAD_S
            )
            if dead and not published(loc) and _take_over(loc, CREATED):
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{loc}: still being created by {rec} after {wait_s:g} s") from None
            time.sleep(0.2)
    if published(loc):  # finished by another process between our check and our marker: ours is moot
        raise FileExistsError(str(loc))
    for key in loc.list():
        if not key.startswith(".vcache-"):  # a dead creation's arrays, or a root without attributes
            loc.delete(key)
    root = zarr.open_group(loc.zarr_store(), mode="a")
    build(root)
    # The root zarr.json with every attribute, in one put, written last: it publishes the store. (zarr's
    # attrs.update writes zarr.json once per key, so a reader or a kill could see schema_version alone.)
    root.attrs.put(attrs)
    for key in loc.list(f"{CREATED}.takeover-"):
        loc.delete(key)


class RemoteLock:
    """`StoreLock` on object storage: lease objects with heartbeats (see the module docstring)."""

    def __init__(self, store: Remote, share, run_id: str, n_shards: int, stale_s=60.0, heartbeat_s=10.0):
        import threading

        self.loc, self.dir = store, store  # `dir` for the claims, as StoreLock
        self.share, self.run_id, self.n_shards = tuple(share), run_id, n_shards
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.key = f"{LOCK_DIR}/{share[0]}-of-{share[1]}.json"
        self._stop = threading.Event()
        self._thread = None

    def _record(self) -> dict:
        return {**_me(), "run_id": self.run_id, "share": list(self.share), "heartbeat": time.time()}

    def is_stale(self, rec: dict) -> bool:
        if time.time() - float(rec.get("heartbeat", 0)) > self.stale_s:
            return True
        return rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1)))

    def holders(self) -> list[tuple[str, dict]]:
        out = []
        for key in self.loc.list(f"{LOCK_DIR}/"):
            if key.endswith(".json") and "/shard-" not in key:
                rec = _load(self.loc, key)
                if rec:
                    out.append((key, rec))
        return out

    def acquire(self, wait_s: float = 60.0) -> None:
        mutex = f"{LOCK_DIR}/acquire.mutex"
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.loc.put_if_absent(mutex, json.dumps(_me()).encode())
                break
            except AlreadyExists:
                rec = _load(self.loc, mutex) or {}
                dead = rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1)))
                stale = dead or time.time() - float(rec.get("time", 0)) > MUTEX_STALE_S
                if stale and _take_over(self.loc, mutex):
                    continue
                if time.monotonic() > deadline:
                    raise StoreLocked(f"{self.loc}/{mutex} held for over {wait_s:g} s") from None
                time.sleep(0.05)
        try:
            for key, rec in self.holders():
                if rec.get("run_id") == self.run_id:
                    continue
                if self.is_stale(rec):
                    self.loc.delete(key)  # take over from a dead run
                    continue
                share = tuple(rec.get("share", (0, 1)))
                if shares_overlap(self.share, share, self.n_shards):
                    age = time.time() - float(rec.get("heartbeat", 0))
                    raise StoreLocked(
                        f"{self.loc} is being written by run {rec.get('run_id')} (host {rec.get('host')}, "
                        f"pid {rec.get('pid')}, part {share[0]}/{share[1]}, heartbeat {age:.0f} s ago); wait "
                        "for it to finish, or use --force-unlock if that run is dead"
                    )
            self.loc.put(self.key, json.dumps(self._record()).encode())
        finally:
            self.loc.delete(mutex)
        for key in self.loc.list(f"{LOCK_DIR}/"):  # takeover keys of objects long gone: leftovers
            if ".takeover-" in key and time.time() - _mtime(self.loc, key) > 600:
                self.loc.delete(key)
        import threading

        self._thread = threading.Thread(target=self._beat, name="vcache-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.loc.put(self.key, json.dumps(self._record()).encode())
            except Exception:  # a flaky network must not kill the run here; the write path reports it
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.loc.delete(self.key)

    def __enter__(self) -> RemoteLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _mtime(loc: Remote, key: str) -> float:
    head = loc.head(key)
    return head["last_modified"].timestamp() if head else time.time()


class RemoteClaims:
    """`ShardClaims` on object storage: put-if-absent claim objects (see the module docstring)."""

    def __init__(self, lock: RemoteLock):
        self.lock, self.loc = lock, lock.loc
        self.host, self.pid = socket.gethostname(), os.getpid()

    def key(self, shard: int) -> str:
        return f"{LOCK_DIR}/shard-{shard}.claim"

    def is_dead(self, rec: dict) -> bool:
        if rec.get("host") == self.host:
            return not _pid_alive(int(rec.get("pid", -1)))
        live = [r for _, r in self.lock.holders() if not self.lock.is_stale(r)]
        return not any(r.get("run_id") == rec.get("run_id") for r in live)

    def claim(self, shard: int) -> bool:
        rec = {**_me(), "run_id": self.lock.run_id}
        for _ in range(3):
            try:
                self.loc.put_if_absent(self.key(shard), json.dumps(rec).encode())
                return True
            except AlreadyExists:
                old = _load(self.loc, self.key(shard))
                if old is None:
                    continue  # released meanwhile
                if not old or not self.is_dead(old) or not _take_over(self.loc, self.key(shard)):
                    return False
        return False

    def release(self, shard: int) -> None:
        """Give the claim back, with the takeover keys of its dead predecessors (the shard is written, or
        given back unwritten: no process still judges those old versions)."""
        self.loc.delete(self.key(shard))
        for key in self.loc.list(f"{self.key(shard)}.takeover-"):
            self.loc.delete(key)

    def live(self) -> list[int]:
        out = []
        for key in self.loc.list(f"{LOCK_DIR}/shard-"):
            if key.endswith(".claim"):
                rec = _load(self.loc, key)
                if rec is None:
                    continue
                if not rec or not self.is_dead(rec):
                    out.append(int(key.rsplit("shard-", 1)[1].split(".")[0]))
        return sorted(out)
