"""SCALE's model (Sec. 3.3 of the paper): a small transformer over a set of cached clip features and their
boxes, with the MSK token, the CLS token and the self-supervised heads; and how the two sets of clips are
drawn from a video's cached crops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vcache.learn.losses import mcm_loss, set_loss

# Values the official code (github.com/Separius/SCALE, src/train.py and src/scale.py) uses where the paper is
# silent; each has a switch. `paper` marks the one place the paper's own equations differ (loss weighting).
LOSS_FORMS = ("official", "paper")
MASKINGS = ("bernoulli", "count")


@dataclass
class ScaleConfig:
    """Architecture and training settings. Where the paper fixes a value it is cited; where it is silent the
    default is the official code's (docs/stage2.md lists both)."""

    feature_dim: int
    width: int = 256  # Table 10: 2 layers x 256 is the default
    depth: int = 2
    heads: int = 0  # 0: width // 32, the official code's rule (8 heads at 256)
    ff_mult: float = 2.0  # official mlp_ratio 2.0
    dropout: float = 0.1  # official: dropout and attention dropout 0.1
    proj_dim: int = 128  # official: output dim of both contrastive spaces
    target_head: tuple[int, int] = (3, 2048)  # (layers, hidden) of the MCM target head; official
    pred_head: tuple[int, int] = (2, 4096)  # MCM prediction and SET heads; official (the paper: 3 layers)
    k: int = 8  # clips per set (Table 11: 8 x 2)
    mask_ratio: float = 0.25  # Table 9
    masking: str = "bernoulli"  # official: each clip masked with probability mask_ratio; "count": exactly
    loss_form: str = "official"  # official: (SET + MCM) / 2, each a mean; "paper": eq. 3-8, sums
    temperature: float = 0.2  # official code
    use_mcm: bool = True  # Table 8
    use_set: bool = True
    lr: float = 3e-4  # official code, AdamW
    weight_decay: float = 1e-4  # official; not on biases, 1-d parameters or the CLS/MSK tokens
    warmup: float = 0.05  # official: linear warm-up over 5 % of the steps, then cosine to 0, per step
    batch_size: int = 512  # Sec. 4.1; capped by the number of videos
    drop_last: bool = True  # official: the last partial batch of an epoch is dropped
    epochs: int = 200  # Sec. 4.3 ablation setup (the main results use 500)
    seed: int = 0

    def __post_init__(self) -> None:
        self.target_head, self.pred_head = tuple(self.target_head), tuple(self.pred_head)
        if self.masking not in MASKINGS:
            raise ValueError(f"masking {self.masking!r}: one of {', '.join(MASKINGS)}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form {self.loss_form!r}: one of {', '.join(LOSS_FORMS)}")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask ratio {self.mask_ratio}: must be in [0, 1)")
        if min(*self.target_head, *self.pred_head) < 1:
            raise ValueError("head layers and widths must be at least 1")

    def n_heads(self) -> int:
        return self.heads if self.heads > 0 else max(1, self.width // 32)

    def n_masked(self) -> int:
        """With masking "count": exactly this many clips per set, max(1, round(ratio * K)) (0 for ratio 0).
        With "bernoulli" it is the expected count, rounded."""
        return 0 if self.mask_ratio <= 0 else max(1, round(self.mask_ratio * self.k))


def mlp_head(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    """A contrastive head: `layers` linear layers without bias or BatchNorm, GELU between them (the official
    code's get_head; the paper: MLPs without BatchNorm, Sec. 4.1). The caller L2-normalises the output."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(
            nn.Linear(in_dim if i == 0 else hidden, out_dim if i == layers - 1 else hidden, bias=False)
        )
        if i < layers - 1:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


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
            int(cfg.ff_mult * w),
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
    two MLPs theta_A, theta_B of eq. 1); cls_head maps both sets' CLS outputs into the SET space (one head for
    both sets, as the official code's set_head).
    """

    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        self.cfg = cfg
        self.aggregator = ScaleAggregator(cfg)
        (tl, tw), (pl, pw) = cfg.target_head, cfg.pred_head
        self.pred_head = mlp_head(cfg.width, pw, cfg.proj_dim, pl)
        self.tgt_head = mlp_head(cfg.feature_dim, tw, cfg.proj_dim, tl)
        self.cls_head = mlp_head(cfg.width, pw, cfg.proj_dim, pl)

    def losses(
        self, feats: tuple[torch.Tensor, torch.Tensor], boxes: tuple[torch.Tensor, torch.Tensor], masks
    ) -> dict[str, torch.Tensor]:
        """feats/boxes/masks: one per set, (B, K, D) / (B, K, 6) / (B, K) bool. Returns total, mcm, set."""
        cfg = self.cfg
        tau, form = cfg.temperature, cfg.loss_form
        # Each set is its own sequence: no attention across the sets.
        outs = [self.aggregator(f, b, m) for f, b, m in zip(feats, boxes, masks, strict=True)]
        zero = feats[0].new_zeros(())
        mcm = st = zero
        if cfg.use_mcm:
            # Every masked prediction is scored against the targets of all clips of both sets of every video
            # in the batch (official code; the paper: "all other clips from the same video and the rest of
            # the minibatch").
            pred = F.normalize(self.pred_head(torch.cat([o[0] for o in outs], dim=1)), dim=-1)
            tgt = F.normalize(self.tgt_head(torch.cat(feats, dim=1)), dim=-1)
            mcm = mcm_loss(pred, tgt, torch.cat(masks, dim=1), tau, form)
        if cfg.use_set:
            z1, z2 = (F.normalize(self.cls_head(o[1]), dim=-1) for o in outs)
            st = set_loss(z1, z2, tau, form)
        if form == "paper":
            total = mcm + st  # eq. 8: unweighted sum
        else:
            total = (mcm + st) / (int(cfg.use_mcm) + int(cfg.use_set))  # official: weighted mean, weights 1
        return {"total": total, "mcm": mcm, "set": st}


# -- sampling -------------------------------------------------------------------------------------------
def sample_sets(
    n_videos: int,
    n_crops: int,
    k: int,
    mask_ratio: float,
    generator: torch.Generator,
    masking: str = "bernoulli",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two disjoint random sets of k of each video's n_crops cached crops, and their masks.

    Returns idx1, idx2 (n_videos, k) crop indices and mask1, mask2 (n_videos, k) bool: each clip masked with
    probability `mask_ratio` ("bernoulli", the official code), or exactly max(1, round(ratio * k)) per row
    ("count")."""
    perm = torch.rand(n_videos, n_crops, generator=generator).argsort(dim=1)
    idx1, idx2 = perm[:, :k], perm[:, k : 2 * k]
    n_masked = 0 if mask_ratio <= 0 else max(1, round(mask_ratio * k))
    masks = []
    for _ in range(2):
        draw = torch.rand(n_videos, k, generator=generator)
        if masking == "bernoulli":
            masks.append(draw < mask_ratio)
        else:
            masks.append(draw.argsort(dim=1) < n_masked)
    return idx1, idx2, masks[0], masks[1]


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, N, C), idx: (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
