"""A content-addressed artifact store, the foundation of Mithril's compile cache.

Blobs are named by the blake3 hash of their content and checked against that name on every
read: a damaged blob is quarantined and reads as a miss, never as wrong bytes. An *action*
maps a cache key to named output blobs (a compiled kernel, its source, its metadata). Writes
are atomic; a size cap evicts the least recently used blobs. The store lives under
``$MITHRIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/mithril``, else ``~/.cache/mithril``.

    >>> from mithril.cache import Store
    >>> store = Store()                      # the default location
    >>> name = store.put(b"compiled kernel")
    >>> store.put_action("graph-key", {"kernel.so": name})
    >>> store.get(store.get_action("graph-key")["outputs"]["kernel.so"])
    b'compiled kernel'

For ``torch.compile``, :func:`enable` (or ``eval "$(mithril cache env)"`` in a shell) points
Inductor and Triton at a directory of the store chosen by the build environment (torch,
compiler, CPU vector ISA, GPU), so compiled kernels are reused across paths and users, and
:func:`export_bundle` / :func:`import_bundle` carry them, ``.so`` files included, to a new
machine. :func:`enable` also makes Mithril the remote-cache backend of torch's FX graph,
AOTAutograd and autotune caches, entry by entry, each FX graph stored with the kernels compiled
for it; with ``MITHRIL_CACHE_REMOTE`` set, a signed shared store on Redis is the second level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mithril import _native

__all__ = [
    "Store",
    "default_dir",
    "enable",
    "env",
    "fingerprint",
    "environment_id",
    "snapshot",
    "restore",
    "export_bundle",
    "import_bundle",
    "remote_from_env",
    "entry_stats",
    "push",
    "pull",
]


def default_dir() -> Path:
    """Where the store lives unless told otherwise: ``$MITHRIL_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mithril``, else ``~/.cache/mithril``."""
    explicit = os.environ.get("MITHRIL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mithril"


class Store:
    """A store at ``root`` (default :func:`default_dir`), optionally capped at ``max_bytes``
    of blobs. Safe to share between threads and between processes on one file system."""

    def __init__(self, root: str | os.PathLike[str] | None = None, max_bytes: int | None = None):
        self._native = _native.CacheStore(
            Path(root) if root is not None else default_dir(), max_bytes
        )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, max_bytes={self.max_bytes})"

    @property
    def root(self) -> Path:
        return Path(self._native.root)

    @property
    def max_bytes(self) -> int | None:
        return self._native.max_bytes

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data``; returns its name (blake3 hex). Idempotent."""
        return self._native.put(data)

    def get(self, name: str) -> bytes | None:
        """The blob ``name``, verified against its name; ``None`` when absent or damaged."""
        return self._native.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._native

    def put_action(
        self, key: str, outputs: Mapping[str, str], meta: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``key`` produced ``outputs`` (output name -> blob name, every blob
        already stored), with optional string ``meta``."""
        self._native.put_action(key, dict(outputs), dict(meta) if meta is not None else None)

    def get_action(self, key: str) -> dict[str, Any] | None:
        """``{"key", "outputs", "meta"}`` for ``key`` when it is intact and all its blobs are
        present; ``None`` otherwise."""
        return self._native.get_action(key)

    def stats(self) -> dict[str, Any]:
        """Blob and action counts, bytes, quarantined entries, and this process's hits,
        misses, corrupt reads and evictions."""
        return self._native.stats()

    def gc(self, max_bytes: int | None = None) -> dict[str, int]:
        """Evict least-recently-used blobs down to ``max_bytes`` (default: the cap), drop
        actions whose blobs are gone, and remove temporary files of dead writers."""
        return self._native.gc(max_bytes)

    def verify(self) -> dict[str, Any]:
        """Re-hash every blob and re-check every action; damaged ones are quarantined and
        listed under ``corrupt``."""
        return self._native.verify()


def _store(store: Store | None) -> Store:
    return store if store is not None else Store()


def fingerprint() -> dict[str, str]:
    """What compiled artifacts depend on here: torch, Triton, Python, the C++ compiler, the
    CPU vector ISA Inductor uses, the GPU's compute capability."""
    from mithril.cache import _torch

    return _torch.fingerprint()


def environment_id() -> str:
    """The short name of this environment; it names the managed cache directories."""
    from mithril.cache import _torch

    return _torch.environment_id()


def env(store: Store | None = None) -> dict[str, str]:
    """The environment variables that point torch at the store's directories for this
    environment (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``, the cache switches)."""
    from mithril.cache import _torch

    return _torch.environment(_store(store).root)


def enable(store: Store | None = None, torch_backends: bool = True) -> dict[str, str]:
    """Switch this process's ``torch.compile`` onto the store; call it before the first
    compile. It fetches this environment's snapshot from the shared store (when
    ``MITHRIL_CACHE_REMOTE`` is set), restores it, sets :func:`env` in ``os.environ``, makes
    Inductor's kernel keys independent of where Python and torch are installed and, with
    ``torch_backends``, serves torch's remote FX graph, AOTAutograd and autotune caches
    from the store (and the shared store), so single entries compiled anywhere in the fleet
    hit here with their kernels. Returns the variables set."""
    from mithril.cache import _relocate, _torch

    store = _store(store)
    remote = remote_from_env()
    if remote is not None:
        pull(store, remote)
    variables = _torch.enable(store)
    _relocate.install()
    if torch_backends:
        from mithril.cache import _entries

        _entries.install(_entries.EntryCache(store, remote))
    return variables


def entry_stats() -> dict[str, int]:
    """This process's use of torch's caches through :func:`enable`: hits, misses, puts,
    kernel files restored, errors, and the shared store's refused entries and failures."""
    from mithril.cache import _entries

    cache = _entries.active()
    if cache is None:
        return {}
    counts = dict(cache.counts)
    if cache.remote is not None:
        counts["remote_refused"] = cache.remote.refused
        counts["remote_failures"] = cache.remote.failures
    return counts


def remote_from_env() -> Any:
    """The shared store named by ``MITHRIL_CACHE_REMOTE`` (``redis://host:port/db``, or an
    ``http(s)://`` URL of an endpoint that takes PUT and serves GET), signed
    with ``MITHRIL_CACHE_SECRET`` or the contents of ``MITHRIL_CACHE_SECRET_FILE``; ``None``
    when no remote is configured."""
    url = os.environ.get("MITHRIL_CACHE_REMOTE")
    if not url:
        return None
    from mithril.cache._remote import open_remote
    from mithril.errors import ConfigError

    secret = os.environ.get("MITHRIL_CACHE_SECRET", "").encode()
    path = os.environ.get("MITHRIL_CACHE_SECRET_FILE")
    if not secret and path:
        secret = Path(path).read_bytes().strip()
    if not secret:
        raise ConfigError(
            "MITHRIL_CACHE_REMOTE is set but no secret: set MITHRIL_CACHE_SECRET or "
            "MITHRIL_CACHE_SECRET_FILE (entries of a shared cache are signed)"
        )
    timeout = float(os.environ.get("MITHRIL_CACHE_REMOTE_TIMEOUT", "2"))
    return open_remote(url, secret, timeout=timeout)


def push(store: Store | None = None, remote: Any = None) -> dict[str, int]:
    """Snapshot this environment's compiled artifacts and upload what the shared store lacks."""
    from mithril.cache import _remote, _torch

    store = _store(store)
    remote = remote if remote is not None else remote_from_env()
    if remote is None:
        from mithril.errors import ConfigError

        raise ConfigError("no shared store: set MITHRIL_CACHE_REMOTE")
    _torch.snapshot(store)
    return _remote.push(store, remote, _torch.ACTION_PREFIX + _torch.environment_id())


def pull(store: Store | None = None, remote: Any = None) -> dict[str, int]:
    """Fetch this environment's snapshot from the shared store (signatures and content
    checked) into the local store and restore it."""
    from mithril.cache import _remote, _torch

    store = _store(store)
    remote = remote if remote is not None else remote_from_env()
    if remote is None:
        from mithril.errors import ConfigError

        raise ConfigError("no shared store: set MITHRIL_CACHE_REMOTE")
    report = _remote.pull(store, remote, _torch.ACTION_PREFIX + _torch.environment_id())
    _torch.restore(store)
    return report


def snapshot(store: Store | None = None, environment: str | None = None) -> dict[str, Any]:
    """Record the managed directories of an environment (default: this one) as blobs and
    an action in the store."""
    from mithril.cache import _torch

    return _torch.snapshot(_store(store), environment)


def restore(store: Store | None = None, environment: str | None = None) -> dict[str, Any]:
    """Write the recorded files of an environment back into its managed directories;
    damaged or missing blobs are skipped (torch recompiles those pieces)."""
    from mithril.cache import _torch

    return _torch.restore(_store(store), environment)


def export_bundle(
    path: str | os.PathLike[str], store: Store | None = None, environments: list[str] | None = None
) -> dict[str, Any]:
    """Snapshot and write a portable bundle (tar of a manifest and blobs) for CI artifacts and
    air-gapped machines."""
    from mithril.cache import _torch

    return _torch.export_bundle(_store(store), Path(path), environments)


def import_bundle(path: str | os.PathLike[str], store: Store | None = None) -> dict[str, Any]:
    """Load a bundle (every blob re-hashed; mismatches refused) and restore its
    environments' directories. A bundle holds compiled code: import only bundles you trust."""
    from mithril.cache import _torch

    return _torch.import_bundle(_store(store), Path(path))
