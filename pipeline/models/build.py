"""Backbone checkpoints and :func:`build_backbone`, the one way every stage gets a model.

:func:`save_checkpoint` writes the vcache format (weights + name + preprocessing + config);
:func:`load_checkpoint` reads that format and the usual foreign layouts (plain state dict, ``{"state_dict":
...}``, ``{"model": ...}``, ``{"backbone": ...}``, ``module.`` / ``backbone.`` prefixes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vcache.models.base import Preprocessing, VideoBackbone
from vcache.models.registry import construct

CHECKPOINT_FORMAT = "vcache-backbone-1"

_WRAPPER_KEYS = ("state_dict", "model", "backbone")
_PREFIXES = ("module.", "backbone.")


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop DDP's ``module.`` and a wrapper's ``backbone.`` prefixes (repeatedly, in any nesting).

    When some keys carry the prefix, only those are kept: e.g. a DINO-style ``backbone.* / head.*`` dict
    keeps the backbone and drops the projection head.
    """
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if any(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
                changed = True
    return sd


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, Tensor) for v in d.values())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint into ``{"state_dict", "backbone", "preprocessing", "config"}``.

    ``backbone`` (the name) and ``preprocessing`` (a dict) are None unless the file is in vcache format.

    Accepts the vcache format written by :func:`save_checkpoint`, a plain state dict, or a dict holding one
    under ``state_dict`` / ``model`` / ``backbone``. In foreign files ``module.`` and ``backbone.`` key
    prefixes are removed; vcache files keep their exact names (a user's net may own a ``backbone`` module).
    Files are read with ``weights_only=True``: nothing in them is executed.
    """
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"cannot read checkpoint {str(path)!r} as tensors-only torch file: {e}") from e
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return {
            "state_dict": dict(obj["state_dict"]),
            "backbone": obj.get("backbone"),
            "preprocessing": obj.get("preprocessing"),
            "config": dict(obj.get("config") or {}),
        }
    sd = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        sd = next((obj[k] for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k))), None)
    if not _is_state_dict(sd):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} holds no state dict (top level: {keys}); expected a state "
            f"dict or a dict with one under {', '.join(_WRAPPER_KEYS)}"
        )
    return {"state_dict": _strip_prefixes(dict(sd)), "backbone": None, "preprocessing": None, "config": {}}


def _load_weights(model: VideoBackbone, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict load (up to ``optional_prefixes``) with an error that names the keys that do not fit."""
    target = model.weights_module()
    own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(model.optional_prefixes)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(v)} {what} (e.g. {', '.join(v[:4])})"
            for what, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatches: checkpoint vs model", mismatched),
            )
            if v
        ]
        raise ValueError(f"checkpoint {source} does not fit backbone {model.name!r}: " + "; ".join(parts))
    target.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def save_checkpoint(path: str | os.PathLike, model: VideoBackbone, config: dict | None = None) -> None:
    """Write the vcache format: weights, backbone name, preprocessing and ``config``.

    ``config["backbone_kwargs"]`` records the factory kwargs that rebuild the architecture (e.g.
    ``feature_stages``). The config is made JSON-plain so that the file loads with ``weights_only=True``.
    Written to a temporary file and renamed, so a kill never leaves half a checkpoint under ``path``.
    """
    cfg = json.loads(json.dumps(dict(config or {}), default=str))
    cfg["backbone_kwargs"] = json.loads(json.dumps(model.arch_config(), default=str))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": model.name,
        "preprocessing": model.preprocessing.to_dict(),
        "config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in model.weights_module().state_dict().items()},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the checkpoint hash recorded in store provenance), read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PRE_FIELDS = {f.name for f in fields(Preprocessing)} - {"pool"}


def build_backbone(
    name: str | None, checkpoint: str | os.PathLike | None = None, pool: str | None = None, **kwargs: Any
) -> VideoBackbone:
    """Build a registry entry (or ``"package.module:factory"``), optionally loading ``checkpoint``.

    - ``name`` None takes the name stored in a vcache-format checkpoint.
    - A vcache checkpoint of the same name also restores its factory kwargs (``config["backbone_kwargs"]``)
      and its preprocessing, which override the registry defaults.
    - kwargs named like Preprocessing fields (``clip_frames``, ``input_size``, ...) override the
      preprocessing (e.g. ``clip_frames=32`` for STiCA's 4 x 7 x 7 R(2+1)D map); the rest go to the factory.
    - ``pool`` overrides ``preprocessing.pool``.

    The model is returned in eval mode (frozen-feature extraction is the main use; call ``.train()`` to
    pretrain).
    """
    ck = load_checkpoint(checkpoint) if checkpoint is not None else None
    if name is None:
        if ck is None or not ck["backbone"]:
            raise ValueError("no backbone name given and the checkpoint (if any) does not name one")
        name = ck["backbone"]
    pre_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _PRE_FIELDS}
    if ck is not None and ck["backbone"] == name:
        kwargs = {**ck["config"].get("backbone_kwargs", {}), **kwargs}
    model = construct(name, **kwargs)
    declared = getattr(model, "declared_weights", None)  # a user's module that loaded its own weights
    if ck is None and declared:
        model.checkpoint = declared
        model.checkpoint_sha256 = file_sha256(declared) if Path(declared).is_file() else None
    if ck is not None:
        _load_weights(
            model,
            ck["state_dict"],
            repr(str(checkpoint))
            + (f" (saved from {ck['backbone']!r})" if ck["backbone"] and ck["backbone"] != name else ""),
        )
        if ck["preprocessing"]:
            model.preprocessing = Preprocessing.from_dict(ck["preprocessing"])
        model.checkpoint = str(checkpoint)
        model.checkpoint_sha256 = file_sha256(checkpoint)
    if pre_overrides:
        model.preprocessing = Preprocessing.from_dict({**model.preprocessing.to_dict(), **pre_overrides})
    if pool is not None:
        model.preprocessing = replace(model.preprocessing, pool=pool)
    if model.preprocessing.pool not in model.pools:
        raise ValueError(
            f"pool {model.preprocessing.pool!r} is not available for {name!r} "
            f"(choose from {', '.join(model.pools)})"
        )
    return model.eval()


def describe(model: VideoBackbone) -> dict:
    """Provenance for store attributes (JSON-plain); ``source`` only for models that have one (hf:...)."""
    out = {
        "name": model.name,
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": model.checkpoint_sha256,
        "feature_dim": int(model.feature_dim),
        "feature_stages": getattr(model, "feature_stages", None),
        "preprocessing": model.preprocessing.to_dict(),
        "config": json.loads(json.dumps(model.arch_config(), default=str)),
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }
    source = model.provenance()
    if source:
        out["source"] = json.loads(json.dumps(source, default=str))
    return out
