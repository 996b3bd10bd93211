"""CVRL's 3D-ResNet (R3D, CVRL paper Table 1) as registry backbones: ``cvrl_r3d_50`` and ``cvrl_r3d_narrow``.

Topology (CVRL Sec. 3.2 and Table 1, the "slow" pathway of SlowFast with two changes):
- conv1 5x7x7, stride (2, 2, 2): temporal kernel 5 and temporal stride 2 (the frame stride 2 of the
  "data layer" is the preprocessing's ``frame_stride``); then a 1x3x3 max pool, spatial stride 2;
- bottleneck blocks (1x1, 1x3x3, 1x1 with 4x expansion); temporal kernels (3x1x1 first conv) only in
  res4 and res5, every other conv is spatial; no temporal downsampling after conv1;
- spatial stride 2 at the first block of res3, res4 and res5, on the 1x3x3 conv (SlowFast's choice; the
  table gives only the output sizes). Global average pooling gives the feature.

``cvrl_r3d_50``: widths 64-128-256-512 (x4 = 2048-d), blocks 3-4-6-3, 224 px, 16 frames x stride 2 as in
pretraining (Sec. 4.1). ``cvrl_r3d_narrow``: the same topology scaled down for the CPU (widths 8-16-32-64,
outputs 32-64-128-256, one block per stage, 64 px, 16 x 2), pooled over the last three stages like the
other narrow registry models (DESIGN.md). The paper is silent on normalisation: we use the registry's
Kinetics mean / std.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vcache.models.base import KINETICS_MEAN, KINETICS_STD, Preprocessing, VideoBackbone
from vcache.models.registry import register

__all__ = ["CVRLResNet", "cvrl_r3d_50", "cvrl_r3d_narrow"]

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 (temporal kernel ``kt``) -> 1x3x3 (spatial stride) -> 1x1 x4, with a projection shortcut."""

    def __init__(self, cin: int, width: int, kt: int, stride: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv3d(cin, width, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(
            width, width, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + residual)


class CVRLResNet(VideoBackbone):
    """CVRL's R3D; ``feature_stages`` = n concatenates the average-pooled maps of the last n stages."""

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        feature_stages: int = 1,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__(
            preprocessing
            or Preprocessing(
                KINETICS_MEAN, KINETICS_STD, input_size=224, resize_short=256, clip_frames=16, frame_stride=2
            )
        )
        if not 1 <= feature_stages <= 4:
            raise ValueError(f"feature_stages must be in 1..4, got {feature_stages}")
        self.widths, self.layers, self.feature_stages = tuple(widths), tuple(layers), int(feature_stages)
        self.conv1 = nn.Sequential(
            nn.Conv3d(3, widths[0], (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.pool1 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        cin = widths[0]
        for i, (width, n) in enumerate(zip(widths, layers, strict=True)):
            kt = 3 if i >= 2 else 1  # temporal kernels only in res4 and res5 (Table 1)
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, kt, stride=2 if (i > 0 and j == 0) else 1))
                cin = width * EXPANSION
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        return sum(w * EXPANSION for w in self.widths[-self.feature_stages :])

    def arch_config(self) -> dict:
        return {"feature_stages": self.feature_stages}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.conv1(x))
        stages = []
        for stage in (self.res2, self.res3, self.res4, self.res5):
            x = stage(x)
            stages.append(x)
        if self.preprocessing.pool == "avg":
            pooled = [s.mean(dim=(2, 3, 4)) for s in stages[-self.feature_stages :]]
        elif self.preprocessing.pool == "max":
            pooled = [s.amax(dim=(2, 3, 4)) for s in stages[-self.feature_stages :]]
        else:
            raise ValueError(f"unknown pool {self.preprocessing.pool!r} (use 'avg' or 'max')")
        return torch.cat(pooled, dim=1), x.permute(0, 2, 3, 4, 1).contiguous()

    def map_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        """Closed form: conv1 and pool1, then a spatial halving at res3, res4 and res5."""
        t = (int(frames) + 2 * 2 - 5) // 2 + 1
        s = (int(size) + 2 * 3 - 7) // 2 + 1
        s = (s + 2 - 3) // 2 + 1
        for _ in range(3):
            s = (s + 2 - 3) // 2 + 1
        return t, s, s, self.widths[-1] * EXPANSION


@register("cvrl_r3d_50")
def cvrl_r3d_50(feature_stages: int = 1) -> CVRLResNet:
    """CVRL's R3D-50 (Table 1): 2048-d, 224 px, 16 frames x stride 2."""
    return CVRLResNet(feature_stages=feature_stages)


@register("cvrl_r3d_narrow")
def cvrl_r3d_narrow(feature_stages: int = 3) -> CVRLResNet:
    """CVRL's topology at CPU size: widths 8-16-32-64 (x4), one block a stage, 64 px, 16 x 2, 448-d."""
    return CVRLResNet(
        widths=(8, 16, 32, 64),
        layers=(1, 1, 1, 1),
        feature_stages=feature_stages,
        preprocessing=Preprocessing(
            KINETICS_MEAN, KINETICS_STD, input_size=64, resize_short=73, clip_frames=16, frame_stride=2
        ),
    )
