"""Start a video ViT from an image ViT (SVT Sec. 4.1: spatial attention from ImageNet-1k DINO weights).

A DINO / timm ViT state dict maps onto :class:`vcache.models.vit.VideoViT` key by key; the parts an image
model lacks start so that the video model computes what the image model computes, as TimeSformer's loader
does (``timesformer/models/helpers.py`` ``load_pretrained`` and ``vit.py``, official code; the papers are
silent on the details):

==================================  ==========================================================
image ViT (DINO / timm)             video ViT (ours)
==================================  ==========================================================
``patch_embed.proj.{weight,bias}``  ``patch_embed.{weight,bias}``
``cls_token``                       ``cls_token``
``pos_embed`` (1, 1 + N, C)         ``pos_embed``, bicubic-resized to our grid if N differs
``blocks.i.norm1.*``                ``blocks.i.norm_s.*`` and ``blocks.i.norm_t.*`` (copied)
``blocks.i.attn.qkv.*``             ``blocks.i.attn_s.qkv.*`` and ``blocks.i.attn_t.qkv.*`` (copied)
``blocks.i.attn.proj.*``            ``blocks.i.attn_s.proj.*``; ``attn_t.proj`` set to **zero**
``blocks.i.norm2.*``                ``blocks.i.norm_mlp.*``
``blocks.i.mlp.fc1.*`` / ``fc2.*``  ``blocks.i.mlp.0.*`` / ``blocks.i.mlp.2.*``
``norm.*``                          ``norm.*``
(none)                              ``time_embed`` set to **zero**
==================================  ==========================================================

TimeSformer zero-initialises ``temporal_fc``, the linear layer after its temporal attention; our block has
no such layer, so we zero the temporal attention's own output projection, which makes its residual
branch exactly zero in the same way. With that and a zero temporal embedding, the video model at load
time is the image model applied to every frame (exactly for a 1-frame clip, or a clip of equal frames:
the CLS token is shared by the frames of a clip, so for distinct frames it averages their CLS updates).
Keys such as DINO's ``head.*`` or timm's ``fc_norm`` are ignored and reported.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vcache.models.vit import VideoViT

__all__ = ["image_to_video_state", "load_image_vit"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "norm1": ("norm_s", "norm_t"),
    "attn.qkv": ("attn_s.qkv", "attn_t.qkv"),
    "attn.proj": ("attn_s.proj",),
    "norm2": ("norm_mlp",),
    "mlp.fc1": ("mlp.0",),
    "mlp.fc2": ("mlp.2",),
}


def _resize_pos(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1, 1 + n*n, C) -> (1, 1 + gh*gw, C): bicubic over the square patch grid, the CLS slot kept."""
    n = int(math.isqrt(pos.shape[1] - 1))
    if n * n == grid[0] * grid[1] and (n, n) == grid:
        return pos
    patches = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def image_to_video_state(image: dict[str, Tensor], model: VideoViT) -> tuple[dict[str, Tensor], list[str]]:
    """The video model's state dict built from an image ViT's (table above); returns (state, ignored keys).

    Raises KeyError when a video parameter finds no image key, ValueError on a shape mismatch."""
    image = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in image.items()}
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    ignored = []
    for key, value in image.items():
        m = _BLOCK.match(key)
        if m:
            i, rest = m.groups()
            name, _, leaf = rest.rpartition(".")
            dests = [f"blocks.{i}.{d}.{leaf}" for d in _BLOCK_MAP.get(name, ())]
        elif key.startswith("patch_embed.proj."):
            dests = ["patch_embed." + key.rsplit(".", 1)[1]]
        elif key in ("cls_token", "norm.weight", "norm.bias"):
            dests = [key]
        elif key == "pos_embed":
            value = _resize_pos(value, model.grid)
            dests = [key]
        else:
            dests = []
        if not dests:
            ignored.append(key)
        for d in dests:
            if d not in target:
                raise KeyError(f"{key} -> {d}: the video model has no such parameter (depth / layout?)")
            if tuple(target[d].shape) != tuple(value.shape):
                raise ValueError(f"{key} -> {d}: shape {tuple(value.shape)} vs {tuple(target[d].shape)}")
            out[d] = value.detach().clone().to(target[d].dtype)
    for block in range(len(model.blocks)):  # TimeSformer's zero temporal_fc, folded into attn_t.proj
        for leaf in ("weight", "bias"):
            out[f"blocks.{block}.attn_t.proj.{leaf}"] = torch.zeros_like(
                target[f"blocks.{block}.attn_t.proj.{leaf}"]
            )
    out["time_embed"] = torch.zeros_like(target["time_embed"])
    missing = sorted(set(target) - set(out))
    if missing:
        raise KeyError(f"the image state dict lacks {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    return out, ignored


def load_image_vit(model: VideoViT, path: str | Path) -> list[str]:
    """Load a DINO / timm image-ViT checkpoint (a state dict, or a dict holding one under ``state_dict``,
    ``model``, ``teacher`` or ``student``) into ``model``; returns the image keys that were ignored."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state, ignored = image_to_video_state(obj, model)
    model.load_state_dict(state)
    return ignored
