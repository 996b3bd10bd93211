"""What `vcache inspect`, `vcache verify` and `vcache export` do with a store: summary, checks, HDF5."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vcache.data.records import DONE, FAILED, PENDING, Reason
from vcache.store.format import StoreError, open_store


def warned_videos(st) -> list[tuple[str, int, str]]:
    """(path, decoder messages, warning) of every done video that decoded with damage or a note."""
    status, errors, warns = st.status(), st.meta("decode_errors"), st.warnings()
    return [
        (p, int(e), w)
        for p, s, e, w in zip(st.paths(), status, errors, warns, strict=True)
        if s == DONE and (e or w)
    ]


def summary(path: str | Path) -> dict[str, Any]:
    """What `vcache inspect` prints: counts by status, failure reasons, dims and provenance."""
    st = open_store(path)
    status = st.status()
    codes = st.meta("reason_code")
    reasons: dict[str, int] = {}
    for c in codes[status == FAILED]:
        name = Reason(int(c)).name.lower()
        reasons[name] = reasons.get(name, 0) + 1
    failed_examples = [
        (p, f"{Reason(int(c)).name.lower()}: {r}")
        for p, c, r, s in zip(st.paths(), codes, st.reasons(), status, strict=True)
        if s == FAILED
    ][:10]
    warned = warned_videos(st)
    return {
        "path": str(st.path),
        "videos": st.n_videos,
        "done": int((status == DONE).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "failure_reasons": reasons,
        "failed_examples": failed_examples,
        "warned": len(warned),
        "warned_examples": warned[:10],
        "rotated": int((st.meta("rotation") != 0).sum()),
        "crops_per_video": st.crops_per_video,
        "feature_dim": st.feature_dim,
        "feature_dtype": st.attrs.get("feature_dtype"),
        "map_shape": st.attrs.get("map_shape"),
        "shards": st.n_shards,
        "videos_per_shard": st.videos_per_shard,
        "partial_files": len(st.partial_files()),
        "backbone": st.attrs.get("backbone"),
        "sampling": st.attrs.get("sampling"),
        "manifest": st.attrs.get("manifest"),
        "classes": len(st.attrs.get("class_names") or []),
    }


def export_h5(path: str | Path, out: str | Path) -> Path:
    """Write every array of a store, with the same names and its attributes (as JSON), to one HDF5 file."""
    import h5py

    st = open_store(path)
    out = Path(out)
    with h5py.File(out, "w") as h5:
        h5.attrs["vcache_attrs"] = json.dumps(st.attrs)
        for group in ("videos", "crops"):
            for name, arr in st.group[group].arrays():
                data = arr[:]
                if data.dtype.kind in ("T", "U", "O"):
                    h5.create_dataset(
                        f"{group}/{name}", data=[str(s) for s in data], dtype=h5py.string_dtype()
                    )
                else:
                    h5.create_dataset(f"{group}/{name}", data=data, chunks=True)
    return out


_REQUIRED_ATTRS = ("schema_version", "backbone", "sampling", "manifest", "manifest_hash", "feature_dim")


def verify(path: str | Path, require_complete: bool = False) -> tuple[list[str], dict[str, int]]:
    """Check a store against its contract. Returns (problems, counts); no problems means valid.

    Checks: provenance attributes present; array shapes and dtypes agree with the attributes; every shard
    is all pending or all finished (the write protocol's invariant); every done row finite with a box
    inside [0, 1] and t0 < t1, y0 < y1, x0 < x1; every failed video with a reason; no half-written files.
    Reads one shard at a time, so memory stays bounded for feature-map stores.
    """
    problems: list[str] = []
    try:
        st = open_store(path)
    except StoreError as e:
        return [str(e)], {}
    a = st.attrs
    problems += [f"attribute {k!r} missing" for k in _REQUIRED_ATTRS if a.get(k) in (None, "", {})]
    n, k, d = st.n_videos, st.crops_per_video, st.feature_dim
    g = st.group
    want = {
        "videos/path": (n,),
        "videos/label": (n,),
        "videos/status": (n,),
        "videos/reason_code": (n,),
        "videos/reason": (n,),
        "videos/num_frames": (n,),
        "crops/features": (n * k, d),
        "crops/boxes": (n * k, 6),
        "crops/flip": (n * k,),
    }
    if a.get("map_shape"):
        want["crops/maps"] = (n * k, *a["map_shape"])
    for name, shape in want.items():
        if name not in g:
            problems.append(f"array {name} missing")
        elif tuple(g[name].shape) != shape:
            problems.append(f"array {name} has shape {tuple(g[name].shape)}, expected {shape}")
    if problems:
        return problems, {}
    if str(g["crops/features"].dtype) != str(np.dtype(a.get("feature_dtype", "float16"))):
        problems.append(f"features are {g['crops/features'].dtype}, attributes say {a.get('feature_dtype')}")
    status, codes, reasons = st.status(), st.meta("reason_code"), st.reasons()
    paths = st.paths()
    bad_status = np.flatnonzero(~np.isin(status, (PENDING, DONE, FAILED)))
    problems += [f"{paths[i]}: unknown status {status[i]}" for i in bad_status[:10]]
    for s in range(st.n_shards):
        v = st.shard_videos(s)
        sv = status[v.start : v.stop]
        if (sv == PENDING).any() and not (sv == PENDING).all():
            problems.append(f"shard {s} is half written (some videos pending, some finished)")
        rows = slice(v.start * k, v.stop * k)
        feats = g["crops/features"][rows].astype(np.float32).reshape(len(v), k, d)
        boxes = g["crops/boxes"][rows].reshape(len(v), k, 6)
        for j, i in enumerate(v):
            if status[i] == DONE:
                if not np.isfinite(feats[j]).all():
                    problems.append(f"{paths[i]}: non-finite features")
                b = boxes[j]
                inside = (b >= 0).all() and (b <= 1).all()
                ordered = (
                    (b[:, 0] < b[:, 1]).all() and (b[:, 2] < b[:, 4]).all() and (b[:, 3] < b[:, 5]).all()
                )
                if not (inside and ordered):
                    problems.append(f"{paths[i]}: a box outside [0, 1] or with start >= end")
                if codes[i] != 0:
                    problems.append(f"{paths[i]}: done but has reason code {codes[i]}")
            elif status[i] == FAILED and (codes[i] == 0 or not reasons[i]):
                problems.append(f"{paths[i]}: failed without a reason")
    if "crops/maps" in g and (status == DONE).any():
        i = int(np.flatnonzero(status == DONE)[0])
        if not np.isfinite(g["crops/maps"][i * k : i * k + 1].astype(np.float32)).all():
            problems.append(f"{paths[i]}: non-finite feature map")
    leftovers = st.partial_files() + sorted(st.path.parent.glob(f".{st.path.name}.creating-*"))
    problems += [f"half-written file left by a killed run: {p}" for p in leftovers[:10]]
    counts = {
        "videos": n,
        "done": int((status == DONE).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "warned": len(warned_videos(st)),
    }
    if require_complete and counts["pending"]:
        problems.append(f"{counts['pending']} videos still pending")
    return problems, counts
