"""Provenance and compatibility of stores: features of different backbones must never be mixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vcache.store.format import StoreError
from vcache.store.location import normalise


# -- stores: provenance and compatibility ---------------------------------------------------------------
def store_provenance(attrs: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """What a result or checkpoint records about the store it came from."""
    return {
        "path": str(normalise(path)) if path is not None else None,  # a URL stays a URL
        "backbone": attrs.get("backbone"),
        "sampling": attrs.get("sampling"),
        "manifest_hash": attrs.get("manifest_hash"),
        "n_videos": attrs.get("n_videos"),
        "crops_per_video": attrs.get("crops_per_video"),
        "feature_dim": attrs.get("feature_dim"),
    }


# What every stage-2 command compares between two stores (or a store and a checkpoint's record of its store).
# Weights: name, checkpoint hash and, for random weights, the init seed; preprocessing: mean, std, pooling;
# the clip as sampled: frames, stride, input size. The sampling mode and crop count may differ (a SCALE
# aggregator trains on train-mode crops and is probed on eval crops).
_SAMPLED = ("clip_frames", "frame_stride", "input_size")
# Differences --allow-mismatch cannot override: the features would not even have the same width.
_NEVER = ("feature_dim",)


def backbone_key(attrs: dict[str, Any]) -> dict[str, Any]:
    bb = attrs.get("backbone") or {}
    pre = dict(bb.get("preprocessing") or {})
    sampling = attrs.get("sampling") or {}
    for k in _SAMPLED:  # the clip actually cut (the sampling) wins over the model's default
        if sampling.get(k) is not None:
            pre[k] = sampling[k]
    return {
        "name": bb.get("name"),
        "checkpoint_sha256": bb.get("checkpoint_sha256"),
        "init_seed": None if bb.get("checkpoint_sha256") else bb.get("init_seed"),
        "feature_dim": attrs.get("feature_dim", bb.get("feature_dim")),
        **{f"preprocessing.{k}": v for k, v in sorted(pre.items())},
    }


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """`key a != b` for every compared field that differs between two stores' attributes."""
    ka, kb = backbone_key(a), backbone_key(b)
    keys = sorted(set(ka) | set(kb))
    return [f"{k} {ka.get(k)!r} != {kb.get(k)!r}" for k in keys if ka.get(k) != kb.get(k)]


def check_compatible(
    a: dict[str, Any],
    b: dict[str, Any],
    a_name: str = "first",
    b_name: str = "second",
    allow_mismatch: bool = False,
) -> list[str]:
    """Raise StoreError unless two stores (or a store and a checkpoint's provenance) share the backbone's
    weights (name, checkpoint hash or init seed), its preprocessing and the clip as sampled (frames, stride,
    input size): features of different backbones or clips must never be mixed. `allow_mismatch` turns the
    refusal into a returned list, except for a different feature dim. Returns the differences."""
    diff = differences(a, b)
    hard = [d for d in diff if d.split(" ")[0] in _NEVER]
    if diff and (hard or not allow_mismatch):
        shown = hard or diff
        more = f" (and {len(diff) - 1} more)" if len(shown) > 1 else ""
        hint = "" if hard else "; --allow-mismatch overrides"
        raise StoreError(f"{a_name} and {b_name} were made with different backbones: {shown[0]}{more}{hint}")
    return diff


def weights_label(backbone: dict[str, Any] | None) -> str:
    """A backbone and its weights in a few words: `name (checkpoint file)`, `name (sha 1a2b3c4d)`, or
    `name (random init, seed 0)`."""
    bb = backbone or {}
    name = bb.get("name") or "?"
    if bb.get("checkpoint"):
        return f"{name} ({Path(str(bb['checkpoint'])).name})"
    if bb.get("checkpoint_sha256"):
        return f"{name} (sha {str(bb['checkpoint_sha256'])[:8]})"
    seed = bb.get("init_seed")
    return f"{name} (random init{'' if seed is None else f', seed {seed}'})"
