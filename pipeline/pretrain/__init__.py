"""Self-supervised pretraining of fresh backbones from the user's own videos (``vcache pretrain``).

A small registry maps a method name to the module that implements it. Each module exposes ``PRESETS``
(named settings: ``cpu`` for minutes on a CPU, ``paper`` for the paper's scale), a config dataclass and a
``train_*`` function that writes a vcache backbone checkpoint. Modules are imported on demand, so this
package stays free of torch until a method is used.

- :mod:`~vcache.pretrain.cvrl`, :mod:`~vcache.pretrain.svt`: the methods ``vcache pretrain`` runs by name.
- :mod:`~vcache.pretrain.stica`: end-to-end STiCA (trunk + feature-crop head) on clip pairs.
- :mod:`~vcache.pretrain.losses`: the SSL losses (InfoNCE, DINO / SVT) as pure functions.
- :mod:`~vcache.pretrain.augment`: temporally consistent (or per-frame) spatial augmentation.
- :mod:`~vcache.pretrain.data`: the video list, the clip dataset and the global batch sampler.
- :mod:`~vcache.pretrain.loop`: schedules, resumable training state, progress, end of a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["METHODS", "get_method", "register_method"]

METHODS: dict[str, str] = {
    "cvrl": "vcache.pretrain.cvrl",  # contrastive, temporally consistent augmentation (CVRL)
    "svt": "vcache.pretrain.svt",  # student-teacher self-distillation of a video ViT (SVT)
}


def register_method(name: str, module: str) -> None:
    """Add a method: ``module`` is the import path of its implementation."""
    if name in METHODS and METHODS[name] != module:
        raise ValueError(f"pretraining method {name!r} is already registered by {METHODS[name]}")
    METHODS[name] = module


def get_method(name: str) -> ModuleType:
    """The module of a registered method (imported now)."""
    if name not in METHODS:
        raise KeyError(f"unknown pretraining method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name])
