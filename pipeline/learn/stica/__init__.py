"""STiCA's feature crops and temporal-attention pooling head, trained on cached feature maps.

Space-Time Crop & Attend (Patrick et al., "STiCA"): from two large input crops L_1, L_2 of a video (a
`pairs`-mode store, rows 2p and 2p + 1 share a temporal extent), many more views are made by cropping the
trunk's T' x H' x W' feature map (Sec. 3.2, eq. 5), each view is pooled by a small temporal transformer
(Sec. 3.3) and the within-video contrastive loss (eq. 6) pulls views of L_1 and L_2 together.

Here the trunk is frozen: the maps come from the store, never from video, so this is **head-only STiCA
(trunk frozen)**; the paper trains the trunk too (see `vcache.pretrain.stica` for that setting).

Modules, one concept each (every name below is re-exported here, so `from vcache.learn.stica import X` works):
- `views`: `View` and `feature_crop` (eq. 5, an integer slice of a channels-last map; no ROI-align, no
  resize); `ViewConfig` / `sample_views` / `default_view_config`: the view set T_i of one large crop, m
  medium and n small views, each a crop in space (full time) or in time (full space). Default = the
  paper's best (Table 1b, Sec. 6.1.1): 2 x 6^2 + 4 x 4^2 in space and 2 x 3 + 1 x 2 in time, so m = 4, n = 5.
- `head`: `HeadConfig` / `TemporalHead`: spatial average, then a temporal transformer (2 layers x 4 heads x
  512, Sec. 3.3 and 6.3) over the per-time-step tokens with padding masks, then the projection
  512 -> 512 -> 256 (Sec. 6.1).
- `loss`: `pair_mask`, `n_loss_terms`, `within_video_loss`: eq. 6 as pure functions.
- `pairs`: `PairMaps`, the (L_1, L_2) map pairs of a pairs-mode store, streamed shard by shard when they do
  not fit in memory.
- `train`: `SticaConfig`, `train_step`, `train_stica` (-> `SticaResult`) and the head checkpoint
  (`HEAD_FORMAT`, `MODE_NAME`, `load_checkpoint`, `is_stica_checkpoint`).
- `embed`: `load_head`, `embed_maps`, `iter_crop_embeddings`, `video_embeddings`, `head_backbone_attrs`,
  `export_embeddings`: per-crop embeddings written as an ordinary feature store that `vcache probe`
  evaluates like any other.

Imports inside the package go one way: `views` <- `head` <- `train` <- `embed`; `loss`, `pairs` <- `train`.
"""

from __future__ import annotations

from vcache.learn.stica.embed import embed_maps, export_embeddings, load_head, video_embeddings
from vcache.learn.stica.embed import head_backbone_attrs as head_backbone_attrs
from vcache.learn.stica.embed import iter_crop_embeddings as iter_crop_embeddings
from vcache.learn.stica.head import HeadConfig, TemporalHead
from vcache.learn.stica.loss import n_loss_terms, pair_mask, within_video_loss
from vcache.learn.stica.pairs import PairMaps
from vcache.learn.stica.train import (
    HEAD_FORMAT,
    MODE_NAME,
    SticaConfig,
    SticaResult,
    is_stica_checkpoint,
    train_step,
    train_stica,
)
from vcache.learn.stica.train import load_checkpoint as load_checkpoint
from vcache.learn.stica.views import View, ViewConfig, default_view_config, feature_crop, sample_views

# `head_backbone_attrs`, `iter_crop_embeddings` and `load_checkpoint` are re-exported too (the `x as x`
# imports above) but, as before the split, left out of `__all__`.
__all__ = [
    "HEAD_FORMAT",
    "MODE_NAME",
    "HeadConfig",
    "PairMaps",
    "SticaConfig",
    "SticaResult",
    "TemporalHead",
    "View",
    "ViewConfig",
    "default_view_config",
    "embed_maps",
    "export_embeddings",
    "feature_crop",
    "is_stica_checkpoint",
    "load_head",
    "n_loss_terms",
    "pair_mask",
    "sample_views",
    "train_stica",
    "train_step",
    "video_embeddings",
    "within_video_loss",
]
