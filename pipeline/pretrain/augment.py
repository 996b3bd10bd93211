"""Spatial augmentation of clips for pretraining: one draw per clip (temporally consistent) or per frame.

CVRL Algorithm 1 (Sec. 3.3): crop with area fraction S in [0.3, 1] and aspect A in [0.5, 2], resize, flip
(p 0.5), colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur; the random parameters are drawn once per
clip and applied to all of its frames. ``per_frame=True`` draws them for every frame (the inconsistent
variant of the paper's Table 9). SVT (Sec. 3.2.4) uses the same consistent scheme with DINO's settings
(:func:`dino_settings`).

Choices where the papers are silent:
- the crop is RandomResizedCrop-style (area fraction uniform, aspect log-uniform, 10 tries, then the
  whole frame), cut with :func:`vcache.data.crops.cut` (bilinear resize by matrix products, DESIGN.md);
- colour jitter is SimCLR's at strength 1 (brightness, contrast, saturation 0.8, hue 0.2) in a random
  order drawn once; the hue shift is a rotation of the chroma plane in YIQ space (a linear stand-in for
  torchvision's HSV shift); greyscale uses the ITU-R 601 luma weights;
- blur: sigma uniform in [0.1, 2.0] at 224 px (SimCLR / DINO), scaled to the output size, kernel side
  about 10 % of the image (SimCLR); CVRL's Algorithm 1 blurs every clip (no flag), so p = 1 there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vcache.data.crops import cut

__all__ = [
    "AugParams",
    "AugSettings",
    "apply_aug",
    "cvrl_settings",
    "dino_settings",
    "draw_aug",
    "random_box",
]

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugSettings:
    """Probabilities and strengths of each augmentation; a probability of 0 switches one off."""

    crop: bool = True
    area: tuple[float, float] = (0.3, 1.0)
    aspect: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue
    gray_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # at 224 px
    solarize_prob: float = 0.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def cvrl_settings(
    crop: bool = True, flip: bool = True, jitter: bool = True, gray: bool = True, blur: bool = True
) -> AugSettings:
    """CVRL Algorithm 1 with a switch per part."""
    return AugSettings(
        crop=crop,
        flip_prob=0.5 if flip else 0.0,
        jitter_prob=0.8 if jitter else 0.0,
        gray_prob=0.2 if gray else 0.0,
        blur_prob=1.0 if blur else 0.0,
    )


def dino_settings(area: tuple[float, float], blur_prob: float, solarize_prob: float = 0.0) -> AugSettings:
    """DINO's view augmentation: RandomResizedCrop over ``area`` with aspect [3/4, 4/3], flip 0.5, jitter
    (0.4, 0.4, 0.2, 0.1) p 0.8, greyscale 0.2, blur with ``blur_prob`` (DINO: 1.0 / 0.1 / 0.5 for the
    first global, the second global and the locals), solarisation ``solarize_prob`` (0.2 on the second
    global).

    SVT Sec. 3.2.4 names jitter, greyscale, Gaussian blur and solarisation; the values are DINO's. The
    official SVT code (datasets/transform.py, VideoDataAugmentationDINO) keeps the crop scales, aspect,
    flip, greyscale and jitter probabilities but jitters without hue and turns its blur and solarisation
    into no-ops ("negligible improvement"); we follow the paper here (docs/pretrain.md)."""
    return AugSettings(
        area=area,
        aspect=(3 / 4, 4 / 3),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_prob=blur_prob,
        solarize_prob=solarize_prob,
    )


@dataclass
class AugParams:
    """One draw: the crop box (t0, t1, y0, x0, y1, x1; only y/x used), flip and the photometric parameters."""

    box: np.ndarray
    flip: bool
    jitter: list[tuple[str, float]] | None = None  # ops in the order applied, with their factors
    gray: bool = False
    blur_sigma: float | None = None  # at 224 px
    solarize: bool = False


def random_box(
    rng: np.random.Generator, area: tuple[float, float], aspect: tuple[float, float], h: int, w: int
) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box in normalised (y0, x0, y1, x1): area fraction uniform, aspect log-uniform."""
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
            return y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w
    return 0.0, 0.0, 1.0, 1.0


def draw_aug(rng: np.random.Generator, s: AugSettings, h: int, w: int) -> AugParams:
    """Draw every random parameter of one augmentation (the draw a consistent clip shares)."""
    box = random_box(rng, s.area, s.aspect, h, w) if s.crop else (0.0, 0.0, 1.0, 1.0)
    flip = bool(rng.random() < s.flip_prob)
    jitter = None
    if rng.random() < s.jitter_prob:
        b, c, sat, hue = s.jitter
        ops = [
            ("brightness", rng.uniform(max(0.0, 1 - b), 1 + b)),
            ("contrast", rng.uniform(max(0.0, 1 - c), 1 + c)),
            ("saturation", rng.uniform(max(0.0, 1 - sat), 1 + sat)),
            ("hue", rng.uniform(-hue, hue)),
        ]
        jitter = [ops[i] for i in rng.permutation(4)]
    gray = bool(rng.random() < s.gray_prob)
    blur = float(rng.uniform(*s.blur_sigma)) if rng.random() < s.blur_prob else None
    solarize = bool(rng.random() < s.solarize_prob)
    return AugParams(np.array([0, 1, *box], dtype=np.float32), flip, jitter, gray, blur, solarize)


def _gray(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def _hue(x: Tensor, shift: float) -> Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by ``shift`` turns."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = math.cos(2 * math.pi * shift), math.sin(2 * math.pi * shift)
    rot = x.new_tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,njhw->nihw", m, x)


def _jitter(x: Tensor, ops: list[tuple[str, float]]) -> Tensor:
    for name, f in ops:
        if name == "brightness":
            x = x * f
        elif name == "contrast":
            x = f * x + (1 - f) * _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        elif name == "saturation":
            x = f * x + (1 - f) * _gray(x)
        else:
            x = _hue(x, f)
        x = x.clamp(0, 1)
    return x


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, reflect padding, kernel side ~10 % of the image (odd, at least 3)."""
    size = x.shape[-1]
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    r = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.device)
    c = x.shape[1]
    pad = k // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, pad, pad), mode="reflect"), g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c
    )


def _photometric(x: Tensor, p: AugParams) -> Tensor:
    if p.jitter:
        x = _jitter(x, p.jitter)
    if p.gray:
        x = _gray(x).expand(-1, 3, -1, -1)
    if p.blur_sigma is not None:
        x = _blur(x, p.blur_sigma * x.shape[-1] / 224)
    if p.solarize:
        x = torch.where(x < 0.5, x, 1 - x)
    return x


def apply_aug(frames: np.ndarray, params: list[AugParams], size: int) -> Tensor:
    """Augment frames (T, h, w, 3) uint8 into (T, 3, size, size) float in [0, 1].

    ``params`` holds one draw (the same crop, flip and photometric change on every frame: CVRL's
    temporally consistent augmentation) or T draws (one per frame: the inconsistent variant).
    """
    t = frames.shape[0]
    if len(params) not in (1, t):
        raise ValueError(f"need 1 or {t} augmentation draws, got {len(params)}")
    if len(params) == 1:
        groups = [(slice(0, t), params[0])]
    else:
        groups = [(slice(i, i + 1), p) for i, p in enumerate(params)]
    out = []
    for sl, p in groups:
        crop = cut(frames[sl], p.box, p.flip, size)
        x = torch.from_numpy(crop).permute(0, 3, 1, 2).float().div_(255)
        out.append(_photometric(x, p))
    return torch.cat(out)
