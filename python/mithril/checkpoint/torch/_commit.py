"""The commit record of a Mithril DCP directory: DCP's ``Metadata`` as JSON, never pickle.

The coordinator writes ``mithril-dcp.json`` last, atomically, after every rank's data file
is on disk; a directory without it is an incomplete save and is never loaded. The record
holds what DCP needs to plan a load (every tensor's dtype, global size and saved chunks) and
where each chunk lives (rank file, tensor name inside it, that file's content id).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from mithril._fsutil import write_atomic
from mithril.errors import ConfigError, FormatError, IncompleteCheckpointError

COMMIT_NAME = "mithril-dcp.json"
FORMAT = "mithril-dcp"
VERSION = 1
DCP_VERSION = "1.0.0"
# Data files: "__<rank>_<save id>.mithril"; the save id keeps a new save from touching the
# files of the checkpoint it replaces until its own commit is in place.
DATA_FILE = re.compile(r"^__(\d+)_([0-9a-f]{16})\.mithril$")


def data_file_name(rank: int, save_id: str) -> str:
    return f"__{rank}_{save_id}.mithril"


@dataclass(frozen=True)
class StoredItem:
    """Where one saved tensor chunk or bytes object lives: ``name`` inside rank file
    ``file`` (whose content id is ``file_id``), stored as ``dtype`` with ``shape``;
    ``stored`` is its compressed size. ``dtype`` is a torch dtype name, or ``"bytes"``."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    stored: int
    file_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "stored": self.stored,
            "file_id": self.file_id,
        }

    @staticmethod
    def from_json(d: Any, where: str) -> StoredItem:
        try:
            return StoredItem(
                file=_str(d["file"]),
                name=_str(d["name"]),
                dtype=_str(d["dtype"]),
                shape=tuple(_ints(d["shape"])),
                stored=_int(d["stored"]),
                file_id=_str(d["file_id"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where}: malformed storage entry {d!r}: {e}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"{where}: unknown torch dtype {name!r}")
    return dtype


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"expected a non-negative integer, got {v!r}")
    return v


def _ints(v: Any) -> list[int]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of integers, got {v!r}")
    return [_int(x) for x in v]


def _planner_data_to_json(data: Any) -> Any:
    """DefaultSavePlanner's planner data maps each flattened key to its path in the nested
    state dict (a tuple of str and int); that is all JSON can carry faithfully."""
    if data is None:
        return None
    if isinstance(data, dict) and all(
        isinstance(k, str)
        and isinstance(p, tuple | list)
        and all(isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)) for x in p)
        for k, p in data.items()
    ):
        return {k: list(p) for k, p in data.items()}
    raise ConfigError(
        "the save planner's planner_data is not a mapping of keys to state-dict paths; "
        "Mithril stores DCP metadata as JSON and cannot record it without pickle"
    )


def encode(
    metadata: Metadata,
    storage: dict[MetadataIndex, StoredItem],
    files: dict[str, dict[str, Any]],
    save_id: str,
    base: str | None,
) -> str:
    """The commit record for ``metadata`` as JSON text."""
    state: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            props = md.properties
            state[fqn] = {
                "type": "tensor",
                "dtype": dtype_name(props.dtype),
                "size": list(md.size),
                "requires_grad": bool(props.requires_grad),
                "strides": None if props.strides is None else list(props.strides),
                "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in md.chunks],
            }
        elif isinstance(md, BytesStorageMetadata):
            state[fqn] = {"type": "bytes"}
        else:
            raise ConfigError(f"{fqn}: unknown DCP storage metadata {type(md).__name__}")
    meta = metadata.storage_meta
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "dcp_version": DCP_VERSION,
        "save_id": save_id,
        "base": base,
        "files": files,
        "state_dict": state,
        "planner_data": _planner_data_to_json(metadata.planner_data),
        "storage_meta": None
        if meta is None
        else {
            "checkpoint_id": None if meta.checkpoint_id is None else os.fspath(meta.checkpoint_id),
            "save_id": meta.save_id,
            "modules": list(meta.modules),
        },
        "storage": [
            {
                "fqn": index.fqn,
                "offset": None if index.offset is None else list(index.offset),
                **item.to_json(),
            }
            for index, item in storage.items()
        ],
    }
    return json.dumps(doc, separators=(",", ":"))


def write(directory: Path, text: str) -> None:
    write_atomic(directory / COMMIT_NAME, text)


def read(directory: Path) -> dict[str, Any]:
    """The parsed commit record of ``directory``; :class:`IncompleteCheckpointError` where
    there is none, :class:`FormatError` where it is not one."""
    path = directory / COMMIT_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such checkpoint directory") from None
        if (directory / ".metadata").exists():
            raise IncompleteCheckpointError(
                f"{directory}: this is a plain DCP checkpoint, not a Mithril one; load it "
                "with torch's FileSystemReader or convert it with "
                "`mithril checkpoint convert`"
            ) from None
        partial = sorted(p.name for p in directory.iterdir() if DATA_FILE.match(p.name))
        why = (
            f"it holds {len(partial)} rank file(s) but no commit record ({COMMIT_NAME}): "
            "the save did not finish (a rank failed or was killed), so it is not loaded"
            if partial
            else f"it has no commit record ({COMMIT_NAME}); it is not a Mithril checkpoint"
        )
        raise IncompleteCheckpointError(f"{directory}: {why}") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 JSON: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"{path}: not a Mithril DCP commit record")
    if doc.get("version") != VERSION:
        raise FormatError(
            f"{path}: commit record version {doc.get('version')!r} is not supported "
            f"(this Mithril reads version {VERSION})"
        )
    return doc


def files_of(doc: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    files = doc.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and DATA_FILE.match(k) and isinstance(v, dict) for k, v in files.items()
    ):
        raise FormatError(f"{where}: malformed file list in the commit record")
    return files


def decode(doc: dict[str, Any], where: str) -> Metadata:
    """DCP ``Metadata`` from a commit record; ``storage_data`` maps each
    :class:`MetadataIndex` to its :class:`StoredItem`."""
    try:
        state_md: dict[str, Any] = {}
        for fqn, d in doc["state_dict"].items():
            if d["type"] == "bytes":
                state_md[fqn] = BytesStorageMetadata()
                continue
            if d["type"] != "tensor":
                raise ValueError(f"entry {fqn!r} has unknown type {d['type']!r}")
            strides = d.get("strides")
            props = TensorProperties(
                dtype=dtype_from_name(_str(d["dtype"]), where),
                requires_grad=bool(d.get("requires_grad", False)),
                strides=None if strides is None else tuple(_ints(strides)),
            )
            chunks = [
                ChunkStorageMetadata(
                    offsets=torch.Size(_ints(c["offsets"])), sizes=torch.Size(_ints(c["sizes"]))
                )
                for c in d["chunks"]
            ]
            state_md[fqn] = TensorStorageMetadata(
                properties=props, size=torch.Size(_ints(d["size"])), chunks=chunks
            )
        storage: dict[MetadataIndex, StoredItem] = {}
        for e in doc["storage"]:
            offset = e["offset"]
            index = MetadataIndex(_str(e["fqn"]), None if offset is None else _ints(offset))
            storage[index] = StoredItem.from_json(e, where)
        planner_data = doc.get("planner_data")
        if planner_data is not None:
            planner_data = {k: tuple(p) for k, p in planner_data.items()}
        sm = doc.get("storage_meta")
        storage_meta = (
            StorageMeta()
            if sm is None
            else StorageMeta(
                checkpoint_id=sm.get("checkpoint_id"),
                save_id=sm.get("save_id"),
                modules=list(sm.get("modules", [])),
            )
        )
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{where}: malformed commit record: {e!r}") from None
    return Metadata(
        state_dict_metadata=state_md,
        planner_data=planner_data,
        storage_data=storage,
        storage_meta=storage_meta,
        version=_str(doc.get("dcp_version", DCP_VERSION)),
    )
