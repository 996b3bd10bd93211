"""Frozen video backbones: the contract, the registry, each architecture family, checkpoints.

- :mod:`~vcache.models.base`: :class:`Preprocessing` and :class:`VideoBackbone`, what every model provides.
- :mod:`~vcache.models.registry`: names to factories, and a user's own ``package.module:factory``.
- :mod:`~vcache.models.resnet3d`: torchvision's ``r3d_18``, ``r2plus1d_18``, ``mc3_18`` (state dicts load
  unchanged) and the narrow CPU variants.
- :mod:`~vcache.models.cvrl_r3d`: CVRL's 3D-ResNet (``cvrl_r3d_50``, ``cvrl_r3d_narrow``).
- :mod:`~vcache.models.vit`: divided space-time attention ViTs (``vit_video_tiny``, ``vit_video_small``).
- :mod:`~vcache.models.hf`: Hugging Face ``transformers`` video and image models (``hf:<id or folder>``).
- :mod:`~vcache.models.build`: checkpoints and :func:`build_backbone`, the one way every stage gets a model.

Importing this package registers every built-in family (the list below is the one place that names them).
"""

from vcache.models import cvrl_r3d, hf, resnet3d, vit  # noqa: F401  (each registers its entries)
from vcache.models.base import KINETICS_MEAN, KINETICS_STD, Preprocessing, VideoBackbone
from vcache.models.build import (
    CHECKPOINT_FORMAT,
    build_backbone,
    describe,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from vcache.models.registry import list_backbones, list_prefixes, register
from vcache.models.resnet3d import VideoResNet, r3d_18_narrow

__all__ = [
    "CHECKPOINT_FORMAT",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "Preprocessing",
    "VideoBackbone",
    "VideoResNet",
    "build_backbone",
    "describe",
    "file_sha256",
    "list_backbones",
    "list_prefixes",
    "load_checkpoint",
    "r3d_18_narrow",
    "register",
    "save_checkpoint",
]
