"""The classifiers a probe trains on cached features, and their training loop.

A head maps a batch of videos' clip features ``(B, K, D)`` and boxes ``(B, K, 6)`` to logits ``(B, R, C)``:
R output rows per video, each trained with its video's label; a video's prediction is the softmax of its
rows averaged (``predict_proba``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vcache.learn.aggregator import ScaleAggregator


class ClipHead(nn.Module):
    """Per-clip classifier: (B, K, D) -> (B, K, C) logits. hidden 0: linear; else a 1-hidden-layer MLP."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 0, bn: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False) if bn else None
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, n_classes))
        else:
            self.net = nn.Linear(in_dim, n_classes)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        b, k, d = feats.shape
        x = feats.reshape(b * k, d)
        if self.bn is not None:
            x = self.bn(x)
        return self.net(x).reshape(b, k, -1)


class SequenceHead(nn.Module):
    """The SCALE aggregator over a video's clips, read out per clip: a linear head on concat(C_i, CLS), one
    row of logits per clip, (B, K, D) -> (B, K, C). SCALE Sec. 4.1 ("a linear softmax head on the
    concatenation of the individual clip features and the [SET] token before averaging") and the official
    code's LinearOnTop, whose C_i is the clip's input feature, for the frozen and the fine-tuned case alike.

    freeze=True is SCALE_linear computed on the fly (the aggregator in eval mode, no gradient); False is the
    Transformer baseline (random init) or SCALE_ft (started from the checkpoint)."""

    def __init__(self, aggregator: ScaleAggregator, n_classes: int, bn: bool = False, freeze: bool = False):
        super().__init__()
        cfg = aggregator.cfg
        in_dim = cfg.feature_dim + cfg.width
        self.aggregator, self.freeze = aggregator, freeze
        if freeze:
            aggregator.requires_grad_(False)
        self.bn = nn.BatchNorm1d(in_dim, affine=False) if bn else None
        self.head = nn.Linear(in_dim, n_classes)

    def train(self, mode: bool = True) -> SequenceHead:
        super().train(mode)
        if self.freeze:
            self.aggregator.eval()  # no dropout in a frozen aggregator
        return self

    def readout(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """concat(C_i, CLS) per clip: (B, K, D + W)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            _, cls = self.aggregator(feats, boxes)
        return torch.cat([feats, cls.unsqueeze(1).expand(-1, feats.shape[1], -1)], dim=-1)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = self.readout(feats, boxes)
        b, k, d = x.shape
        x = x.reshape(b * k, d)
        if self.bn is not None:
            x = self.bn(x)
        return self.head(x).reshape(b, k, -1)


def sample_views(
    feats: torch.Tensor, boxes: torch.Tensor, views: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `views` of each video's K crops (a different draw per video): the official protocol's
    training batches on a train-mode store (8 random views per video per step)."""
    b, k = feats.shape[:2]
    idx = torch.rand(b, k, generator=generator).argsort(dim=1)[:, :views].to(feats.device)
    f = torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
    return f, torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 6))


# -- training --------------------------------------------------------------------------------------------
def predict_proba(model: nn.Module, feats: torch.Tensor, boxes: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Video class probabilities: the softmax of each output row, averaged over a video's rows."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(feats), batch):
            out.append(model(feats[i : i + batch], boxes[i : i + batch]).softmax(-1).mean(1).cpu())
    return torch.cat(out).numpy()


def fit(
    model: nn.Module,
    feats: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    wd: float,
    epochs: int,
    batch: int,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None,
    eval_at: tuple[int, ...] = (),
    views: int | None = None,
) -> dict[int, float]:
    """Train with AdamW at a constant lr (so the first E epochs of a longer run equal an E-epoch run) and
    cross-entropy on every output row (each clip carries its video's label). `views`: each step sees a random
    `views` of each video's crops (train-mode stores); None: all. Returns val top-1 by epoch."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    n = len(feats)
    accs: dict[int, float] = {}
    for ep in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen).to(feats.device)
        for i in range(0, n, batch):
            vids = order[i : i + batch]
            if len(vids) < 2 and n >= 2:  # BatchNorm needs two rows; a lone leftover video is skipped
                continue
            f, b = feats[vids], boxes[vids]
            if views is not None and views < f.shape[1]:
                f, b = sample_views(f, b, views, gen)
            logits = model(f, b)
            y = labels[vids].unsqueeze(1).expand(-1, logits.shape[1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None and ep in eval_at:
            probs = predict_proba(model, val[0], val[1])
            accs[ep] = float((probs.argmax(1) == val[2]).mean())
    return accs
