"""STiCA's feature crops and view sets (Sec. 3.2, eq. 5).

A view is an integer slice of the trunk's T' x H' x W' feature map (`View`, `feature_crop`); the view set
T_i of one large crop is m medium and n small views, each a crop in space (full time) or in time (full
space), drawn at random positions (`ViewConfig`, `sample_views`, `default_view_config`). Default = the
paper's best (Table 1b, Sec. 6.1.1): 2 x 6^2 + 4 x 4^2 in space and 2 x 3 + 1 x 2 in time, so m = 4, n = 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class View:
    """One feature crop: the half-open index ranges [t0, t1) x [y0, y1) x [x0, x1) of a T' x H' x W' map."""

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int
    small: bool  # small views never pair with small views (eq. 6)
    kind: str  # "full", "spatial-medium", "temporal-medium", "spatial-small", "temporal-small"

    @property
    def length(self) -> int:
        return self.t1 - self.t0


def feature_crop(fmap: Any, view: View) -> Any:
    """STiCA eq. 5: the integer slice `fmap[..., t0:t1, y0:y1, x0:x1, :]` of a channels-last map.

    Works on numpy arrays and tensors of shape (..., T', H', W', C); a view, not a copy, for both.
    """
    return fmap[..., view.t0 : view.t1, view.y0 : view.y1, view.x0 : view.x1, :]


@dataclass(frozen=True)
class ViewConfig:
    """Counts and sizes of the feature crops per large crop. Defaults: STiCA Table 1b / Sec. 6.1.1."""

    spatial_medium: int = 2
    spatial_medium_size: int = 6
    spatial_small: int = 4
    spatial_small_size: int = 4
    temporal_medium: int = 2
    temporal_medium_size: int = 3
    temporal_small: int = 1
    temporal_small_size: int = 2
    include_full: bool = False  # add the uncropped L_i to T_i (not in the paper's T_i)

    @property
    def m(self) -> int:
        """Medium views per large crop (the full view, when included, counts apart)."""
        return self.spatial_medium + self.temporal_medium

    @property
    def n(self) -> int:
        """Small views per large crop."""
        return self.spatial_small + self.temporal_small

    @property
    def views_per_crop(self) -> int:
        return self.m + self.n + int(self.include_full)

    @property
    def n_terms(self) -> int:
        """Ordered loss terms per video: 2((m + n)^2 - n^2) (Sec. 3.2); a full view counts as medium."""
        big = self.views_per_crop
        return 2 * (big**2 - self.n**2)

    def check(self, map_thw: Sequence[int]) -> None:
        """Refuse counts and sizes that do not fit a T' x H' x W' map, saying which option to pass."""
        t, h, w = (int(v) for v in map_thw)
        counts = (self.spatial_medium, self.spatial_small, self.temporal_medium, self.temporal_small)
        if min(counts) < 0:
            raise ValueError("view counts must be >= 0")
        if self.views_per_crop - self.n == 0:
            raise ValueError(
                "no medium view and no --include-full: every pair would be small-small, which eq. 6 excludes"
            )
        problems = []
        for name, count, size, extent, axis in (
            ("spatial medium", self.spatial_medium, self.spatial_medium_size, min(h, w), "H' x W'"),
            ("spatial small", self.spatial_small, self.spatial_small_size, min(h, w), "H' x W'"),
            ("temporal medium", self.temporal_medium, self.temporal_medium_size, t, "T'"),
            ("temporal small", self.temporal_small, self.temporal_small_size, t, "T'"),
        ):
            if count and not 1 <= size <= extent:
                flag = "--" + name.replace(" ", "-") + "-size"
                problems.append(f"{name} crops of {size} do not fit {axis} = {extent} (pass {flag})")
        if problems:
            raise ValueError(
                f"feature map {t} x {h} x {w} is too small for the requested feature crops: "
                + "; ".join(problems)
                + ". The defaults are the paper's sizes for R(2+1)D-18's 4 x 7 x 7 map (32 frames at 112 px)."
            )


def sample_views(cfg: ViewConfig, map_thw: Sequence[int], rng: np.random.Generator) -> list[View]:
    """The view set T_i of one large crop, at uniformly random integer positions.

    Order: [full], spatial medium, temporal medium, spatial small, temporal small. A spatial view keeps
    the full time; a temporal view keeps the full space (Sec. 3.2). Positions are drawn independently per
    view (duplicates allowed), as the official code's `get_fm_crop` does.
    """
    t, h, w = (int(v) for v in map_thw)
    cfg.check((t, h, w))
    views: list[View] = []
    if cfg.include_full:
        views.append(View(0, t, 0, h, 0, w, False, "full"))

    def spatial(count: int, size: int, small: bool, kind: str) -> None:
        for _ in range(count):
            y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            views.append(View(0, t, y0, y0 + size, x0, x0 + size, small, kind))

    def temporal(count: int, size: int, small: bool, kind: str) -> None:
        for _ in range(count):
            t0 = int(rng.integers(0, t - size + 1))
            views.append(View(t0, t0 + size, 0, h, 0, w, small, kind))

    spatial(cfg.spatial_medium, cfg.spatial_medium_size, False, "spatial-medium")
    temporal(cfg.temporal_medium, cfg.temporal_medium_size, False, "temporal-medium")
    spatial(cfg.spatial_small, cfg.spatial_small_size, True, "spatial-small")
    temporal(cfg.temporal_small, cfg.temporal_small_size, True, "temporal-small")
    return views


def default_view_config(map_thw: Sequence[int], **given: Any) -> ViewConfig:
    """A ViewConfig with the paper's defaults replaced by `given` (None values ignored), checked against
    the map: a map too small for the defaults is refused with a message that names the options."""
    cfg = replace(ViewConfig(), **{k: v for k, v in given.items() if v is not None})
    cfg.check(map_thw)
    return cfg
