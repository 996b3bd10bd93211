"""STiCA's temporal-attention pooling head (Sec. 3.3, 6.1, 6.3).

Each view is averaged over space, pooled over time by a small transformer with padding masks, and projected
512 -> 512 -> 256 for the loss (`HeadConfig`, `TemporalHead`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vcache.learn.stica.views import View, feature_crop


@dataclass(frozen=True)
class HeadConfig:
    """The temporal-attention pooling head. Defaults: STiCA Sec. 3.3, 6.1 and 6.3."""

    in_dim: int  # channels C of the trunk's map
    width: int = 512  # transformer width (Sec. 6.3)
    depth: int = 2  # layers (Sec. 3.3, Table 1d: 2 is best)
    heads: int = 4  # attention heads (Sec. 3.3)
    ff_dim: int = 2048  # feed-forward width: the official code's FFN (paper silent)
    proj_hidden: int = 512  # projection 512 -> 512 -> 256 (Sec. 6.1)
    proj_dim: int = 256
    max_len: int = 64  # longest token sequence (T') the position table covers (our choice)


class TemporalHead(nn.Module):
    """Spatial average, then a temporal transformer with padding masks, then the projection MLP.

    Choices where the paper is silent (Sec. 6.3 is cut short):
    - A learned CLS token is prepended and its output is the view's representation (the official code
      reads the output of the first time step instead); a CLS token keeps the result independent of which
      time step comes first in a temporal crop.
    - Learned position embeddings of the relative time step 0..t-1 within the view (the official code has
      them as an option, off by default; without them the CLS output would be blind to temporal order).
    - Post-norm layers with GELU, dropout 0 (the official code's layer layout).
    - C != width: a linear input projection; C == width: none.
    - Projection Linear -> BatchNorm -> ReLU -> Linear, as GDT's MLP head (without its dropout).
    """

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.in_proj: nn.Module = nn.Identity() if cfg.in_dim == w else nn.Linear(cfg.in_dim, w)
        self.cls_token = nn.Parameter(torch.zeros(w))
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, w))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            w, cfg.heads, cfg.ff_dim, 0.0, activation="gelu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.proj = nn.Sequential(
            nn.Linear(w, cfg.proj_hidden),
            nn.BatchNorm1d(cfg.proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.proj_hidden, cfg.proj_dim),
        )

    @staticmethod
    def spatial_tokens(fmap: torch.Tensor) -> torch.Tensor:
        """P_s of eq. 4: (B, T, H, W, C) -> (B, T, C), the mean over the map's spatial cells."""
        return fmap.mean(dim=(-3, -2))

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) tokens, valid (B, T) bool (True = a real time step, padding after) -> (B, width).

        Padded steps are masked out of the attention, so a sequence gives the same output with or without
        padding after it.
        """
        b, t, _ = tokens.shape
        if t > self.cfg.max_len:
            raise ValueError(f"{t} time steps; the head covers at most max_len = {self.cfg.max_len}")
        x = self.in_proj(tokens) + self.pos[:t]
        x = torch.cat([self.cls_token.expand(b, 1, -1).to(x.dtype), x], dim=1)
        pad = None
        if valid is not None:
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), ~valid.bool()], dim=1)
        return self.encoder(x, src_key_padding_mask=pad)[:, 0]

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        """The representation of whole (uncropped) maps (B, T, H, W, C) -> (B, width): the probes' input."""
        return self.encode(self.spatial_tokens(fmap))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(B, width) -> (B, proj_dim) L2-normalised embeddings z for the loss."""
        return F.normalize(self.proj(h), dim=-1)

    def views_forward(self, fmap: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
        """All views of a batch of maps in one transformer pass: (B, T, H, W, C) -> z (B, V, proj_dim).

        Each view is cut with `feature_crop` (the same positions for every video of the batch, as the
        official code does), averaged over space, and padded at the end to T' with a padding mask.
        """
        b, t = fmap.shape[0], fmap.shape[1]
        tokens = fmap.new_zeros(len(views), b, t, fmap.shape[-1])
        valid = torch.zeros(len(views), b, t, dtype=torch.bool, device=fmap.device)
        for i, v in enumerate(views):
            tokens[i, :, : v.length] = self.spatial_tokens(feature_crop(fmap, v))
            valid[i, :, : v.length] = True
        h = self.encode(tokens.reshape(-1, t, tokens.shape[-1]), valid.reshape(-1, t))
        return self.project(h).reshape(len(views), b, -1).transpose(0, 1)
