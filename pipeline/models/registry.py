"""The backbone registry: names to factories, and a user's own ``package.module:factory``.

Each architecture module registers its entries with :func:`register` when it is imported; the package
``vcache.models`` imports every built-in family, so the registry never imports the modules that use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from vcache.models.base import Preprocessing, VideoBackbone, kinetics_preprocessing, pool_map

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


_PREFIXES: dict[str, Callable[..., VideoBackbone]] = {}


def register_prefix(prefix: str) -> Callable[[Callable[..., VideoBackbone]], Callable[..., VideoBackbone]]:
    """Decorator: ``prefix:SPEC`` names are built by ``factory(SPEC, **kwargs)`` (e.g. ``hf:FOLDER``)."""

    def deco(factory: Callable[..., VideoBackbone]) -> Callable[..., VideoBackbone]:
        _PREFIXES[prefix] = factory
        return factory

    return deco


def list_prefixes() -> list[str]:
    return sorted(_PREFIXES)


# --------------------------------------------------------------------------------------------------------
# User models
# --------------------------------------------------------------------------------------------------------


class MapBackbone(VideoBackbone):
    """Wraps a user's ``nn.Module`` that maps ``(B, 3, T, H, W)`` clips to ``(B, C, T', H', W')`` maps.

    Its preprocessing is the module's ``preprocessing`` attribute (a Preprocessing or a dict) when it has
    one, else the Kinetics defaults (our choice; recorded as such in the store's ``backbone.source`` and
    warned about at extraction). A module that loads its own weights names the file in a ``checkpoint``
    attribute: it is recorded with its sha256 like a ``--checkpoint``. Checkpoints hold the wrapped module's
    own state dict.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing | None = None) -> None:
        super().__init__(preprocessing or kinetics_preprocessing())
        self.net = net
        self.preprocessing_declared = preprocessing is not None
        declared = getattr(net, "checkpoint", None)
        self.declared_weights = str(declared) if declared else None

    def provenance(self) -> dict:
        return {
            "preprocessing": "the module's preprocessing attribute"
            if self.preprocessing_declared
            else "Kinetics defaults: the module declares no preprocessing",
            "weights": self.declared_weights or "not declared by the module",
        }

    def weights_module(self) -> nn.Module:
        return self.net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.net(x)
        if not isinstance(m, Tensor) or m.dim() != 5:
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"backbone {self.name!r}: the module must return a (B, C, T', H', W') map, got {got}"
            )
        return pool_map(m, self.preprocessing.pool), m.permute(0, 2, 3, 4, 1).contiguous()


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


def construct(name: str, **kwargs: Any) -> VideoBackbone:
    prefix, _, spec = name.partition(":")
    if name in _REGISTRY:
        model = _REGISTRY[name](**kwargs)
    elif prefix in _PREFIXES:
        model = _PREFIXES[prefix](spec, **kwargs)
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
            f"(or {', '.join(p + ':...' for p in list_prefixes())}, or 'package.module:factory')"
        )
    if not isinstance(model, VideoBackbone):
        raise TypeError(f"backbone factory {name!r} returned {type(model).__name__}, not a VideoBackbone")
    model.name = name
    return model
