"""Where a store lives: a local folder or a URL on object storage (``s3://``, ``gs://``, ``az://``, ...).

`location(path)` gives a `Local` for a folder (``file://`` URLs included) and an `Remote` for anything with
another scheme. A `Remote` talks to the bucket through obstore (``pip install 'vcache[s3]'``), configured the
usual way: the standard environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server; ``GOOGLE_*`` and ``AZURE_*`` likewise) or
``VCACHE_STORAGE_OPTIONS`` (``key=value,key=value``, obstore's config keys). Object stores have no rename, so
a `Remote` offers what the store and the locks build on instead: whole-object puts (atomic: a reader sees the
old object or the new one, never a part) and conditional puts (``If-None-Match: *``: the put fails when the
object exists, so of two processes creating one key exactly one wins). See docs/store.md.

A URL that went through ``pathlib.Path`` (``s3:/bucket/x``: the command line's path options do this) is
repaired to ``s3://bucket/x``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/+(.*)$")


class AlreadyExists(Exception):
    """A conditional put found the object there already."""


def is_remote(path: str | Path) -> bool:
    m = _URL.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def normalise(path: str | Path) -> str | Path:
    """A local `Path` or a URL string ``scheme://rest`` (also from a ``scheme:/rest`` that pathlib made)."""
    m = _URL.match(str(path))
    if not m:
        return Path(path)
    if m.group(1).lower() == "file":
        return Path("/" + m.group(2).lstrip("/"))
    return f"{m.group(1).lower()}://{m.group(2).rstrip('/')}"


def storage_options() -> dict[str, str]:
    raw = os.environ.get("VCACHE_STORAGE_OPTIONS", "")
    out = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


class Remote:
    """A store's prefix on object storage, with the few operations the store and its locks need."""

    def __init__(self, url: str, options: dict[str, str] | None = None):
        try:
            import obstore
            from obstore.store import from_url
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(f"{url}: object storage needs obstore: pip install 'vcache[s3]'") from e
        self.url = url
        self._ob = obstore
        opts = {**storage_options(), **(options or {})}
        endpoint = opts.get("endpoint") or opts.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
        client = {"allow_http": True} if endpoint.startswith("http://") or opts.get("allow_http") else {}
        opts.pop("allow_http", None)
        kw: dict[str, Any] = {"client_options": client}
        if url.startswith("s3://") and endpoint and "endpoint" not in opts and "endpoint_url" not in opts:
            opts["endpoint"] = endpoint
        if opts:
            kw["config"] = opts
        self.obj = from_url(url, **kw)  # rooted at the store's prefix: keys below are relative to it

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.obj, read_only=read_only)

    # -- objects --------------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> dict | None:
        try:
            return dict(self._ob.head(self.obj, key))
        except FileNotFoundError:
            return None

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self._ob.get(self.obj, key).bytes())
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self._ob.put(self.obj, key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create `key` only if no object has that name (``If-None-Match: *``); else `AlreadyExists`."""
        from obstore.exceptions import AlreadyExistsError

        try:
            self._ob.put(self.obj, key, data, mode="create")
        except AlreadyExistsError as e:
            raise AlreadyExists(key) from e

    def delete(self, key: str) -> None:
        try:
            self._ob.delete(self.obj, key)
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a string prefix: obstore's own is by whole path segments)."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out = []
        for batch in self._ob.list(self.obj, prefix=folder or None):
            out.extend(m["path"] for m in batch if m["path"].startswith(prefix))
        return sorted(out)

    def list_meta(self) -> list[dict]:
        """Every object of the store with its metadata (path, size, e_tag, last_modified)."""
        return [dict(m) for batch in self._ob.list(self.obj) for m in batch]

    def delete_all(self, prefix: str = "") -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            self._ob.delete(self.obj, keys[i : i + 1000])
        return len(keys)


def location(path: str | Path) -> Path | Remote:
    """A local folder as a `Path`, anything else as a `Remote`."""
    if isinstance(path, Remote):
        return path
    p = normalise(path)
    return p if isinstance(p, Path) else Remote(p)
