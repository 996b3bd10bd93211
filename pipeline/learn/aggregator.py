"""SCALE's model (Sec. 3.3 of the paper): a small transformer over a set of cached clip features and their
boxes, with the MSK token, the CLS token and the self-supervised heads; and how the two sets of clips are
drawn from a video's cached crops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vcache.learn.losses import mcm_loss, set_loss


@dataclass
class ScaleConfig:
    """Architecture and training settings. Defaults: the paper (Sec. 4.1, 4.3) and the official code."""

    feature_dim: int
    width: int = 256  # Table 10: 2 layers x 256 is the default
    depth: int = 2
    heads: int = 0  # 0: width // 64 (at least 1); the paper is silent, our choice
    ff_mult: int = 4  # feed-forward width = 4 x width, the usual transformer choice (paper silent)
    dropout: float = 0.0  # paper silent; 0 keeps training deterministic given the seed
    proj_dim: int = 256  # output dim of the contrastive heads (paper silent; our choice = width)
    k: int = 8  # clips per set (Table 11: 8 x 2)
    mask_ratio: float = 0.25  # Table 9
    temperature: float = 0.2  # official code
    use_mcm: bool = True  # Table 8
    use_set: bool = True
    lr: float = 3e-4  # official code, AdamW
    weight_decay: float = 0.05  # paper silent; a common AdamW value for small transformers
    batch_size: int = 512  # Sec. 4.1; capped by the number of videos
    epochs: int = 200  # Sec. 4.3 ablation setup (the main results use 500)
    seed: int = 0

    def n_heads(self) -> int:
        return self.heads if self.heads > 0 else max(1, self.width // 64)

    def n_masked(self) -> int:
        """Exactly this many clips are masked per set: max(1, round(ratio * K)), or 0 for ratio 0.

        The paper words masking as a per-clip chance; a fixed count gives every batch the same number of
        MCM terms (our choice, see the issue)."""
        return 0 if self.mask_ratio <= 0 else max(1, round(self.mask_ratio * self.k))


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """SCALE's contrastive head: a 3-layer MLP without BatchNorm (Sec. 4.1); the caller normalises."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )


class ScaleAggregator(nn.Module):
    """The predictor network: input projection + box MLP + learned MSK/CLS tokens + encoder-only transformer.

    forward(features (B, K, D), boxes (B, K, 6), mask (B, K) bool or None) -> (tokens (B, K, W), cls (B, W)).
    """

    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.feature_dim, w)
        # Eq. 5: an MLP over the 6 normalised box numbers (t0, t1, y0, x0, y1, x1 from the store), added to
        # every token, masked ones included. Two layers: the paper says "MLP" without a depth.
        self.box_mlp = nn.Sequential(nn.Linear(6, w), nn.GELU(), nn.Linear(w, w))
        self.msk_token = nn.Parameter(torch.zeros(w))
        self.cls_token = nn.Parameter(torch.zeros(w))
        nn.init.normal_(self.msk_token, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            w,
            cfg.n_heads(),
            cfg.ff_mult * w,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)  # pre-norm layers need a final norm (our choice of pre-norm)

    def forward(
        self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.in_proj(features)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.msk_token.to(x.dtype), x)
        x = x + self.box_mlp(boxes)
        # The CLS token carries no box: it summarises the whole set.
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        y = self.norm(self.encoder(torch.cat([cls, x], dim=1)))
        return y[:, 1:], y[:, 0]


class ScaleSSL(nn.Module):
    """The aggregator plus the three contrastive heads used only for self-supervised training.

    pred_head maps predictor outputs and tgt_head maps original backbone features into the MCM space (the
    two MLPs theta_A, theta_B of eq. 1); cls_head maps both sets' CLS outputs into the SET space (shared by
    the two sets, whose roles are symmetric: our choice, the paper does not say).
    """

    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        self.cfg = cfg
        self.aggregator = ScaleAggregator(cfg)
        self.pred_head = mlp_head(cfg.width, cfg.width, cfg.proj_dim)
        self.tgt_head = mlp_head(cfg.feature_dim, cfg.width, cfg.proj_dim)
        self.cls_head = mlp_head(cfg.width, cfg.width, cfg.proj_dim)

    def losses(
        self, feats: tuple[torch.Tensor, torch.Tensor], boxes: tuple[torch.Tensor, torch.Tensor], masks
    ) -> dict[str, torch.Tensor]:
        """feats/boxes/masks: one per set, (B, K, D) / (B, K, 6) / (B, K) bool. Returns total, mcm, set."""
        cfg = self.cfg
        tau = cfg.temperature
        mcm = feats[0].new_zeros(())
        cls_out = []
        for f, b, m in zip(feats, boxes, masks, strict=True):
            tokens, cls = self.aggregator(f, b, m)  # each set is its own sequence: no attention across sets
            cls_out.append(cls)
            if cfg.use_mcm:
                pred = F.normalize(self.pred_head(tokens), dim=-1)
                tgt = F.normalize(self.tgt_head(f), dim=-1)
                mcm = mcm + mcm_loss(pred, tgt, m, tau)  # eq. 6 sums the two sets' terms
        st = feats[0].new_zeros(())
        if cfg.use_set:
            z1, z2 = (F.normalize(self.cls_head(c), dim=-1) for c in cls_out)
            st = set_loss(z1, z2, tau)
        return {"total": mcm + st, "mcm": mcm, "set": st}  # eq. 8: unweighted sum


# -- sampling -------------------------------------------------------------------------------------------
def sample_sets(
    n_videos: int, n_crops: int, k: int, n_masked: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two disjoint random sets of k of each video's n_crops cached crops, and their masks.

    Returns idx1, idx2 (n_videos, k) crop indices and mask1, mask2 (n_videos, k) bool with exactly
    n_masked True per row."""
    perm = torch.rand(n_videos, n_crops, generator=generator).argsort(dim=1)
    idx1, idx2 = perm[:, :k], perm[:, k : 2 * k]
    masks = []
    for _ in range(2):
        order = torch.rand(n_videos, k, generator=generator).argsort(dim=1)
        masks.append(order < n_masked)
    return idx1, idx2, masks[0], masks[1]


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, N, C), idx: (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
