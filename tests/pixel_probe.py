"""A user backbone (loaded as `pixel_probe:build`) whose features are pixel values at the crop's edges.

With mean 0 and std 1 the input is pixel / 255. On a gradient video (R = x, G = y, B = frame index) the
features say where the crop was cut from, so tests can check the stored boxes against the pixels.
"""

import torch
from torch import nn


class EdgePixels(nn.Module):
    preprocessing = {
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "input_size": 32,
        "resize_short": 32,
        "clip_frames": 4,
        "frame_stride": 3,
        "pool": "avg",
    }

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # so the module has a device and a dtype

    def forward(self, x):  # (B, 3, T, S, S) -> (B, 6, 1, 1, 1)
        feats = [
            x[:, 0, :, :, 0].mean((1, 2)),  # R of the left column
            x[:, 0, :, :, -1].mean((1, 2)),  # R of the right column
            x[:, 1, :, 0, :].mean((1, 2)),  # G of the top row
            x[:, 1, :, -1, :].mean((1, 2)),  # G of the bottom row
            x[:, 2, 0].mean((1, 2)),  # B of the first frame
            x[:, 2, -1].mean((1, 2)),  # B of the last frame
        ]
        return (torch.stack(feats, 1) + 0 * self.dummy)[:, :, None, None, None]


def build():
    return EdgePixels()
