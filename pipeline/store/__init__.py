"""The feature store, the contract between extraction and learning from the cache.

- :mod:`~vcache.store.format`: the Zarr layout, :class:`FeatureStore`, opening a store.
- :mod:`~vcache.store.create`: creating a store (schema 2: fixed K or a variable number of rows a video).
- :mod:`~vcache.store.cache`: :func:`load_cache`, a store's done videos in memory for stage 2.
- :mod:`~vcache.store.compat`: provenance and the check that two stores share a backbone.
- :mod:`~vcache.store.verify`: ``inspect`` (summary) and ``verify``.
- :mod:`~vcache.store.export`: ``export`` to HDF5 or one .npy per video.
- :mod:`~vcache.store.lock`: per-share run locks with heartbeats.
- Per-video status records (:class:`VideoMeta`, :class:`Reason`) live in :mod:`vcache.data.records`.
"""

from vcache.data.records import DONE, FAILED, PENDING, STATUS_NAMES, Reason, VideoMeta
from vcache.store.cache import Cache, cache_nbytes, load_cache
from vcache.store.compat import check_compatible, store_provenance
from vcache.store.create import create_store, creation_is_dead
from vcache.store.export import export_h5, export_npy
from vcache.store.format import SCHEMA_VERSION, FeatureStore, StoreError, manifest_hash, open_store
from vcache.store.verify import summary, verify

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "SCHEMA_VERSION",
    "STATUS_NAMES",
    "Cache",
    "FeatureStore",
    "Reason",
    "StoreError",
    "VideoMeta",
    "cache_nbytes",
    "check_compatible",
    "create_store",
    "creation_is_dead",
    "export_h5",
    "export_npy",
    "load_cache",
    "manifest_hash",
    "open_store",
    "store_provenance",
    "summary",
    "verify",
]
