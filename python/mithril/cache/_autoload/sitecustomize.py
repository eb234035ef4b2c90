"""Switches Mithril's torch cache backend on from the environment alone.

``mithril cache env`` puts this directory first on ``PYTHONPATH`` (with
``MITHRIL_CACHE_TORCH_BACKEND=1``), so Python imports this module at start-up, before the
user's script. It imports nothing heavy: it registers a finder that waits for torch to
import ``torch._inductor.codecache`` and ``torch._inductor.remote_cache``, then makes kernel
keys independent of installation paths and Mithril the backend of torch's remote caches, as
``mithril.cache.enable()`` does in-process. Any ``sitecustomize`` that this one
shadows (a distribution's, a user's) is run afterwards, unchanged. Failures are silent: a
start-up hook must never stop a Python program.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

_CODECACHE = "torch._inductor.codecache"
_REMOTE_CACHE = "torch._inductor.remote_cache"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _make_keys_relocatable(module: Any) -> None:
    from mithril.cache import _relocate

    _relocate.patch_codecache(module)


def _serve(module: Any) -> None:
    from mithril.cache import Store, _entries, remote_from_env

    _entries.install(_entries.EntryCache(Store(), remote_from_env()))


#: What to do to each module once torch has loaded it.
_ACTIONS = {_CODECACHE: _make_keys_relocatable, _REMOTE_CACHE: _serve}


class _InstallAfter(importlib.abc.Loader):
    """Runs the real loader, then Mithril's action on the fresh module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            _ACTIONS[module.__name__](module)
        except Exception as e:
            print(f"mithril cache: torch hook on {module.__name__} failed ({e})", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _TorchCacheFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._waiting = set(_ACTIONS)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self._waiting:
            return None
        self._waiting.discard(fullname)  # once each; the lookup below must not find us
        if not self._waiting:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _InstallAfter(spec.loader)
        return spec


def _chain() -> None:
    """Run the ``sitecustomize`` this module shadows, if there is one."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get("MITHRIL_CACHE_TORCH_BACKEND") == "1" and _REMOTE_CACHE not in sys.modules:
    sys.meta_path.insert(0, _TorchCacheFinder())
try:
    _chain()
except Exception as e:
    print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{e!r}", file=sys.stderr)
