"""What the folder locks (vcache.store.lock) and the object-storage leases (vcache.store.remote) share."""

from __future__ import annotations

import os


class StoreLocked(RuntimeError):
    """Another live run is writing shards of this store."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shares_overlap(a: tuple[int, int], b: tuple[int, int], n_shards: int) -> bool:
    return any(s % a[1] == a[0] and s % b[1] == b[0] for s in range(n_shards))
