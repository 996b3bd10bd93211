"""Backbone registry: frozen video networks that turn a clip into a pooled vector and a feature map.

Every entry is a :class:`VideoBackbone`. It carries its :class:`Preprocessing` (mean/std, crop size, clip
length and stride, pooling) so that the extraction engine, checkpoints and stores all agree on how clips are
prepared. Entries:

- ``r3d_18``, ``r2plus1d_18``, ``mc3_18``: torchvision's video ResNets, rebuilt here with the exact module and
  parameter names of torchvision so that torchvision / Kinetics-400 state dicts load unchanged (torchvision
  itself cannot be imported beside the CPU torch of this project).
- ``r3d_18_narrow``, ``r2plus1d_18_narrow``: widths 16-32-64-128 at 64 px for tests and the CPU.
- ``vit_video_tiny``, ``vit_video_small``: divided space-time attention ViTs (see :mod:`vcache.vit`).
- ``"package.module:factory"``: a user's own model.

Checkpoints: :func:`save_checkpoint` writes the vcache format (weights + name + preprocessing + config);
:func:`load_checkpoint` reads that format and the usual foreign layouts (plain state dict, ``{"state_dict":
...}``, ``{"model": ...}``, ``{"backbone": ...}``, ``module.`` / ``backbone.`` prefixes).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "Preprocessing",
    "VideoBackbone",
    "VideoResNet",
    "build_backbone",
    "describe",
    "file_sha256",
    "list_backbones",
    "load_checkpoint",
    "register",
    "save_checkpoint",
]

# torchvision's Kinetics-400 video weights (fixtures/torchvision-video-state-dicts.json, DESIGN.md).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

CHECKPOINT_FORMAT = "vcache-backbone-1"


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


def _pool_map(x: Tensor, pool: str) -> Tensor:
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


# --------------------------------------------------------------------------------------------------------
# Video ResNets (torchvision layout: stem, layer1..layer4, avgpool, fc)
# --------------------------------------------------------------------------------------------------------


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
        super().__init__(preprocessing or _kinetics_preprocessing())
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
        pooled = torch.cat([_pool_map(s, pool) for s in stages[-self.feature_stages :]], dim=1)
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


def _kinetics_preprocessing() -> Preprocessing:
    """torchvision Kinetics-400 weights: resize 128 x 171, centre crop 112; 16 frames, stride 2.

    The stride is not in torchvision's transforms (they take a clip as given); 2 is our choice, the common
    one for 16-frame R(2+1)D/R3D clips on 25-30 fps video.
    """
    return Preprocessing(
        KINETICS_MEAN, KINETICS_STD, input_size=112, resize_short=128, clip_frames=16, frame_stride=2
    )


def _narrow_preprocessing() -> Preprocessing:
    """Narrow CPU models: 64 px crops (short side 73 = 64 * 128 / 112, the Kinetics ratio), 16 frames x 2."""
    return Preprocessing(
        KINETICS_MEAN, KINETICS_STD, input_size=64, resize_short=73, clip_frames=16, frame_stride=2
    )


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., VideoBackbone]] = {}


def register(name: str) -> Callable[[Callable[..., VideoBackbone]], Callable[..., VideoBackbone]]:
    """Decorator: register ``factory(**kwargs) -> VideoBackbone`` under ``name``."""

    def deco(factory: Callable[..., VideoBackbone]) -> Callable[..., VideoBackbone]:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
            factory.__module__,
            factory.__qualname__,
        ):
            raise ValueError(
                f"backbone {name!r} is already registered by {old.__module__}.{old.__qualname__}"
            )
        _REGISTRY[name] = factory
        return factory

    return deco


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


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


@register("vit_video_tiny")
def vit_video_tiny(**overrides: Any) -> VideoBackbone:
    """Patch 8, 64 px, 8 frames x stride 4, dim 192, depth 4, 3 heads: a CPU-sized video ViT."""
    from vcache.vit import VIT_TINY, VideoViT

    return VideoViT(**{**VIT_TINY, **overrides})


@register("vit_video_small")
def vit_video_small(**overrides: Any) -> VideoBackbone:
    """ViT-S/16 widths (dim 384, depth 12, 6 heads) at 224 px, 8 frames x stride 8 (see vcache.vit)."""
    from vcache.vit import VIT_SMALL, VideoViT

    return VideoViT(**{**VIT_SMALL, **overrides})


# --------------------------------------------------------------------------------------------------------
# User models
# --------------------------------------------------------------------------------------------------------


class MapBackbone(VideoBackbone):
    """Wraps a user's ``nn.Module`` that maps ``(B, 3, T, H, W)`` clips to ``(B, C, T', H', W')`` maps.

    Its preprocessing is the module's ``preprocessing`` attribute (a Preprocessing or a dict) when it has
    one, else the Kinetics defaults (our choice). Checkpoints hold the wrapped module's own state dict.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing | None = None) -> None:
        super().__init__(preprocessing or _kinetics_preprocessing())
        self.net = net

    def weights_module(self) -> nn.Module:
        return self.net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.net(x)
        if not isinstance(m, Tensor) or m.dim() != 5:
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"backbone {self.name!r}: the module must return a (B, C, T', H', W') map, got {got}"
            )
        return _pool_map(m, self.preprocessing.pool), m.permute(0, 2, 3, 4, 1).contiguous()


def _user_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"backbone spec {spec!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"backbone {spec!r}: cannot import module {module_name!r} ({e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ImportError(f"backbone {spec!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _construct(name: str, **kwargs: Any) -> VideoBackbone:
    if name in _REGISTRY:
        model = _REGISTRY[name](**kwargs)
    elif ":" in name:
        made = _user_factory(name)(**kwargs)
        if isinstance(made, VideoBackbone):
            model = made
        elif isinstance(made, nn.Module):
            pre = getattr(made, "preprocessing", None)
            if isinstance(pre, Mapping):
                pre = Preprocessing.from_dict(pre)
            model = MapBackbone(made, pre if isinstance(pre, Preprocessing) else None)
        else:
            raise TypeError(
                f"backbone {name!r}: the factory returned {type(made).__name__}, not an nn.Module"
            )
    else:
        raise KeyError(
            f"unknown backbone {name!r}; registered: {', '.join(list_backbones())} "
            "(or give 'package.module:factory')"
        )
    if not isinstance(model, VideoBackbone):
        raise TypeError(f"backbone factory {name!r} returned {type(model).__name__}, not a VideoBackbone")
    model.name = name
    return model


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model", "backbone")
_PREFIXES = ("module.", "backbone.")


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop DDP's ``module.`` and a wrapper's ``backbone.`` prefixes (repeatedly, in any nesting).

    When some keys carry the prefix, only those are kept: e.g. a DINO-style ``backbone.* / head.*`` dict
    keeps the backbone and drops the projection head.
    """
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if any(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
                changed = True
    return sd


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, Tensor) for v in d.values())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint into ``{"state_dict", "backbone", "preprocessing", "config"}``.

    ``backbone`` (the name) and ``preprocessing`` (a dict) are None unless the file is in vcache format.

    Accepts the vcache format written by :func:`save_checkpoint`, a plain state dict, or a dict holding one
    under ``state_dict`` / ``model`` / ``backbone``. In foreign files ``module.`` and ``backbone.`` key
    prefixes are removed; vcache files keep their exact names (a user's net may own a ``backbone`` module).
    Files are read with ``weights_only=True``: nothing in them is executed.
    """
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"cannot read checkpoint {str(path)!r} as tensors-only torch file: {e}") from e
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return {
            "state_dict": dict(obj["state_dict"]),
            "backbone": obj.get("backbone"),
            "preprocessing": obj.get("preprocessing"),
            "config": dict(obj.get("config") or {}),
        }
    sd = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        sd = next((obj[k] for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k))), None)
    if not _is_state_dict(sd):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} holds no state dict (top level: {keys}); expected a state "
            f"dict or a dict with one under {', '.join(_WRAPPER_KEYS)}"
        )
    return {"state_dict": _strip_prefixes(dict(sd)), "backbone": None, "preprocessing": None, "config": {}}


def _load_weights(model: VideoBackbone, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict load (up to ``optional_prefixes``) with an error that names the keys that do not fit."""
    target = model.weights_module()
    own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(model.optional_prefixes)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(v)} {what} (e.g. {', '.join(v[:4])})"
            for what, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatches: checkpoint vs model", mismatched),
            )
            if v
        ]
        raise ValueError(f"checkpoint {source} does not fit backbone {model.name!r}: " + "; ".join(parts))
    target.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def save_checkpoint(path: str | os.PathLike, model: VideoBackbone, config: dict | None = None) -> None:
    """Write the vcache format: weights, backbone name, preprocessing and ``config``.

    ``config["backbone_kwargs"]`` records the factory kwargs that rebuild the architecture (e.g.
    ``feature_stages``). The config is made JSON-plain so that the file loads with ``weights_only=True``.
    Written to a temporary file and renamed, so a kill never leaves half a checkpoint under ``path``.
    """
    cfg = json.loads(json.dumps(dict(config or {}), default=str))
    cfg["backbone_kwargs"] = json.loads(json.dumps(model.arch_config(), default=str))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": model.name,
        "preprocessing": model.preprocessing.to_dict(),
        "config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in model.weights_module().state_dict().items()},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the checkpoint hash recorded in store provenance), read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PRE_FIELDS = {f.name for f in fields(Preprocessing)} - {"pool"}


def build_backbone(
    name: str | None, checkpoint: str | os.PathLike | None = None, pool: str | None = None, **kwargs: Any
) -> VideoBackbone:
    """Build a registry entry (or ``"package.module:factory"``), optionally loading ``checkpoint``.

    - ``name`` None takes the name stored in a vcache-format checkpoint.
    - A vcache checkpoint of the same name also restores its factory kwargs (``config["backbone_kwargs"]``)
      and its preprocessing, which override the registry defaults.
    - kwargs named like Preprocessing fields (``clip_frames``, ``input_size``, ...) override the
      preprocessing (e.g. ``clip_frames=32`` for STiCA's 4 x 7 x 7 R(2+1)D map); the rest go to the factory.
    - ``pool`` overrides ``preprocessing.pool``.

    The model is returned in eval mode (frozen-feature extraction is the main use; call ``.train()`` to
    pretrain).
    """
    ck = load_checkpoint(checkpoint) if checkpoint is not None else None
    if name is None:
        if ck is None or not ck["backbone"]:
            raise ValueError("no backbone name given and the checkpoint (if any) does not name one")
        name = ck["backbone"]
    pre_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _PRE_FIELDS}
    if ck is not None and ck["backbone"] == name:
        kwargs = {**ck["config"].get("backbone_kwargs", {}), **kwargs}
    model = _construct(name, **kwargs)
    if ck is not None:
        _load_weights(
            model,
            ck["state_dict"],
            repr(str(checkpoint))
            + (f" (saved from {ck['backbone']!r})" if ck["backbone"] and ck["backbone"] != name else ""),
        )
        if ck["preprocessing"]:
            model.preprocessing = Preprocessing.from_dict(ck["preprocessing"])
        model.checkpoint = str(checkpoint)
        model.checkpoint_sha256 = file_sha256(checkpoint)
    if pre_overrides:
        model.preprocessing = Preprocessing.from_dict({**model.preprocessing.to_dict(), **pre_overrides})
    if pool is not None:
        model.preprocessing = replace(model.preprocessing, pool=pool)
    if model.preprocessing.pool not in model.pools:
        raise ValueError(
            f"pool {model.preprocessing.pool!r} is not available for {name!r} "
            f"(choose from {', '.join(model.pools)})"
        )
    return model.eval()


def describe(model: VideoBackbone) -> dict:
    """Provenance for store attributes (JSON-plain)."""
    return {
        "name": model.name,
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": model.checkpoint_sha256,
        "feature_dim": int(model.feature_dim),
        "feature_stages": getattr(model, "feature_stages", None),
        "preprocessing": model.preprocessing.to_dict(),
        "config": json.loads(json.dumps(model.arch_config(), default=str)),
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }


from vcache import cvrl_r3d  # noqa: E402,F401
