"""What `vcache inspect`, `vcache verify` and `vcache export` do with a store: summary, checks, HDF5."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vcache.data.records import DONE, FAILED, PENDING, Reason
from vcache.store.format import FeatureStore, StoreError, manifest_hash, open_store, shard_digest


def damaged_shards(st: FeatureStore, visit: Callable[[int, dict], None] | None = None) -> dict[int, str]:
    """Shards whose chunks no longer decode, or whose data no longer matches the digest recorded when they
    were written: a chunk file deleted (it reads back as fill values), truncated or overwritten. Stores made
    before digests existed (no `shards/digest`) get the decoding check only. `visit(shard, data)` is called
    with every readable shard's arrays, so `verify` reads the store once."""
    has_digests = "shards" in st.group
    out: dict[int, str] = {}
    for s in range(st.n_shards):
        try:
            data = st.shard_data(s)
            digest = str(st.group["shards/digest"][s]) if has_digests else None
        except Exception as e:  # zarr / numcodecs raise several types for a damaged chunk
            out[s] = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
            continue
        pending = (data["videos/status"] == PENDING).any()  # a graceful stop leaves a shard partly pending
        if digest is None:
            pass
        elif pending and digest:
            out[s] = "marked pending but has a checksum (its status chunk was lost, or its write was killed)"
        elif not pending and not digest:
            out[s] = "finished but has no checksum"
        elif digest and shard_digest(data) != digest:
            out[s] = "checksum mismatch (a chunk file deleted, truncated or overwritten)"
        if visit is not None:
            visit(s, data)
    return out


def mark_for_repair(st: FeatureStore, shards: list[int]) -> None:
    """Make damaged shards pending again (status and digest rewritten whole), so a run redoes them."""
    for s in shards:
        v = st.shard_videos(s)
        st.group["videos/status"][v.start : v.stop] = np.zeros(len(v), dtype=np.uint8)
        if "shards" in st.group:
            st.group["shards/digest"][s] = ""


def reset_failed(store: FeatureStore, rank: int, world: int) -> None:
    """Mark this process's failed videos pending again so a run redoes them (`--retry-failed`)."""
    status = store.status()
    for s in range(store.n_shards):
        if s % world != rank:
            continue
        vids = store.shard_videos(s)
        if (status[vids.start : vids.stop] == FAILED).any():
            store.group["videos/status"][vids.start : vids.stop] = np.where(
                status[vids.start : vids.stop] == FAILED, PENDING, status[vids.start : vids.stop]
            ).astype(np.uint8)
            if "shards" in store.group:  # rewritten by this run; until then it has no valid digest
                store.group["shards/digest"][s] = ""


def _span(st: FeatureStore, s: int, paths: list[str]) -> str:
    v = st.shard_videos(s)
    return paths[v.start] if len(v) == 1 else f"{paths[v.start]} .. {paths[v.stop - 1]}"


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
        "crops_per_video": st.crops_per_video,  # 0: a variable number (dense)
        "rows": int(st.row_spans()[1].sum()),
        "schema_version": st.schema_version,
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


def _row_problems(path: str, data: dict, rows: slice, k: int) -> list[str]:
    """What is wrong with a done video's rows: none (or not K), non-finite features, a box outside [0, 1] or
    with start >= end, times with start >= end."""
    if rows.stop <= rows.start or (k and rows.stop - rows.start != k):
        return [f"{path}: done with {rows.stop - rows.start} rows"]
    out = []
    if not np.isfinite(data["crops/features"][rows].astype(np.float32)).all():
        out.append(f"{path}: non-finite features")
    b = data["crops/boxes"][rows]
    inside = (b >= 0).all() and (b <= 1).all()
    ordered = (b[:, 0] < b[:, 1]).all() and (b[:, 2] < b[:, 4]).all() and (b[:, 3] < b[:, 5]).all()
    if not (inside and ordered):
        out.append(f"{path}: a box outside [0, 1] or with start >= end")
    if "crops/start_s" in data:
        t0, t1 = data["crops/start_s"][rows], data["crops/end_s"][rows]
        known = np.isfinite(t0) & np.isfinite(t1)  # NaN: not recorded (rows written without times)
        if (np.isfinite(t0) != np.isfinite(t1)).any() or (t0[known] < 0).any() or (t0 >= t1)[known].any():
            out.append(f"{path}: row times negative, half missing or with start >= end")
    return out


_REQUIRED_ATTRS = ("schema_version", "backbone", "sampling", "manifest", "manifest_hash", "feature_dim")


def verify(path: str | Path, require_complete: bool = False) -> tuple[list[str], dict[str, int]]:
    """Check a store against its contract. Returns (problems, counts); no problems means valid.

    Checks: provenance attributes present; array shapes and dtypes agree with the attributes; every shard
    has a digest when finished and none while a video is pending (a graceful stop writes the finished
    videos of a shard and leaves the rest pending); every done row finite with a box
    inside [0, 1] and t0 < t1, y0 < y1, x0 < x1; every failed video with a reason; no half-written files;
    every written shard matches the digest recorded at write time (`damaged_shards`), and the paths and
    labels match the manifest hash. Reads one shard at a time, so memory stays bounded for feature-map stores.
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
    rows = n * k if k else st.n_shards * st.rows_per_shard
    want = {
        "videos/path": (n,),
        "videos/label": (n,),
        "videos/status": (n,),
        "videos/reason_code": (n,),
        "videos/reason": (n,),
        "videos/num_frames": (n,),
        "crops/features": (rows, d),
        "crops/boxes": (rows, 6),
        "crops/flip": (rows,),
    }
    if st.schema_version >= 2:
        want.update({"videos/row_start": (n,), "videos/row_count": (n,)})
        want.update({"crops/start_s": (rows,), "crops/end_s": (rows,)})
    if a.get("map_shape"):
        want["crops/maps"] = (rows, *a["map_shape"])
    if a.get("audio_backbone"):  # `extract --audio-backbone`: not in the shard digests, its shape is checked
        want["crops/audio"] = (rows, a["audio_backbone"]["dim"])
    for name, shape in want.items():
        if name not in g:
            problems.append(f"array {name} missing")
        elif tuple(g[name].shape) != shape:
            problems.append(f"array {name} has shape {tuple(g[name].shape)}, expected {shape}")
    if problems:
        return problems, {}
    if str(g["crops/features"].dtype) != str(np.dtype(a.get("feature_dtype", "float16"))):
        problems.append(f"features are {g['crops/features'].dtype}, attributes say {a.get('feature_dtype')}")
    try:
        paths, labels = st.paths(), st.labels()
    except Exception as e:  # zarr raises several types for a damaged chunk
        return problems + [f"videos/path or videos/label unreadable ({type(e).__name__})"], {}
    if a.get("manifest_hash") and manifest_hash(paths, labels) != a["manifest_hash"]:
        problems.append("videos/path or videos/label damaged: they no longer match the manifest hash")
    status = np.full(n, 255, dtype=np.uint8)  # 255: unreadable

    def check(s: int, data: dict) -> None:
        v = st.shard_videos(s)
        sv = status[v.start : v.stop] = data["videos/status"]
        codes, reasons = data["videos/reason_code"], [str(r) for r in data["videos/reason"].tolist()]
        problems.extend(f"{paths[v.start + j]}: unknown status {x}" for j, x in enumerate(sv) if x > FAILED)
        if "videos/row_start" in data:
            starts, counts = (
                data["videos/row_start"].astype(np.int64),
                data["videos/row_count"].astype(np.int64),
            )
        else:
            starts, counts = np.arange(v.start, v.stop) * k, np.where(sv == DONE, k, 0)
        r0 = st.shard_rows(s, (starts, counts)).start
        for j, i in enumerate(v):
            if sv[j] == DONE:
                rows = slice(int(starts[j] - r0), int(starts[j] - r0 + counts[j]))
                problems.extend(_row_problems(paths[i], data, rows, k))
                if codes[j] != 0:
                    problems.append(f"{paths[i]}: done but has reason code {codes[j]}")
            elif sv[j] == FAILED and (codes[j] == 0 or not reasons[j]):
                problems.append(f"{paths[i]}: failed without a reason")

    bad = damaged_shards(st, check)
    problems[:0] = [f"shard {s} ({_span(st, s, paths)}) damaged: {why}" for s, why in bad.items()]
    if "crops/maps" in g and (status == DONE).any():
        i = int(np.flatnonzero(status == DONE)[0])
        r = int(st.row_spans(range(i, i + 1))[0][0])
        if not np.isfinite(g["crops/maps"][r : r + 1].astype(np.float32)).all():
            problems.append(f"{paths[i]}: non-finite feature map")
    leftovers = st.partial_files()
    if isinstance(st.path, Path):  # a store on object storage has no temporaries (a put is whole or absent)
        leftovers += sorted(st.path.parent.glob(f".{st.path.name}.creating-*"))
    problems += [f"half-written file left by a killed run: {p}" for p in leftovers[:10]]
    counts = {
        "videos": n,
        "done": int((status == DONE).sum()),
        "failed": int((status == FAILED).sum()),
        "pending": int((status == PENDING).sum()),
        "warned": len(warned_videos(st)) if not bad else 0,
        "damaged_shards": len(bad),
    }
    if require_complete and counts["pending"]:
        problems.append(f"{counts['pending']} videos still pending")
    return problems, counts
