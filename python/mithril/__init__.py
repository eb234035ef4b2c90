"""Mithril: Rust-accelerated storage for large-model training.

Submodules load on first use, so ``import mithril`` stays cheap:

- :mod:`mithril.checkpoint` -- lossless checkpoint compression (safetensors-compatible API).
- :mod:`mithril.dedup` -- near-duplicate removal for text corpora (MinHash, LSH, LSHBloom).
- :mod:`mithril.cache` -- a content-addressed artifact store (the compile cache's foundation).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mithril.errors import (
    BaseCheckpointError,
    CancelledError,
    ConfigError,
    CorruptDataError,
    FormatError,
    IncompleteCheckpointError,
    MithrilError,
    TensorNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "checkpoint",
    "dedup",
    "cache",
    "MithrilError",
    "CorruptDataError",
    "FormatError",
    "ConfigError",
    "TensorNotFoundError",
    "CancelledError",
    "BaseCheckpointError",
    "IncompleteCheckpointError",
]

_SUBMODULES = {"checkpoint", "dedup", "cache"}

if TYPE_CHECKING:
    from mithril import cache, checkpoint, dedup


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mithril.{name}")
    raise AttributeError(f"module 'mithril' has no attribute {name!r}")
