"""Provenance and compatibility of stores: features of different backbones must never be mixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vcache.store.format import StoreError


# -- stores: provenance and compatibility ---------------------------------------------------------------
def store_provenance(attrs: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """What a result or checkpoint records about the store it came from."""
    return {
        "path": str(path) if path is not None else None,
        "backbone": attrs.get("backbone"),
        "sampling": attrs.get("sampling"),
        "manifest_hash": attrs.get("manifest_hash"),
        "n_videos": attrs.get("n_videos"),
        "crops_per_video": attrs.get("crops_per_video"),
        "feature_dim": attrs.get("feature_dim"),
    }


def backbone_key(attrs: dict[str, Any]) -> dict[str, Any]:
    bb = attrs.get("backbone") or {}
    return {
        "name": bb.get("name"),
        "checkpoint_sha256": bb.get("checkpoint_sha256"),
        "preprocessing": bb.get("preprocessing"),
        "feature_dim": attrs.get("feature_dim", bb.get("feature_dim")),
    }


def check_compatible(
    a: dict[str, Any], b: dict[str, Any], a_name: str = "first", b_name: str = "second"
) -> None:
    """Raise StoreError unless two stores (or a store and a checkpoint's provenance) share backbone name,
    checkpoint hash, preprocessing and feature dim: features of different backbones must never be mixed."""
    ka, kb = backbone_key(a), backbone_key(b)
    for key in ka:
        if ka[key] != kb[key]:
            raise StoreError(
                f"{a_name} and {b_name} were made with different backbones: {key} {ka[key]!r} != {kb[key]!r}"
            )
