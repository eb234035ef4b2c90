"""Lossless checkpoint compression with a safetensors-style API.

Floats (bf16, fp16, fp32) are split into an entropy-coded exponent head and a near-random
remainder; other dtypes go through zstd. Files are chunked, checksummed and written
atomically; a single tensor can be read without decoding the others.

    >>> import mithril.checkpoint as mc
    >>> mc.save_file({"w": torch.randn(4, 4)}, "model.mithril")
    >>> mc.load_file("model.mithril")["w"].shape
    torch.Size([4, 4])
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal

from mithril import _native
from mithril.checkpoint._convert import (
    RawTensor,
    default_framework,
    empty_tensor,
    on_device,
    to_raw,
)
from mithril.errors import BaseCheckpointError, ConfigError, MithrilError

__all__ = [
    "save_file",
    "load_file",
    "save",
    "load",
    "safe_open",
    "compress_tensor",
    "decompress_tensor",
    "inspect",
    "verify",
    "release_memory",
    "compress_safetensors",
    "decompress_safetensors",
    "squash",
    "rebase",
    "CheckpointManager",
    "DeltaPolicy",
]

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], object]
DeltaCoding = Literal["compact", "fast"]


def _sources(tensors: Mapping[str, Any]) -> list[RawTensor]:
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"expected a mapping of names to tensors, got {type(tensors).__name__}")
    out = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ConfigError(f"tensor names must be strings, got {name!r}")
        out.append(to_raw(name, value))
    return out


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise ConfigError(
            f"metadata must be a mapping of str to str, got {type(metadata).__name__}"
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ConfigError("metadata must map str to str (as in safetensors)")
    return dict(metadata)


def _delta_coding(value: object) -> DeltaCoding:
    """``delta_coding``: "compact" or "fast" (ConfigError otherwise)."""
    if value == "compact":
        return "compact"
    if value == "fast":
        return "fast"
    raise ConfigError(f"delta_coding must be 'compact' or 'fast', got {value!r}")


def _positive(name: str, value: int | None) -> int | None:
    """``threads`` / ``chunk_bytes``: None or an int of at least 1 (ConfigError otherwise)."""
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        n = 0
    if isinstance(value, bool) or n < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return n


def _base_args(base: PathLike | None, target: PathLike) -> tuple[str | None, str | None]:
    """(base path, path hint to record) for writing ``target`` as a delta on ``base``.

    The hint is relative to the target's directory, so that a directory of checkpoints can
    be moved as a whole. A delta may not replace its own base: the rename would replace the
    base, and the new file would name content that no longer exists."""
    if base is None:
        return None, None
    b, t = os.path.abspath(os.fspath(base)), os.path.abspath(os.fspath(target))
    same = b == t
    if not same and os.path.exists(t) and os.path.exists(b):
        same = os.path.samefile(b, t)
    if same:
        raise ConfigError(f"{target}: a delta cannot replace its own base; write it elsewhere")
    return os.fspath(base), _relative_path(b, os.path.dirname(t))


def _relative_path(path: str, directory: str) -> str:
    """``path`` relative to ``directory`` (both absolute), or ``path`` itself where there is
    no relative form (another drive on Windows)."""
    try:
        return os.path.relpath(path, directory)
    except ValueError:
        return path


def save_file(
    tensors: Mapping[str, Any],
    filename: PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    base: PathLike | None = None,
    delta_coding: DeltaCoding = "fast",
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: Progress | None = None,
) -> None:
    """Compress ``tensors`` (torch tensors or numpy arrays) into ``filename``.

    With ``base`` (an earlier Mithril file of the same run), every tensor whose name, dtype
    and shape match the base is stored as a delta against it (XOR or integer difference of
    the bit patterns, chosen per chunk, or the plain codec where that is smaller); the file
    records the base's content id and its path relative to ``filename``. New, reshaped or
    retyped tensors are stored whole.

    ``delta_coding`` picks how float deltas are coded: ``"fast"`` (the default: a delta
    encodes and decodes faster than a full checkpoint) or ``"compact"`` (the smallest
    files, at about half the speed of a full checkpoint: fp32 master weights after one
    AdamW step take 14 % of their raw size instead of 38 %; see docs/benchmarks.md).
    Readers need nothing to tell them apart.

    The write is atomic: the file appears complete or not at all. ``threads`` limits the
    worker threads (default: all cores); ``progress(done, total)`` is called with raw bytes.
    """
    _write_file(
        _sources(tensors),
        filename,
        metadata,
        base=base,
        delta_coding=delta_coding,
        threads=threads,
        chunk_bytes=chunk_bytes,
        progress=progress,
    )


def _write_file(
    sources: list[RawTensor],
    filename: PathLike,
    metadata: Mapping[str, str] | None,
    *,
    base: PathLike | None,
    delta_coding: DeltaCoding = "fast",
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: Progress | None = None,
    base_raw: list[RawTensor] | None = None,
) -> int:
    """save_file on tensors already converted by :func:`_sources`, plus ``base_raw``: the
    base's tensors in memory as raw bytes (the caller vouches that they are exactly what
    ``base`` holds), which saves decoding the base."""
    base_path, hint = _base_args(base, filename)
    return _native.write_file(
        os.fspath(filename),
        sources,
        _check_metadata(metadata),
        _positive("threads", threads),
        _positive("chunk_bytes", chunk_bytes),
        progress,
        base_path,
        hint,
        base_raw,
        delta_coding=_delta_coding(delta_coding),
    )


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    *,
    threads: int | None = None,
) -> bytes:
    """Like :func:`save_file`, returning the container as bytes."""
    return _native.write_bytes(
        _sources(tensors), _check_metadata(metadata), _positive("threads", threads)
    )


class safe_open:  # noqa: N801 - mirrors safetensors.safe_open
    """Lazy access to a compressed file: the layout is validated on open, and each tensor is
    decoded (only its own chunks) when asked for.

        with mc.safe_open("model.mithril", framework="pt") as f:
            w = f.get_tensor("encoder.weight")
    """

    def __init__(
        self,
        filename: PathLike,
        framework: str | None = None,
        device: str = "cpu",
        *,
        base: PathLike | None = None,
        threads: int | None = None,
    ) -> None:
        self._threads = _positive("threads", threads)
        self._reader = _native.Reader(
            os.fspath(filename), True, None if base is None else os.fspath(base)
        )
        self._framework = framework or default_framework()
        self._device = device

    @classmethod
    def _from_reader(cls, reader: _native.Reader, framework: str | None, device: str) -> safe_open:
        self = cls.__new__(cls)
        self._reader = reader
        self._framework = framework or default_framework()
        self._device = device
        self._threads = None
        return self

    def __enter__(self) -> safe_open:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return self._reader.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def metadata(self) -> dict[str, str] | None:
        """The user metadata stored with the file."""
        return self._reader.metadata()

    def get_tensor(self, name: str) -> Any:
        """Decode tensor ``name`` (raises :class:`mithril.TensorNotFoundError` if absent)."""
        dtype, shape, *_ = self._reader.info(name)
        t, buf = empty_tensor(dtype, shape, self._framework, f"tensor {name!r}")
        self._reader.read_into(name, buf, self._threads)
        return on_device(t, self._device)

    def _get_all(self) -> dict[str, Any]:
        """Every tensor, decoded concurrently (tensors as well as their chunks), each straight
        into the memory of the tensor returned."""
        names = self.keys()
        infos = [self._reader.info(name) for name in names]
        tensors = [
            empty_tensor(info[0], info[1], self._framework, f"tensor {name!r}")
            for name, info in zip(names, infos, strict=True)
        ]
        self._reader.read_many_into(names, [buf for _, buf in tensors], self._threads)
        return {
            name: on_device(t, self._device) for name, (t, _) in zip(names, tensors, strict=True)
        }


def load_file(
    filename: PathLike,
    device: str = "cpu",
    *,
    framework: str | None = None,
    base: PathLike | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Decode every tensor of ``filename``: torch tensors on ``device`` (numpy arrays when torch
    is absent or ``framework="np"``).

    A delta file is resolved through its chain of bases, each found by the path it recorded
    (``base`` overrides the first) and checked by content id: a missing, replaced or altered
    base raises :class:`mithril.BaseCheckpointError`, never a wrong tensor."""
    with safe_open(filename, framework, device, base=base, threads=threads) as f:
        return f._get_all()


def _as_bytes(data: Any) -> bytes | bytearray:
    """``bytes`` and ``bytearray`` are read in place; any other buffer (a memoryview, a numpy
    array) is copied once into ``bytes``."""
    return data if isinstance(data, (bytes, bytearray)) else bytes(data)


def load(data: bytes, *, framework: str | None = None) -> dict[str, Any]:
    """Decode a container held in memory (as made by :func:`save`)."""
    f = safe_open._from_reader(_native.Reader.from_bytes(_as_bytes(data)), framework, "cpu")
    return f._get_all()


def compress_tensor(
    tensor: Any,
    *,
    base: Any = None,
    delta_coding: DeltaCoding = "fast",
    threads: int | None = None,
) -> bytes:
    """Compress one tensor of any dtype and shape into a self-describing blob.

    With ``base`` (the same tensor at an earlier step: same dtype and shape), the blob is a
    delta against it and records its content id; :func:`decompress_tensor` then needs that
    exact base back. Where no chunk of the tensor is smaller as a delta (a base of zeros,
    say), the tensor is stored whole: the blob records no base and decodes without one, and
    the base's content id (a pass over all of it) is never computed. ``delta_coding`` as for
    :func:`save_file`."""
    base_raw = None if base is None else to_raw("", base)
    return _native.write_bytes(
        [to_raw("", tensor)],
        None,
        _positive("threads", threads),
        None,
        base_raw,
        delta_coding=_delta_coding(delta_coding),
    )


def decompress_tensor(
    data: bytes, *, base: Any = None, framework: str | None = None, threads: int | None = None
) -> Any:
    """Inverse of :func:`compress_tensor`, bit-exact. A delta blob needs the ``base`` it was
    made against (anything else raises :class:`mithril.BaseCheckpointError`); a blob stored
    whole needs none, and a ``base`` passed with it is not read."""
    threads = _positive("threads", threads)
    reader = _native.Reader.from_bytes(_as_bytes(data))
    lone = reader.lone_tensor()
    if lone is None:
        names = reader.names()
        raise ConfigError(
            f"not a compress_tensor() blob: it holds {len(names)} named tensor(s); use load()"
        )
    dtype, shape, is_delta = lone
    if is_delta and base is None:
        raise BaseCheckpointError("this blob is a delta: pass the base tensor it was made against")
    framework = framework or default_framework()
    t, out = empty_tensor(dtype, shape, framework, "compress_tensor() blob")
    if is_delta:
        _, _, _, buf = to_raw("", base)
        reader.read_with_base_into("", buf, out, threads)
    else:
        reader.read_into("", out, threads)
    return t


def inspect(filename: PathLike) -> dict[str, Any]:
    """Sizes, ratio and codec of every tensor, without decoding anything.

    Returns ``{"file_size", "raw_size", "stored_size", "ratio", "metadata", "tensors"}``
    where ``tensors`` maps each name to its dtype, shape, raw and stored bytes, ratio and
    chunk encodings.
    """
    r = _native.Reader(os.fspath(filename), False)
    tensors = {}
    raw_total = stored_total = 0
    for name in r.names():
        dtype, shape, raw, stored, encodings = r.info(name)
        raw_total += raw
        stored_total += stored
        tensors[name] = {
            "dtype": dtype,
            "shape": shape,
            "raw_size": raw,
            "stored_size": stored,
            "ratio": stored / raw if raw else 1.0,
            "encodings": sorted(set(encodings)),
            "chunks": len(encodings),
        }
    return {
        "file_size": r.file_size(),
        "raw_size": raw_total,
        "stored_size": stored_total,
        "ratio": r.file_size() / raw_total if raw_total else 1.0,
        "metadata": r.metadata(),
        "from_safetensors": r.has_safetensors_header(),
        "content_id": r.content_id(),
        "base": _base_info(r),
        "chain": _chain(filename),
        "tensors": tensors,
    }


def _base_info(r: _native.Reader) -> dict[str, Any] | None:
    ref = r.base_ref()
    return None if ref is None else {"id": ref[0], "path": ref[1]}


def _chain(filename: PathLike) -> list[dict[str, Any]]:
    """The file and its bases, newest first; where a base cannot be opened, the last entry
    says why instead of failing the whole inspection."""
    try:
        links = _native.Reader(os.fspath(filename)).chain()
    except MithrilError as e:
        head = _native.Reader(os.fspath(filename), False)
        return [
            {
                "path": os.fspath(filename),
                "content_id": head.content_id(),
                "file_size": head.file_size(),
            },
            {"error": str(e)},
        ]
    return [{"path": p, "content_id": c, "file_size": n} for p, c, n in links]


def verify(filename: PathLike, *, threads: int | None = None) -> int:
    """Decode every chunk and check both checksums; returns the number of chunks checked.
    Raises :class:`mithril.CorruptDataError` naming the tensor and chunk on the first failure."""
    threads = _positive("threads", threads)
    return _native.Reader(os.fspath(filename)).verify(threads)


def release_memory() -> int:
    """Give back to the allocator the memory Mithril keeps for reuse; returns its size in
    bytes.

    When a decoded tensor of 1 MiB or more is garbage, its memory goes to a pool (at most
    256 MiB in 16 blocks) that the next decode of a similar size takes it from, skipping
    the page faults and zeroing of fresh memory. Encoding likewise keeps up to 64 MiB of
    chunk buffers once their bytes are copied out. Call this after loading or saving when
    the process should shrink to what its live tensors hold."""
    return _native.release_kept_memory()


def compress_safetensors(
    src: PathLike,
    dst: PathLike,
    *,
    base: PathLike | None = None,
    delta_coding: DeltaCoding = "fast",
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Compress a safetensors file; :func:`decompress_safetensors` gives back the identical
    file. With ``base`` (an earlier Mithril file), store the tensors as deltas against it,
    coded as ``delta_coding`` says (see :func:`save_file`). Returns the compressed size."""
    return _native.compress_safetensors(
        os.fspath(src),
        os.fspath(dst),
        _positive("threads", threads),
        _positive("chunk_bytes", chunk_bytes),
        progress,
        *_base_args(base, dst),
        delta_coding=_delta_coding(delta_coding),
    )


def decompress_safetensors(
    src: PathLike,
    dst: PathLike,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Write a compressed file back out as safetensors (byte-identical to the original when it
    was made by :func:`compress_safetensors`). Returns the size written."""
    return _native.decompress_safetensors(
        os.fspath(src), os.fspath(dst), _positive("threads", threads), progress
    )


def squash(
    src: PathLike,
    dst: PathLike,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Write the delta ``src`` (its chain resolved) as a self-contained full file ``dst``,
    keeping tensors, metadata and any safetensors header. Returns the size written."""
    return rebase(src, dst, None, threads=threads, progress=progress)


def rebase(
    src: PathLike,
    dst: PathLike,
    base: PathLike | None = None,
    *,
    delta_coding: DeltaCoding = "fast",
    threads: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Re-encode ``src`` (full or delta) as a delta against another ``base``, or as a full
    file when ``base`` is None (the same as :func:`squash`); ``delta_coding`` as for
    :func:`save_file`. Returns the size written."""
    base_path, hint = _base_args(base, dst)
    return _native.rewrite(
        os.fspath(src),
        os.fspath(dst),
        base_path,
        hint,
        _positive("threads", threads),
        None,
        progress,
        delta_coding=_delta_coding(delta_coding),
    )


from mithril.checkpoint.manager import CheckpointManager, DeltaPolicy  # noqa: E402
