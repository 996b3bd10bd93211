"""Stage 1: videos -> crops -> frozen backbone -> one feature row per crop in a store.

- :mod:`~vcache.extract.engine`: :func:`extract` (and :func:`extract_many`, several backbones from one
  decode), the run (batched forward, shard writes, torchrun / ``--part`` shares).
- :mod:`~vcache.extract.fanout`: the decode pool and claim loop shared by every backbone of a run.
- :mod:`~vcache.extract.forward`: host buffers, overlap, channels-last and compile of the forward pass.
- :mod:`~vcache.extract.workers`: decoding worker processes under a deadline (numpy, PyAV and decord only).
- :mod:`~vcache.extract.output`: store attributes, open-or-create for resume, leftovers, shard buffers.
- :mod:`~vcache.extract.options`: :class:`ExtractOptions`, :class:`ExtractReport` and the exit codes.

The names below are loaded on first use, so that a spawned decoding worker, which imports
``vcache.extract.workers``, never imports torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "extract": "vcache.extract.engine",
    "extract_many": "vcache.extract.engine",
    "ExtractOptions": "vcache.extract.options",
    "ExtractReport": "vcache.extract.options",
    "EXIT_OK": "vcache.extract.options",
    "EXIT_SOME_FAILED": "vcache.extract.options",
    "EXIT_TOO_MANY_FAILED": "vcache.extract.options",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vcache.extract' has no attribute {name!r}")
