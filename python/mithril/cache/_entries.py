"""Mithril as the remote-cache backend of torch's own caches, one entry at a time.

Torch asks a *remote cache* for each FX graph, AOTAutograd and autotune entry by key, after
its local directory misses (``torch/_inductor/remote_cache.py``). Each of those cache classes
takes its backend from ``backend_override_cls`` when it is set; :func:`install` sets it to a
backend that keeps entries in the Mithril store (the first level) and, when configured, in the
signed shared store (the second level).

An FX graph entry alone is not enough for a warm start on a new machine: on the CPU the graph's
module compiles its C++ kernels when it is loaded unless their ``.so`` files are in the cache
directory already. So an FX graph or AOTAutograd entry is stored with the files its process
compiled (kernels, their sources, the precompiled header), and a hit puts the missing ones
back in place before torch loads the graph: the multi-level idea, the compiled artifact first
and the portable entry with it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mithril.cache import _remote, _torch
from mithril.errors import MithrilError

log = logging.getLogger("mithril.cache")

#: Action keys of torch cache entries: ``torch-entry/<environment id>/<torch's key>``.
ENTRY_PREFIX = "torch-entry/"
#: The output of an entry action that holds torch's own bytes.
ENTRY = "entry"
#: Torch's entry directories: their entries arrive through the backend, not as files.
_ENTRY_DIRS = ("inductor/fxgraph/", "inductor/aotautograd/")
#: Torch's remote caches whose entries carry the kernel files compiled with them.
WITH_FILES = ("RemoteFxGraphCache", "RemoteAOTAutogradCache")
#: Torch's remote caches whose entries are small JSON records (autotune results).
ENTRY_ONLY = ("RemoteAutotuneCache", "RemoteBundledAutotuneCache")

_ACTIVE: EntryCache | None = None


class EntryCache:
    """Entries of torch's caches in ``store`` (and ``remote`` when given), for environment
    ``env``. ``since`` is when this process started compiling: files modified from then on
    are attached to the entries it puts."""

    def __init__(
        self, store: Any, remote: Any = None, env: str | None = None, since: float | None = None
    ) -> None:
        self.store = store
        self.remote = remote
        self.env = _torch.environment_id() if env is None else env
        self.since = time.time() if since is None else since
        self._hashed: dict[Path, tuple[int, int, str]] = {}
        self.counts = {"hits": 0, "misses": 0, "puts": 0, "restored": 0, "errors": 0}

    def action_key(self, key: str) -> str:
        return f"{ENTRY_PREFIX}{self.env}/{key}"

    def get(self, key: str) -> bytes | None:
        """Torch's bytes for ``key``, with its kernel files restored; ``None`` on a miss.
        Never raises: a broken store or server is a miss, and the compile goes on."""
        try:
            data = self._get(key)
        except (MithrilError, OSError) as e:
            self.counts["errors"] += 1
            log.warning("mithril cache: reading %s failed (%s); compiling instead", key, e)
            data = None
        self.counts["hits" if data is not None else "misses"] += 1
        return data

    def _get(self, key: str) -> bytes | None:
        akey = self.action_key(key)
        action = self.store.get_action(akey)
        if action is None and self.remote is not None:
            _remote.pull(self.store, self.remote, akey)
            action = self.store.get_action(akey)
        if action is None:
            return None
        files = dict(action["outputs"])
        entry = files.pop(ENTRY, None)
        data = self.store.get(entry) if isinstance(entry, str) else None
        if data is None:
            return None
        report = _torch.restore_outputs(self.store, self.env, files)
        self.counts["restored"] += report["restored"]
        return data

    def put(self, key: str, data: bytes, with_files: bool) -> None:
        """Store torch's bytes for ``key``, with the files compiled since :attr:`since` when
        ``with_files``, and upload what the shared store lacks. Never raises."""
        try:
            outputs = self._new_files() if with_files else {}
            outputs[ENTRY] = self.store.put(data)
            akey = self.action_key(key)
            self.store.put_action(akey, outputs, {"torch_key": key})
            if self.remote is not None:
                _remote.push(self.store, self.remote, akey)
            self.counts["puts"] += 1
        except (MithrilError, OSError) as e:
            self.counts["errors"] += 1
            log.warning("mithril cache: storing %s failed (%s)", key, e)

    def _new_files(self) -> dict[str, str]:
        """``label/relative path`` -> blob of every file in the managed directories modified
        since :attr:`since`, outside torch's entry directories. Unchanged files are not
        hashed twice."""
        since_ns = int(self.since * 1e9)
        out = {}
        for name, path in _torch.managed_files(self.store.root, self.env):
            if name.startswith(_ENTRY_DIRS):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime_ns < since_ns:
                continue
            known = self._hashed.get(path)
            if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
                out[name] = known[2]
                continue
            try:
                blob = self.store.put(path.read_bytes())
            except FileNotFoundError:  # replaced by a concurrent writer; it comes next time
                continue
            self._hashed[path] = (st.st_mtime_ns, st.st_size, blob)
            out[name] = blob
        return out


def install(cache: EntryCache) -> list[str]:
    """Make ``cache`` the backend of torch's remote FX graph, AOTAutograd and autotune
    caches and switch those caches on in this process. Returns the torch classes served
    (a torch without one of them just skips it)."""
    global _ACTIVE
    import torch
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import remote_cache

    def backend(with_files: bool) -> type:
        class MithrilCacheBackend(remote_cache.RemoteCacheBackend[bytes]):  # type: ignore[misc]
            """Torch's bytes in the Mithril store; see :class:`EntryCache`."""

            def _get(self, key: str) -> bytes | None:
                return cache.get(key)

            def _put(self, key: str, data: bytes) -> None:
                cache.put(key, bytes(data), with_files)

        return MithrilCacheBackend

    served = []
    for names, with_files in ((WITH_FILES, True), (ENTRY_ONLY, False)):
        cls_backend = backend(with_files)
        for name in names:
            cls = getattr(remote_cache, name, None)
            if cls is not None and hasattr(cls, "backend_override_cls"):
                cls.backend_override_cls = cls_backend
                served.append(name)
    inductor_config.fx_graph_remote_cache = True
    functorch_config.enable_remote_autograd_cache = True
    if torch.cuda.is_available():
        # Autotuning happens for GPU kernels only; on a CPU-only machine torch's bundled
        # autotune cache asserts on the missing GPU backend hash, so it stays off there.
        inductor_config.autotune_remote_cache = True
        inductor_config.bundled_autotune_remote_cache = True
    _ACTIVE = cache
    return served


def active() -> EntryCache | None:
    """The entry cache :func:`install` put in place in this process, if any."""
    return _ACTIVE
