"""Run locks: two independent runs never write the same shards of one store at once.

Each process of a run holds one lock file, `STORE/.vcache-locks/<i>-of-<n>.json`, for its share of the shards
(shard s belongs to share i of n when s % n == i). The file records host, pid, run id, share and a heartbeat
that a thread refreshes every `heartbeat_s`. A new process refuses to start while a live lock of another run
owns a share that overlaps its own; all ranks of one torchrun run share a run id and never conflict.

A lock is stale, and is taken over, when its heartbeat is older than `stale_s`, or at once when it was taken
on this host by a process that no longer exists, so a killed run never leaves a store stuck.
`vcache extract --force-unlock` removes every lock of a store (for a dead run on another host).

The check and the write of a lock happen under `LOCK_DIR/acquire.mutex`, a file created with O_EXCL, so two
runs started at the same instant are serialised: the second sees the first's lock. A mutex left by a dead
process (gone on this host, or older than `MUTEX_STALE_S`) is moved aside and taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from vcache.store.lease import StoreLocked, pid_alive, shares_overlap

LOCK_DIR = ".vcache-locks"
MUTEX_STALE_S = 30.0  # a lock check takes milliseconds; a mutex this old was left by a dead process
_pid_alive = pid_alive


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class StoreLock:
    def __init__(
        self,
        store: str | Path,
        share: tuple[int, int],
        run_id: str,
        n_shards: int,
        stale_s: float = 60.0,
        heartbeat_s: float = 10.0,
    ):
        self.dir = Path(store) / LOCK_DIR
        self.share, self.run_id, self.n_shards = share, run_id, n_shards
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.path = self.dir / f"{share[0]}-of-{share[1]}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "share": list(self.share),
            "heartbeat": time.time(),
        }

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(self._record()))
        os.replace(tmp, self.path)

    def is_stale(self, rec: dict) -> bool:
        if time.time() - float(rec.get("heartbeat", 0)) > self.stale_s:
            return True
        return rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1)))

    def holders(self) -> list[tuple[Path, dict]]:
        out = []
        for p in sorted(self.dir.glob("*.json")) if self.dir.exists() else []:
            try:
                out.append((p, json.loads(p.read_text())))
            except (OSError, ValueError):
                continue  # being replaced right now, or garbage: ignore
        return out

    def acquire(self, wait_s: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        mutex = self.dir / "acquire.mutex"
        deadline = time.monotonic() + wait_s
        while not _take_mutex(mutex):
            if time.monotonic() > deadline:
                raise StoreLocked(f"{mutex} held for over {wait_s:g} s; remove it if no run is starting")
            time.sleep(0.02)
        try:
            self._check_and_write()
        finally:
            mutex.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="vcache-lock-heartbeat", daemon=True)
        self._thread.start()

    def _check_and_write(self) -> None:
        for p, rec in self.holders():
            if rec.get("run_id") == self.run_id:
                continue
            if self.is_stale(rec):
                p.unlink(missing_ok=True)  # take over from a dead run
                continue
            share = tuple(rec.get("share", (0, 1)))
            if shares_overlap(self.share, share, self.n_shards):  # type: ignore[arg-type]
                age = time.time() - float(rec.get("heartbeat", 0))
                raise StoreLocked(
                    f"{self.dir.parent} is being written by run {rec.get('run_id')} (host {rec.get('host')}, "
                    f"pid {rec.get('pid')}, part {share[0]}/{share[1]}, heartbeat {age:.0f} s ago); wait for "
                    "it to finish, or use --force-unlock if that run is dead"
                )
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:
                pass  # a full disk must not kill the run here; the write path reports it

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
        try:
            self.dir.rmdir()  # only when empty
        except OSError:
            pass

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _take_mutex(path: Path) -> bool:
    """Create `path` exclusively (True), or take it over from a dead holder (then try again: False)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            rec = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False  # being written or removed right now
        dead = rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1)))
        if dead or age > MUTEX_STALE_S:
            grave = path.with_name(f"{path.name}.dead-{uuid.uuid4().hex}")
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                return False
            try:
                fresh = json.loads(grave.read_text() or "{}") != rec
            except (OSError, ValueError):
                fresh = True
            if fresh:  # another process took over first and we moved its new mutex: put it back
                os.rename(grave, path)
            else:
                grave.unlink(missing_ok=True)
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
    return True


class ShardClaims:
    """Dynamic shares: a process writes shard s only while it holds ``LOCK_DIR/shard-<s>.claim``.

    A claim is created atomically (O_EXCL), so two processes never hold one shard; it is released once the
    shard is written. A claim is dead, and taken over, when its process is gone (same host) or, from
    another host, when no live run lock carries its run id. Takeover renames the dead file away first, so
    of two processes taking over at once only one wins.
    """

    def __init__(self, lock: StoreLock):
        self.lock, self.dir = lock, lock.dir
        self.host, self.pid = socket.gethostname(), os.getpid()

    def path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard}.claim"

    def _read(self, p: Path) -> dict | None:
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None  # gone, or being written right now (O_EXCL done, JSON not yet): treat as live

    def is_dead(self, rec: dict) -> bool:
        if rec.get("host") == self.host:
            return not _pid_alive(int(rec.get("pid", -1)))
        live = [r for _, r in self.lock.holders() if not self.lock.is_stale(r)]
        return not any(r.get("run_id") == rec.get("run_id") for r in live)

    def claim(self, shard: int) -> bool:
        """True when this process now holds ``shard``."""
        p = self.path(shard)
        for _ in range(3):
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                rec = self._read(p)
                if rec is None or not self.is_dead(rec):
                    return False
                grave = p.with_name(f"{p.name}.dead-{uuid.uuid4().hex}")
                try:
                    os.rename(p, grave)
                except FileNotFoundError:
                    return False  # another process took it over first
                if self._read(grave) != rec:  # we moved a fresh claim made meanwhile: put it back
                    os.rename(grave, p)
                    return False
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"run_id": self.lock.run_id, "host": self.host, "pid": self.pid}, f)
            return True
        return False

    def release(self, shard: int) -> None:
        self.path(shard).unlink(missing_ok=True)

    def live(self) -> list[int]:
        """Shards claimed by live processes (this one included)."""
        out = []
        for p in self.dir.glob("shard-*.claim") if self.dir.exists() else []:
            rec = self._read(p)
            if rec is None or not self.is_dead(rec):
                out.append(int(p.name.split("-")[1].split(".")[0]))
        return sorted(out)


def others_alive(lock: StoreLock) -> bool:
    """Whether a live process of another run holds a lock on the store (its temporaries are not ours)."""
    return any(r.get("run_id") != lock.run_id and not lock.is_stale(r) for _, r in lock.holders())


def open_lock(store, share: tuple[int, int], run_id: str, n_shards: int, **kw):
    """The run lock of a store: `StoreLock` for a folder, `RemoteLock` on object storage."""
    from vcache.store.location import Remote, location

    loc = location(store)
    if isinstance(loc, Remote):
        from vcache.store.remote import RemoteLock

        return RemoteLock(loc, share, run_id, n_shards, **kw)
    return StoreLock(loc, share, run_id, n_shards, **kw)


def claims_for(lock):
    """Shard claims beside `lock` (`ShardClaims`, or `RemoteClaims` on object storage)."""
    if isinstance(lock, StoreLock):
        return ShardClaims(lock)
    from vcache.store.remote import RemoteClaims

    return RemoteClaims(lock)


def force_unlock(store: str | Path) -> int:
    """Remove every lock of a store; returns how many there were."""
    from vcache.store.location import Remote, location

    loc = location(store)
    if isinstance(loc, Remote):
        keys = [k for k in loc.list(f"{LOCK_DIR}/") if k.endswith(".json") and "/shard-" not in k]
        loc.delete_all(f"{LOCK_DIR}/")
        return len(keys)
    d = Path(store) / LOCK_DIR
    n = len(list(d.glob("*.json"))) if d.exists() else 0
    shutil.rmtree(d, ignore_errors=True)
    return n
