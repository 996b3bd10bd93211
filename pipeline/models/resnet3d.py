"""torchvision's video ResNets (``r3d_18``, ``r2plus1d_18``, ``mc3_18``) and their narrow CPU variants.

Rebuilt here with the exact module and parameter names of torchvision so that torchvision / Kinetics-400
state dicts load unchanged (torchvision itself cannot be imported beside the CPU torch of this project).
``r3d_18_narrow`` and ``r2plus1d_18_narrow`` use widths 16-32-64-128 at 64 px for tests and the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vcache.models.base import (
    KINETICS_MEAN,
    KINETICS_STD,
    Preprocessing,
    VideoBackbone,
    kinetics_preprocessing,
    pool_map,
)
from vcache.models.registry import register


def _conv3d(cin: int, cout: int, mid: int, stride: int) -> nn.Module:
    """Full 3x3x3 convolution (R3D)."""
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv_spatial(cin: int, cout: int, mid: int, stride: int) -> nn.Module:
    """1x3x3 convolution without temporal extent or stride (MC3's upper layers)."""
    return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)


def _conv_2plus1d(cin: int, cout: int, mid: int, stride: int) -> nn.Module:
    """(2+1)D factorisation: 1x3x3 spatial conv to ``mid`` channels, BN, ReLU, then 3x1x1 temporal conv."""
    return nn.Sequential(
        nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


# conv builder, and whether its stride also downsamples time (decides the shortcut's stride)
_CONVS: dict[str, tuple[Callable[[int, int, int, int], nn.Module], bool]] = {
    "3d": (_conv3d, True),
    "2d": (_conv_spatial, False),
    "2plus1d": (_conv_2plus1d, True),
}


def _midplanes(cin: int, cout: int) -> int:
    """Channels between the spatial and temporal convs of a (2+1)D block.

    Tran et al. (R(2+1)D, Sec. 3.5) pick it so that the factorised block has the parameters of a full 3x3x3
    conv; this is torchvision's integer formula (the fixture's shapes 144, 230, 288, ... 1152 check it).
    """
    return (cin * cout * 3 * 3 * 3) // (cin * 3 * 3 + 3 * cout)


class BasicBlock(nn.Module):
    """Two-conv residual block; names (conv1, conv2, relu, downsample) as in torchvision."""

    def __init__(self, cin: int, cout: int, conv: str, stride: int) -> None:
        super().__init__()
        build, temporal = _CONVS[conv]
        mid = _midplanes(cin, cout)
        self.conv1 = nn.Sequential(build(cin, cout, mid, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(build(cout, cout, mid, 1), nn.BatchNorm3d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            ds = (stride, stride, stride) if temporal else (1, stride, stride)
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=ds, bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


def _stem(kind: str, width: int) -> nn.Sequential:
    """R3D/MC3 stem: 3x7x7 conv, stride (1, 2, 2). R(2+1)D stem: 1x7x7 conv to ``mid``, then 3x1x1 conv.

    torchvision hard-codes 45 middle channels for 64 output channels; for other widths we scale it
    (round(45 * width / 64), at least 1) -- our choice, torchvision is silent there.
    """
    if kind == "2plus1d":
        mid = max(1, round(45 * width / 64))
        return nn.Sequential(
            nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class VideoResNet(VideoBackbone):
    """torchvision's VideoResNet with BasicBlocks, returning features instead of logits.

    ``fc`` is kept so that torchvision state dicts load strictly, but the output is the pooled feature before
    it. ``feature_stages`` = n concatenates the pooled maps of the last n stages (DESIGN.md: the last three
    beat the last one on the synthetic data, 0.95 vs 0.71); the returned map is always the last stage's.
    """

    optional_prefixes = ("fc.",)

    def __init__(
        self,
        stem: str,
        convs: tuple[str, str, str, str],
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 400,
        feature_stages: int = 1,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__(preprocessing or kinetics_preprocessing())
        if not 1 <= feature_stages <= 4:
            raise ValueError(f"feature_stages must be in 1..4, got {feature_stages}")
        self.widths = tuple(widths)
        self.feature_stages = int(feature_stages)
        self.stem = _stem(stem, widths[0])
        cin = widths[0]
        for i, (conv, width, n) in enumerate(zip(convs, widths, layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, width, conv, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d(1)  # kept for torchvision parity; forward pools per setting
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation (Kaiming fan-out for convs, BN 1/0, fc N(0, 0.01))."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        return sum(self.widths[-self.feature_stages :])

    def arch_config(self) -> dict:
        return {"feature_stages": self.feature_stages}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        pool = self.preprocessing.pool
        pooled = torch.cat([pool_map(s, pool) for s in stages[-self.feature_stages :]], dim=1)
        return pooled, x.permute(0, 2, 3, 4, 1).contiguous()

    def map_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        """Closed form: follow every conv on the main path (shortcuts match it by construction)."""
        t, h, w = int(frames), int(size), int(size)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv3d) and "downsample" not in name:
                k, s, p = m.kernel_size, m.stride, m.padding
                t = _conv_out(t, k[0], s[0], p[0])  # type: ignore[index]
                h = _conv_out(h, k[1], s[1], p[1])  # type: ignore[index]
                w = _conv_out(w, k[2], s[2], p[2])  # type: ignore[index]
        return t, h, w, self.widths[-1]


def _narrow_preprocessing() -> Preprocessing:
    """Narrow CPU models: 64 px crops (short side 73 = 64 * 128 / 112, the Kinetics ratio), 16 frames x 2."""
    return Preprocessing(
        KINETICS_MEAN, KINETICS_STD, input_size=64, resize_short=73, clip_frames=16, frame_stride=2
    )


@register("r3d_18")
def r3d_18(feature_stages: int = 1, num_classes: int = 400) -> VideoResNet:
    return VideoResNet("3d", ("3d",) * 4, feature_stages=feature_stages, num_classes=num_classes)


@register("r2plus1d_18")
def r2plus1d_18(feature_stages: int = 1, num_classes: int = 400) -> VideoResNet:
    return VideoResNet("2plus1d", ("2plus1d",) * 4, feature_stages=feature_stages, num_classes=num_classes)


@register("mc3_18")
def mc3_18(feature_stages: int = 1, num_classes: int = 400) -> VideoResNet:
    return VideoResNet("3d", ("3d", "2d", "2d", "2d"), feature_stages=feature_stages, num_classes=num_classes)


NARROW_WIDTHS = (16, 32, 64, 128)


@register("r3d_18_narrow")
def r3d_18_narrow(feature_stages: int = 3, num_classes: int = 400) -> VideoResNet:
    return VideoResNet(
        "3d",
        ("3d",) * 4,
        widths=NARROW_WIDTHS,
        feature_stages=feature_stages,
        num_classes=num_classes,
        preprocessing=_narrow_preprocessing(),
    )


@register("r2plus1d_18_narrow")
def r2plus1d_18_narrow(feature_stages: int = 3, num_classes: int = 400) -> VideoResNet:
    return VideoResNet(
        "2plus1d",
        ("2plus1d",) * 4,
        widths=NARROW_WIDTHS,
        feature_stages=feature_stages,
        num_classes=num_classes,
        preprocessing=_narrow_preprocessing(),
    )
