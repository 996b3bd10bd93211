"""The backbone contract: what every model that extraction can run provides.

A :class:`VideoBackbone` takes ``(B, 3, T, H, W)`` clips and returns a pooled vector and its feature map; it
carries its :class:`Preprocessing` (mean/std, crop size, clip length and stride, pooling) so that the
extraction engine, checkpoints and stores all agree on how clips are prepared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

# torchvision's Kinetics-400 video weights: their transforms' mean/std (tests/data has their state-dict keys).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass
class Preprocessing:
    """How clips must be prepared for a backbone; travels with the backbone, its checkpoints and stores."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # square crop side fed to the network
    resize_short: int  # eval mode: short side resized to this before the spatial crops
    clip_frames: int
    frame_stride: int
    pool: str = "avg"  # "avg" | "max" over T', H', W' ("cls" for ViTs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["mean"] = tuple(float(v) for v in kw["mean"])
        kw["std"] = tuple(float(v) for v in kw["std"])
        for k in ("input_size", "resize_short", "clip_frames", "frame_stride"):
            kw[k] = int(kw[k])
        return cls(**kw)


def pool_map(x: Tensor, pool: str) -> Tensor:
    """Pool a (B, C, T, H, W) map over T, H, W."""
    if pool == "avg":
        return x.mean(dim=(2, 3, 4))
    if pool == "max":
        return x.amax(dim=(2, 3, 4))
    raise ValueError(f"unknown pool {pool!r} for a convolutional map (use 'avg' or 'max')")


class VideoBackbone(nn.Module):
    """Base class of every registry entry.

    ``forward(x)`` takes ``(B, 3, T, H, W)`` clips already normalised by ``preprocessing.mean/std`` and
    returns ``(pooled (B, D), fmap (B, T', H', W', C))``: the feature vector and the last stage's map before
    pooling, channels last.
    """

    name: str = "unnamed"
    pools: tuple[str, ...] = ("avg", "max")
    # state-dict key prefixes a foreign checkpoint may lack (layers that do not feed the features).
    optional_prefixes: tuple[str, ...] = ()

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.checkpoint: str | None = None
        self.checkpoint_sha256: str | None = None
        self._map_shapes: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    @property
    def feature_dim(self) -> int:
        """Dimension of the pooled vector with the current settings."""
        return self.map_shape(self.preprocessing.clip_frames, self.preprocessing.input_size)[-1]

    def arch_config(self) -> dict:
        """Factory kwargs that rebuild this architecture (saved in checkpoints, shown by describe)."""
        return {}

    def weights_module(self) -> nn.Module:
        """The module whose state dict is saved and loaded (the wrapped net for user modules)."""
        return self

    def drop_unused(self) -> VideoBackbone:
        """Remove the layers named by ``optional_prefixes`` (they do not feed the features), in place.

        For training: DDP with ``find_unused_parameters=False`` needs every parameter to get a gradient at
        every step, and an unused classifier (VideoResNet's ``fc``) would stop it reducing any gradient.
        A checkpoint saved afterwards simply lacks those keys, which loading allows."""
        for prefix in self.optional_prefixes:
            name = prefix.rstrip(".")
            if isinstance(getattr(self, name, None), nn.Module):
                setattr(self, name, None)
        return self

    def provenance(self) -> dict:
        """Where the weights and preprocessing came from, beyond name and checkpoint (store ``source``)."""
        return {}

    def map_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        """(T', H', W', C) of the feature map for a ``frames`` x ``size`` x ``size`` clip.

        The default probes one forward pass on zeros (in eval mode, so BatchNorm statistics stay untouched);
        the built-in models override it with closed-form arithmetic.
        """
        key = (int(frames), int(size))
        if key not in self._map_shapes:
            ref = next(self.parameters(), None)
            device = ref.device if ref is not None else torch.device("cpu")
            dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    _, fmap = self(torch.zeros(1, 3, key[0], key[1], key[1], device=device, dtype=dtype))
            finally:
                self.train(was_training)
            self._map_shapes[key] = tuple(int(s) for s in fmap.shape[1:])  # type: ignore[assignment]
        return self._map_shapes[key]


def kinetics_preprocessing() -> Preprocessing:
    """torchvision Kinetics-400 weights: resize 128 x 171, centre crop 112; 16 frames, stride 2.

    The stride is not in torchvision's transforms (they take a clip as given); 2 is our choice, the common
    one for 16-frame R(2+1)D/R3D clips on 25-30 fps video.
    """
    return Preprocessing(
        KINETICS_MEAN, KINETICS_STD, input_size=112, resize_short=128, clip_frames=16, frame_stride=2
    )
