"""Video ViT with divided space-time attention (TimeSformer-style), the backbone SVT trains.

SVT (Sec. 3.1, 3.2.3) uses a TimeSformer ViT with divided attention, one CLS token whose final output is the
feature, and *separate* learned spatial and temporal position embeddings sized for the largest view and
interpolated for smaller / shorter views ("dynamic positional embedding"). So ``forward`` accepts any
frame count T and any square size that is a multiple of the patch.

Per block (TimeSformer "divided space-time"): temporal attention among the T tokens of each patch position
(CLS not included), then spatial attention among the patches of each frame with the CLS token prepended
to every frame (its per-frame outputs are averaged), then the MLP on all tokens. Pre-norm residuals.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vcache.models.base import Preprocessing, VideoBackbone
from vcache.models.registry import register

__all__ = ["VIT_SMALL", "VIT_TINY", "VideoViT", "interpolate_pos_embed"]

# CPU-sized: fast enough for tests and the synthetic benchmark.
VIT_TINY: dict[str, Any] = dict(
    img_size=64, patch_size=8, num_frames=8, frame_stride=4, dim=192, depth=4, heads=3
)
# ViT-S/16 widths (dim 384, depth 12, 6 heads) at SVT's global-view size (224 px, 8 frames, Sec. 3.1). SVT
# itself uses ViT-B (768-d); the frame stride is our choice (SVT samples frames uniformly over 90 % of the
# video, which has no fixed stride; TimeSformer's 8-frame setting samples every 32nd frame).
VIT_SMALL: dict[str, Any] = dict(
    img_size=224, patch_size=16, num_frames=8, frame_stride=8, dim=384, depth=12, heads=6
)

# TimeSformer / SVT normalisation (their configs; the paper is silent).
VIT_MEAN = (0.45, 0.45, 0.45)
VIT_STD = (0.225, 0.225, 0.225)


def interpolate_pos_embed(
    pos: Tensor, old_grid: tuple[int, ...], new_grid: tuple[int, ...], prefix_tokens: int = 0
) -> Tensor:
    """Resize a learned position embedding ``(B, prefix + prod(old_grid), C)`` to ``new_grid``.

    A 1-D grid (time) is resized linearly, a 2-D grid (patch rows x columns) bicubically; the first
    ``prefix_tokens`` entries (e.g. CLS) are kept as they are. ``align_corners=False``: each new position
    samples the centre of the span it covers, so shortening 8 -> 4 averages neighbouring pairs (our choice;
    SVT Sec. 3.2.3 only says "interpolation"). Returns ``pos`` itself when the grid is unchanged.
    """
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if len(old_grid) != len(new_grid) or len(old_grid) not in (1, 2):
        raise ValueError(f"grids must both be 1-D or 2-D, got {old_grid} and {new_grid}")
    if pos.shape[1] != prefix_tokens + math.prod(old_grid):
        raise ValueError(
            f"embedding of {pos.shape[1]} tokens does not match {prefix_tokens} + grid {old_grid}"
        )
    if old_grid == new_grid:
        return pos
    b, _, c = pos.shape
    prefix, grid = pos[:, :prefix_tokens], pos[:, prefix_tokens:]
    if len(old_grid) == 1:
        out = F.interpolate(grid.transpose(1, 2), size=new_grid, mode="linear", align_corners=False)
        out = out.transpose(1, 2)
    else:
        img = grid.reshape(b, *old_grid, c).permute(0, 3, 1, 2)
        out = F.interpolate(img, size=new_grid, mode="bicubic", align_corners=False)
        out = out.permute(0, 2, 3, 1).reshape(b, -1, c)
    return torch.cat([prefix, out], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention over the second axis of (N, L, C)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class DividedBlock(nn.Module):
    """Temporal attention, spatial attention, MLP (TimeSformer's divided space-time block).

    TimeSformer adds a linear layer (``temporal_fc``) after the temporal attention, zero-initialised so that a
    model loaded from image-ViT weights starts as the image model; we leave it out, and loading image weights
    (``vcache.pretrain.vit_image``) zeroes the temporal attention's output projection instead.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim)
        self.attn_t = Attention(dim, heads)
        self.norm_s = nn.LayerNorm(dim)
        self.attn_s = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """cls: (B, 1, C); x: (B, T, N, C) patch tokens."""
        b, t, n, c = x.shape
        xt = x.transpose(1, 2).reshape(b * n, t, c)
        x = x + self.attn_t(self.norm_t(xt)).reshape(b, n, t, c).transpose(1, 2)
        tokens = torch.cat([cls.unsqueeze(1).expand(b, t, 1, c), x], dim=2).reshape(b * t, n + 1, c)
        out = self.attn_s(self.norm_s(tokens)).reshape(b, t, n + 1, c)
        cls = cls + out[:, :, 0].mean(dim=1, keepdim=True)
        x = x + out[:, :, 1:]
        return cls + self.mlp(self.norm_mlp(cls)), x + self.mlp(self.norm_mlp(x))


class VideoViT(VideoBackbone):
    """Divided space-time ViT. Pooled output: the CLS token ("cls"), or avg / max over the patch tokens.

    The feature map is the final patch tokens as (B, T, H/p, W/p, C). Position embeddings are stored at
    the native ``num_frames`` x ``img_size`` grid and interpolated for other inputs (SVT Sec. 3.2.3).
    """

    pools = ("cls", "avg", "max")

    def __init__(
        self,
        img_size: int = 64,
        patch_size: int = 8,
        num_frames: int = 8,
        frame_stride: int = 4,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        # resize_short = img_size * 8 / 7, the 112 -> 128 and 224 -> 256 ratio of the usual eval transforms.
        pre = preprocessing or Preprocessing(
            VIT_MEAN,
            VIT_STD,
            input_size=img_size,
            resize_short=round(img_size * 8 / 7),
            clip_frames=num_frames,
            frame_stride=frame_stride,
            pool="cls",
        )
        super().__init__(pre)
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            num_frames=num_frames,
            frame_stride=frame_stride,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
        )
        self.patch_size, self.dim = patch_size, dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_frames = num_frames
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))  # CLS slot first
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT-style: truncated normal (std 0.02) for embeddings and linears, LayerNorm 1/0.

        TimeSformer starts the temporal embedding at zero; we draw it like the others so that even a
        random-init model sees frame order (our choice).
        """
        for p in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        return self.dim

    def arch_config(self) -> dict:
        return dict(self.config)

    def map_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        return int(frames), int(size) // self.patch_size, int(size) // self.patch_size, self.dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, t, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {p}")
        gh, gw = h // p, w // p
        tokens = self.patch_embed(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, gh, gw)
        tokens = tokens.flatten(2).transpose(1, 2).reshape(b, t, gh * gw, self.dim)
        pos = interpolate_pos_embed(self.pos_embed, self.grid, (gh, gw), prefix_tokens=1)
        time = interpolate_pos_embed(self.time_embed, (self.num_frames,), (t,))
        tokens = tokens + pos[:, None, 1:] + time[:, :, None]
        cls = (self.cls_token + pos[:, :1]).expand(b, 1, self.dim)
        for block in self.blocks:
            cls, tokens = block(cls, tokens)
        cls, tokens = self.norm(cls), self.norm(tokens)
        pool = self.preprocessing.pool
        if pool == "cls":
            pooled = cls[:, 0]
        elif pool == "avg":
            pooled = tokens.mean(dim=(1, 2))
        elif pool == "max":
            pooled = tokens.amax(dim=(1, 2))
        else:
            raise ValueError(f"unknown pool {pool!r} for a ViT (use 'cls', 'avg' or 'max')")
        return pooled, tokens.reshape(b, t, gh, gw, self.dim)


@register("vit_video_tiny")
def vit_video_tiny(**overrides: Any) -> VideoBackbone:
    """Patch 8, 64 px, 8 frames x stride 4, dim 192, depth 4, 3 heads: a CPU-sized video ViT."""
    return VideoViT(**{**VIT_TINY, **overrides})


@register("vit_video_small")
def vit_video_small(**overrides: Any) -> VideoBackbone:
    """ViT-S/16 widths (dim 384, depth 12, 6 heads) at 224 px, 8 frames x stride 8."""
    return VideoViT(**{**VIT_SMALL, **overrides})
