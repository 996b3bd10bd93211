"""Run locks: two independent runs never write the same shards of one store at once.

Each process of a run holds one lock file, `STORE/.vcache-locks/<i>-of-<n>.json`, for its share of the shards
(shard s belongs to share i of n when s % n == i). The file records host, pid, run id, share and a heartbeat
that a thread refreshes every `heartbeat_s`. A new process refuses to start while a live lock of another run
owns a share that overlaps its own; all ranks of one torchrun run share a run id and never conflict.

A lock is stale, and is taken over, when its heartbeat is older than `stale_s`, or at once when it was taken
on this host by a process that no longer exists, so a killed run never leaves a store stuck.
`vcache extract --force-unlock` removes every lock of a store (for a dead run on another host).
Two runs starting within the same instant could both pass the check; the window is milliseconds.
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

LOCK_DIR = ".vcache-locks"


class StoreLocked(RuntimeError):
    """Another live run is writing shards of this store."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shares_overlap(a: tuple[int, int], b: tuple[int, int], n_shards: int) -> bool:
    return any(s % a[1] == a[0] and s % b[1] == b[0] for s in range(n_shards))


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

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
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
        self._thread = threading.Thread(target=self._beat, name="vcache-lock-heartbeat", daemon=True)
        self._thread.start()

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


def force_unlock(store: str | Path) -> int:
    """Remove every lock of a store; returns how many there were."""
    d = Path(store) / LOCK_DIR
    n = len(list(d.glob("*.json"))) if d.exists() else 0
    shutil.rmtree(d, ignore_errors=True)
    return n
