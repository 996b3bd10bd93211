"""STiCA's audio encoder: ResNet-9 on a log-mel spectrogram, average pooling, GDT's projection head.

The paper (STiCA Sec. 4.2 and appendix) follows GDT: "ResNet with 9 layers as audio encoder", always average
pooled, a 512-d representation, then two fully connected layers with an intermediate size of 512 to a 256-d
embedding. The layer details follow the official GDT/STiCA code (``src/resnet.py`` ``resnet9`` and
``model.py``), written here from its description: a torchvision-style ResNet with one basic block per
stage, i.e. a 7 x 7 stride-2 convolution on the 1-channel spectrogram, batch norm, ReLU, 3 x 3 stride-2 max
pooling, four stages of one BasicBlock (64, 128, 256, 512 channels; stride 2 from the second; 1 x 1
projection shortcuts where the shape changes), adaptive average pooling over frequency and time; Kaiming
(fan-out) initialisation of the convolutions, batch norms at (1, 0). 1 + 4 x 2 = 9 weighted layers.

Head (:class:`AudioProjection`): Linear(512, 512, no bias) -> BatchNorm -> ReLU -> Linear(512, 256), output
L2-normalised, as GDT's MLP. GDT's MLP has dropout 0.3 before each linear layer; we default to none, as
the video head of `vcache.learn.stica` (``dropout`` sets it). ``base`` < 64 gives a narrow encoder for CPU
tests (channels base .. 8 base); the paper's is 64.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AudioEncoder", "AudioProjection", "AudioResNet9", "count_layers"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AudioResNet9(nn.Module):
    """(B, 1, F, T) spectrograms -> (B, 8 * base) average-pooled features (512 for the paper's base 64)."""

    def __init__(self, base: int = 64):
        super().__init__()
        self.out_dim = 8 * base
        self.stem = nn.Sequential(
            nn.Conv2d(1, base, 7, 2, 3, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        widths = [base, 2 * base, 4 * base, 8 * base]
        blocks, cin = [], base
        for i, w in enumerate(widths):
            blocks.append(_BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, spec: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, 8 base, F / 32, T / 32) (rounded up): (B, 512, 9, 7) for 257 x 199."""
        if spec.dim() == 3:
            spec = spec.unsqueeze(1)
        return self.stages(self.stem(spec))

    def forward(self, spec: Tensor) -> Tensor:
        return self.feature_map(spec).mean(dim=(2, 3))


class AudioProjection(nn.Module):
    """GDT's MLP: Linear(in, hidden, no bias) -> BN -> ReLU -> Linear(hidden, out); L2-normalised output."""

    def __init__(self, in_dim: int = 512, hidden: int = 512, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h), dim=-1)


class AudioEncoder(nn.Module):
    """ResNet-9 and its projection: ``forward`` gives the 256-d embedding a for the cross-modal loss,
    ``embed`` the 512-d pooled representation (what a probe or a feature cache would read)."""

    def __init__(self, base: int = 64, hidden: int = 512, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.trunk = AudioResNet9(base)
        self.proj = AudioProjection(self.trunk.out_dim, hidden, out_dim, dropout)

    def embed(self, spec: Tensor) -> Tensor:
        return self.trunk(spec)

    def forward(self, spec: Tensor) -> Tensor:
        return self.proj(self.trunk(spec))


def count_layers(model: nn.Module) -> int:
    """Weighted layers on the main path (convolutions outside the shortcuts): 9 for ResNet-9."""
    return sum(1 for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name)
