"""A verified local copy of a store on object storage, for stage 2 (`vcache --cache-dir DIR`).

`local_copy(url, folder)` returns ``folder/<name>-<sha256(url)[:12]>``, a plain local store holding every
object of the remote one (its locks aside). The copy is reused while the remote store is unchanged and
replaced when it changed. What "unchanged" means: the same *fingerprint*, a SHA-256 over the sorted
(key, size, ETag) of every object of the store, from one listing (one request per 1,000 objects). Any put to
the store (a shard written, a status chunk, the root attributes) gives its object a new ETag, so the
fingerprint moves whenever the store does; the per-shard digests and status chunks are among those
objects.

A new copy is downloaded into a temporary folder beside the final one (objects fetched concurrently), then
verified before it is used:
- every object has the size the listing gave;
- every shard marked finished matches the SHA-256 digest written with it (`shards/digest`), so a copy of
  a store caught between puts, or corrupted on the way, is refused;
- the store is listed again and must still have the same fingerprint (nothing was written meanwhile);
then ``.vcache-copy.json`` (URL, fingerprint, time) is written and the folder renamed into place. A store
that keeps changing while it is copied (an extraction still running) is refused after three tries. A copy
killed half-way leaves ``.NAME.copying-<id>-<pid>``, removed by the next copy once that pid is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vcache.store.format import StoreError, open_store
from vcache.store.lease import pid_alive
from vcache.store.location import Remote, location
from vcache.store.verify import damaged_shards

RECORD = ".vcache-copy.json"
TRIES = 3


def _objects(loc: Remote) -> dict[str, tuple[int, str]]:
    """Key -> (size, ETag) of every object of the store but its locks and takeover keys."""
    out = {}
    for m in loc.list_meta():
        key = m["path"]
        if not key.startswith(".vcache-locks/") and ".takeover-" not in key:
            out[key] = (int(m["size"]), str(m.get("e_tag") or m.get("last_modified")))
    return out


def fingerprint(objects: dict[str, tuple[int, str]]) -> str:
    h = hashlib.sha256()
    for key in sorted(objects):
        size, tag = objects[key]
        h.update(f"{key}\t{size}\t{tag}\n".encode())
    return h.hexdigest()


def copy_path(url: str, folder: Path) -> Path:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "store"
    return Path(folder) / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _record(path: Path) -> dict:
    try:
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def local_copy(url: str | Path, folder: Path, threads: int = 16) -> Path:
    """The local copy of the store at `url` under `folder`, downloaded or refreshed when needed."""
    loc = location(url)
    if not isinstance(loc, Remote):
        raise ValueError(f"{url}: a local store needs no local copy")
    final = copy_path(str(loc), folder)
    for _ in range(TRIES):
        objects = _objects(loc)
        if "zarr.json" not in objects:
            raise StoreError(f"{loc}: not a vcache store (no zarr.json)")
        fp = fingerprint(objects)
        if _record(final).get("fingerprint") == fp:
            return final  # unchanged since it was copied
        got = _download(loc, objects, final, threads)
        if got is None:
            continue  # an object changed while we copied it: try again
        changed = fingerprint(_objects(loc)) != fp
        bad = {} if changed else _damaged(got)
        if changed or bad:
            shutil.rmtree(got, ignore_errors=True)
        if changed:
            continue
        if bad:
            s, why = next(iter(sorted(bad.items())))
            raise StoreError(f"{loc}: shard {s} of the copy is damaged ({why}); run `vcache verify {loc}`")
        (got / RECORD).write_text(json.dumps({"url": str(loc), "fingerprint": fp, "time": time.time()}))
        _replace(got, final)
        return final
    raise StoreError(f"{loc}: the store changed during each of {TRIES} copies (is a run writing it?)")


def _download(loc: Remote, objects: dict[str, tuple[int, str]], final: Path, threads: int) -> Path | None:
    """Fetch every object into a temporary folder beside `final`; None (and nothing left behind) when an
    object is gone or has another size than listed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in final.parent.glob(f".{final.name}.copying-*"):  # left by a copy that was killed
        if not pid_alive(int(old.name.rsplit("-", 1)[1])):
            shutil.rmtree(old, ignore_errors=True)
    tmp = final.parent / f".{final.name}.copying-{uuid.uuid4().hex[:8]}-{os.getpid()}"

    def fetch(key: str) -> bool:
        data = loc.read(key)
        if data is None or len(data) != objects[key][0]:
            return False  # deleted or rewritten since the listing
        dest = tmp / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return True

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            complete = all(pool.map(fetch, sorted(objects)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not complete:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return tmp


def _damaged(path: Path) -> dict[int, str]:
    """Finished shards of the copy whose data no longer matches its digest (vcache.store.verify)."""
    return damaged_shards(open_store(path))


def _replace(new: Path, final: Path) -> None:
    """Put `new` at `final`; an older copy there is moved aside first and removed."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, old)
        except FileNotFoundError:
            old = None  # another process replaced it just now
    try:
        os.rename(new, final)
    except OSError:  # another process put its copy there first: theirs is as good as ours
        shutil.rmtree(new, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
