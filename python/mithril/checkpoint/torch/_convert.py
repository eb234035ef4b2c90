"""Inspect Mithril DCP directories and convert between them, plain DCP directories and single
safetensors / Mithril files. Conversions run in one process and hold the whole state in
memory; DCP reshards on the way, so the result loads on any world size."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.storage import StorageReader

from mithril import _native
from mithril._fsutil import write_atomic_chunks
from mithril.checkpoint._convert import _torch_names
from mithril.checkpoint.torch import _commit
from mithril.checkpoint.torch._reader import MithrilReader
from mithril.checkpoint.torch._writer import MithrilWriter
from mithril.errors import ConfigError, MithrilError

Kind = Literal["mithril-dcp", "dcp"]
Target = Literal["mithril-dcp", "dcp", "safetensors", "mithril"]


def detect(path: str | os.PathLike[str]) -> Kind:
    """``"mithril-dcp"`` or ``"dcp"`` (plain torch DCP) for a committed checkpoint directory;
    raises :class:`mithril.IncompleteCheckpointError` for an unfinished or unknown one."""
    p = Path(path)
    if (p / _commit.COMMIT_NAME).is_file():
        return "mithril-dcp"
    if (p / ".metadata").is_file():
        return "dcp"
    _commit.read(p)  # raises the error that says what the directory is
    raise AssertionError("unreachable")  # pragma: no cover


def _reader(path: Path, kind: Kind, threads: int | None) -> StorageReader:
    return MithrilReader(path, threads=threads) if kind == "mithril-dcp" else FileSystemReader(path)


def load_flat(
    path: str | os.PathLike[str], *, objects: bool = True, threads: int | None = None
) -> dict[str, Any]:
    """The whole checkpoint (Mithril or plain DCP) as one flat dict keyed by DCP's keys
    (``"model.layer.weight"``, ``"optim.state.0.exp_avg"``), tensors at full size on the CPU.
    ``objects=False`` leaves out non-tensor entries; DCP stores those with ``torch.save``, so
    loading them unpickles, as ``dcp.load`` does."""
    p = Path(path)
    kind = detect(p)
    return _load_flat(p, kind, _reader(p, kind, threads).read_metadata(), objects, threads)


def _load_flat(
    p: Path, kind: Kind, metadata: Metadata, objects: bool, threads: int | None
) -> dict[str, Any]:
    """:func:`load_flat` with the directory's kind and metadata already read."""
    flat: dict[str, Any] = {}
    for key, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            flat[key] = torch.empty(md.size, dtype=md.properties.dtype)
        elif objects:
            flat[key] = None  # replaced by the loaded object
    planner = DefaultLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    dcp.load(flat, storage_reader=_reader(p, kind, threads), planner=planner, no_dist=True)
    return dict(planner.state_dict)


def _object_keys(metadata: Metadata) -> list[str]:
    """Keys of the non-tensor entries (DCP's bytes items)."""
    return [
        k for k, md in metadata.state_dict_metadata.items() if isinstance(md, BytesStorageMetadata)
    ]


def _tensor_rows(metadata: Metadata, stored: dict[str, int] | None) -> dict[str, dict[str, Any]]:
    """Per tensor key: dtype, size, chunk count, raw bytes (and stored bytes where known)."""
    return {
        k: _tensor_row(v, None if stored is None else stored.get(k, 0))
        for k, v in metadata.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: Target | None = None,
    base: str | os.PathLike[str] | None = None,
    skip_objects: bool = False,
    threads: int | None = None,
) -> Target:
    """Convert checkpoint directory ``src`` (Mithril or plain DCP) to ``dst``; returns what
    was written.

    ``to``: ``"mithril-dcp"`` or ``"dcp"`` (a directory), ``"safetensors"`` or ``"mithril"``
    (one file of full tensors keyed by DCP key). Default: from ``dst``'s suffix for files,
    otherwise the other directory kind. ``base`` (to ``"mithril-dcp"`` only): an earlier
    Mithril DCP directory to store deltas against. Files hold tensors only, so a checkpoint
    with objects (e.g. a step counter saved as an int) needs ``skip_objects=True`` to be
    written as one; the skipped keys are named in the error otherwise.
    """
    src_p, dst_p = Path(src), Path(dst)
    kind = detect(src_p)
    if to is None:
        suffix = dst_p.suffix.lower()
        to = (
            "safetensors"
            if suffix == ".safetensors"
            else "mithril"
            if suffix == ".mithril"
            else "dcp"
            if kind == "mithril-dcp"
            else "mithril-dcp"
        )
    if to not in ("mithril-dcp", "dcp", "safetensors", "mithril"):
        raise ConfigError(f"unknown conversion target {to!r}")
    if base is not None and to != "mithril-dcp":
        raise ConfigError("base= applies to conversions to a Mithril DCP directory only")
    if src_p.resolve() == dst_p.resolve():
        raise ConfigError(f"{dst}: the output is the input")
    metadata = _reader(src_p, kind, threads).read_metadata()
    if to in ("safetensors", "mithril"):
        skipped = _object_keys(metadata)
        if skipped and not skip_objects:
            raise ConfigError(
                f"{src}: {len(skipped)} non-tensor entries cannot go into a tensor file "
                f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}); "
                "pass skip_objects=True (--skip-objects) to leave them out"
            )
        tensors = _load_flat(src_p, kind, metadata, False, threads)
        meta = {"mithril.dcp.source": os.fspath(src_p.name)}
        if to == "safetensors":
            write_safetensors(tensors, dst_p, meta)
        else:
            from mithril import checkpoint as mc

            mc.save_file(tensors, dst_p, metadata=meta, threads=threads)
        return to
    state = _load_flat(src_p, kind, metadata, True, threads)
    writer = (
        MithrilWriter(dst_p, base=base, threads=threads)
        if to == "mithril-dcp"
        else FileSystemWriter(dst_p)
    )
    planner = DefaultSavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    dcp.save(state, storage_writer=writer, planner=planner, no_dist=True)
    return to


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> int:
    """Write a plain safetensors file atomically (temp + fsync + rename); returns its size."""
    names = _torch_names(torch)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        if t.dtype not in names:
            raise ConfigError(f"{key}: dtype {t.dtype} has no safetensors equivalent")
        n = t.numel() * t.element_size()
        header[key] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    chunks = (t.contiguous().reshape(-1).view(torch.uint8).numpy().data for t in tensors.values())
    write_atomic_chunks(path, itertools.chain([len(head).to_bytes(8, "little"), head], chunks))
    return 8 + len(head) + offset


def inspect_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint directory holds, without decoding tensor data.

    For a Mithril directory: ``complete``, ``save_id``, ``base``, per-rank ``files`` (size,
    content id, delta base), and per key ``tensors`` (dtype, size, chunk count, raw and
    stored bytes) and ``objects``; an unfinished save gives ``complete: False`` with the
    reason and the rank files it left. A plain DCP directory gives its keys and raw sizes.
    """
    p = Path(path)
    if not (p / _commit.COMMIT_NAME).is_file() and (p / ".metadata").is_file():
        md = FileSystemReader(p).read_metadata()
        tensors = _tensor_rows(md, None)
        return {
            "kind": "dcp",
            "complete": True,
            "tensors": tensors,
            "objects": _object_keys(md),
            "raw_size": sum(t["raw_size"] for t in tensors.values()),
        }
    try:
        doc = _commit.read(p)
    except MithrilError as e:
        partial = (
            sorted(x.name for x in p.iterdir() if _commit.DATA_FILE.match(x.name))
            if p.is_dir()
            else []
        )
        return {"kind": "mithril-dcp", "complete": False, "error": str(e), "partial_files": partial}
    where = str(p / _commit.COMMIT_NAME)
    md = _commit.decode(doc, where)
    stored_by_key: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for index, item in md.storage_data.items():
        if (item.file, item.name) in seen:  # stored once for several keys (tied weights)
            continue
        seen.add((item.file, item.name))
        stored_by_key[index.fqn] = stored_by_key.get(index.fqn, 0) + item.stored
    tensors = _tensor_rows(md, stored_by_key)
    files = []
    for name, info in sorted(
        _commit.files_of(doc, where).items(), key=lambda kv: kv[1].get("rank", 0)
    ):
        row = {
            "file": name,
            "rank": info.get("rank"),
            "size": info.get("size"),
            "content_id": info.get("content_id"),
        }
        try:
            ref = _native.Reader(p / name, False).base_ref()
            row["base"] = None if ref is None else ref[1]
        except (MithrilError, OSError) as e:
            row["error"] = str(e)
        files.append(row)
    raw = sum(t["raw_size"] for t in tensors.values())
    total = sum(int(f["size"] or 0) for f in files)
    return {
        "kind": "mithril-dcp",
        "complete": True,
        "save_id": doc.get("save_id"),
        "base": doc.get("base"),
        "files": files,
        "tensors": tensors,
        "objects": _object_keys(md),
        "raw_size": raw,
        "stored_size": total,
        "ratio": total / raw if raw else 1.0,
    }


def _tensor_row(md: TensorStorageMetadata, stored: int | None) -> dict[str, Any]:
    raw = md.size.numel() * torch.empty((), dtype=md.properties.dtype).element_size()
    row: dict[str, Any] = {
        "dtype": _commit.dtype_name(md.properties.dtype),
        "size": list(md.size),
        "chunks": len(md.chunks),
        "raw_size": raw,
    }
    if stored is not None:
        row["stored_size"] = stored
        row["ratio"] = stored / raw if raw else 1.0
    return row
