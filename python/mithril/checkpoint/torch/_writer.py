"""``MithrilWriter``: a DCP storage writer that stores each rank's items in one compressed,
checksummed Mithril file, optionally as a delta against the same rank's file of an earlier
checkpoint, and commits the checkpoint with a JSON record written last."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.staging import BlockingAsyncStager
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from mithril import _native
from mithril._fsutil import fsync_dir
from mithril.checkpoint import _delta_coding, _positive, _relative_path, _write_file
from mithril.checkpoint._convert import RawTensor, _torch_names, to_raw
from mithril.checkpoint.torch import _commit
from mithril.checkpoint.torch._commit import StoredItem
from mithril.errors import ConfigError

__all__ = ["MithrilWriter"]


_native_tensor = tuple[str, str, list[int], np.ndarray]

# Per rank: the rank file this process wrote last (resolved path, content id) and a copy of
# its tensors, kept when the writer is asked to (``cache_base=True``) so that the next delta
# against it need not decode it.
_LAST_WRITTEN: dict[int, tuple[Path, str, list[RawTensor]]] = {}


@dataclasses.dataclass(frozen=True)
class _RankPlan:
    """What the coordinator tells each rank: its rank and the save id all ranks share."""

    rank: int
    save_id: str


def _new_save_id() -> str:
    return uuid.uuid4().hex[:16]


def _stored_name(item: WriteItem) -> str:
    """The tensor's name inside the rank file: the key itself for a whole tensor or object,
    ``key@offsets`` for a shard. Stable from one save to the next, which is what lets a
    delta find its counterpart in the base."""
    td = item.tensor_data
    if td is None or tuple(td.chunk.sizes) == tuple(td.size):
        return item.index.fqn
    return f"{item.index.fqn}@{','.join(str(o) for o in td.chunk.offsets)}"


def _tensor_source(name: str, tensor: torch.Tensor) -> tuple[_native_tensor, str]:
    """(name, Mithril dtype, shape, uint8 bytes) for the codec, and the torch dtype name.
    Dtypes the codec does not know are stored as their bytes and restored by the reader."""
    torch_dtype = _commit.dtype_name(tensor.dtype)
    if tensor.dtype in _torch_names(torch):
        return to_raw(name, tensor), torch_dtype
    if tensor.layout != torch.strided:
        raise ConfigError(f"{name}: only dense (strided) tensors can be saved, got {tensor.layout}")
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return (name, "U8", [raw.size], raw), torch_dtype


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _resolver(planner: SavePlanner) -> Callable[[WriteItem], Any]:
    """``planner.resolve_data``, with a shortcut for the common case: a stock
    ``DefaultSavePlanner`` asked for a whole, plain tensor. There the planner's lookup
    returns the state dict's own tensor, after type checks against DCP's runtime protocols
    that cost about 20 us per item; the shortcut returns the same object without them.
    Anything else (shards, DTensors, bytes, planners that override a step) goes through the
    planner."""
    cls = type(planner)
    if not (
        isinstance(planner, DefaultSavePlanner)
        and cls.resolve_data is DefaultSavePlanner.resolve_data
        and cls.lookup_object is DefaultSavePlanner.lookup_object
        and cls.transform_object is DefaultSavePlanner.transform_object
    ):
        return planner.resolve_data
    state = planner.state_dict
    tensor_item = WriteItemType.TENSOR

    def resolve(item: WriteItem) -> Any:
        if item.type == tensor_item:
            index = item.index
            obj = state.get(index.fqn)
            if type(obj) in _PLAIN_TENSOR_TYPES and not any(index.offset or ()):
                return obj
        return planner.resolve_data(item)

    return resolve


def _storage_key(tensor: torch.Tensor) -> Hashable:
    """Equal for two views of the same memory with the same layout (tied weights), which
    are then stored once."""
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tensor.dtype,
        tuple(tensor.shape),
        tuple(tensor.stride()),
    )


class MithrilWriter(StorageWriter, BlockingAsyncStager):
    """Write a ``torch.distributed.checkpoint`` checkpoint compressed by Mithril.

    ``dcp.save(state_dict, storage_writer=MithrilWriter(path))`` on 1..N ranks; also
    ``dcp.async_save``. Each rank writes ``__<rank>_<save id>.mithril`` (tensors by dtype
    through the float codec, objects as bytes), each chunk checksummed; the coordinator
    then writes ``mithril-dcp.json`` atomically. Until that record exists the directory is
    an incomplete save that readers refuse, and a checkpoint being overwritten in place
    stays loadable until the new record replaces it (its files are removed after that).

    ``base``: an earlier Mithril DCP checkpoint directory; each rank stores its tensors as
    deltas against that rank's file there (tensors whose key, shape or dtype changed are
    stored whole). Loading then needs the base too, found through a relative path, so keep
    it (and never overwrite it in place) while later checkpoints use it. ``delta_coding``:
    ``"fast"`` (the default: faster to code than a full checkpoint) or ``"compact"``
    (smallest deltas, slower), as for ``mithril.checkpoint.save_file``.
    ``threads``: codec threads per rank (default: all cores). ``chunk_bytes``: codec chunk
    size. ``overwrite``: whether an existing checkpoint at ``path`` may be replaced.
    ``cache_base``: keep a host copy of what this rank wrote, so that the next save with
    ``base=`` pointing here encodes against memory instead of decoding the base file (costs
    one copy of the rank's state in RAM, until the next save).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        base: str | os.PathLike[str] | None = None,
        delta_coding: Literal["compact", "fast"] = "fast",
        threads: int | None = None,
        chunk_bytes: int | None = None,
        overwrite: bool = True,
        cache_base: bool = False,
        cache_staged_state_dict: bool = False,
    ) -> None:
        BlockingAsyncStager.__init__(self, cache_staged_state_dict=cache_staged_state_dict)
        self.path = Path(path)
        self.base = None if base is None else Path(base)
        self.delta_coding = _delta_coding(delta_coding)
        self.threads = _positive("threads", threads)
        self.chunk_bytes = _positive("chunk_bytes", chunk_bytes)
        self.overwrite = overwrite
        self.cache_base = cache_base
        self.save_id = _new_save_id()
        self.rank = 0
        self.is_coordinator = True
        self._base_file: Path | None = None

    # -- DCP's StorageWriter protocol -------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = Path(checkpoint_id)
        self.save_id = _new_save_id()
        self._base_file = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("use_collectives", True):
            raise ConfigError(
                "MithrilWriter needs use_collectives=True: the checkpoint is committed once, "
                "by the coordinator, after every rank has written"
            )
        self.is_coordinator = is_coordinator
        rank = kwargs.get("rank")
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = int(rank)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.overwrite and (self.path / _commit.COMMIT_NAME).exists():
            raise ConfigError(f"{self.path}: a checkpoint already exists and overwrite=False")
        self._base_file = self._find_base_file()
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [
            dataclasses.replace(p, storage_data=_RankPlan(rank=i, save_id=self.save_id))
            for i, p in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        rank_plan = plan.storage_data
        if not isinstance(rank_plan, _RankPlan):
            raise ConfigError("MithrilWriter: the save plan was not prepared by MithrilWriter")
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(self._write_rank_file(plan.items, planner, rank_plan))
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        storage: dict[Any, StoredItem] = {}
        files: dict[str, dict[str, Any]] = {}
        for rank_results in results:
            for wr in rank_results:
                item = wr.storage_data
                if not isinstance(item, StoredItem):
                    raise ConfigError("MithrilWriter: a rank returned results of another writer")
                storage[wr.index] = item
                if item.file not in files:
                    m = _commit.DATA_FILE.match(item.file)
                    try:
                        size: int | None = (self.path / item.file).stat().st_size
                    except FileNotFoundError:  # not on a filesystem the coordinator shares
                        size = None
                    files[item.file] = {
                        "rank": int(m.group(1)) if m else -1,
                        "content_id": item.file_id,
                        "size": size,
                    }
        base = (
            None
            if self.base is None
            else _relative_path(os.fspath(self.base.resolve()), os.fspath(self.path.resolve()))
        )
        text = _commit.encode(metadata, storage, files, self.save_id, base)
        _commit.write(self.path, text)
        self._remove_replaced_files(set(files))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, str | os.PathLike)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=os.fspath(self.path), save_id=self.save_id)

    # -- the work -----------------------------------------------------------------------------

    def _find_base_file(self) -> Path | None:
        if self.base is None:
            return None
        if self.base.resolve() == self.path.resolve():
            raise ConfigError(
                f"{self.path}: a checkpoint cannot be a delta against itself; "
                "save it to another directory"
            )
        doc = _commit.read(self.base)
        for name, info in _commit.files_of(doc, str(self.base)).items():
            if info.get("rank") == self.rank:
                return self.base / name
        return None  # this rank wrote nothing there (e.g. the world size changed)

    def _write_rank_file(
        self, items: list[WriteItem], planner: SavePlanner, rank_plan: _RankPlan
    ) -> list[WriteResult]:
        if not items:
            return []
        file_name = _commit.data_file_name(rank_plan.rank, rank_plan.save_id)
        target = self.path / file_name
        sources: list[_native_tensor] = []
        placed: list[tuple[WriteItem, str, str, tuple[int, ...]]] = []
        names: set[str] = set()
        by_storage: dict[Hashable, tuple[str, str, tuple[int, ...]]] = {}
        resolve = _resolver(planner)
        for item in items:
            data = resolve(item)
            if item.type == WriteItemType.BYTE_IO:
                if not isinstance(data, io.BytesIO):
                    raise ConfigError(f"{item.index.fqn}: a bytes item resolved to {type(data)}")
                raw = np.frombuffer(data.getvalue(), dtype=np.uint8)
                name = _unique(_stored_name(item), names)
                sources.append((name, "U8", [raw.size], raw))
                placed.append((item, name, "bytes", (raw.size,)))
                continue
            if not isinstance(data, torch.Tensor):
                raise ConfigError(f"{item.index.fqn}: a tensor item resolved to {type(data)}")
            td = item.tensor_data
            if td is not None and tuple(data.shape) != tuple(td.chunk.sizes):
                raise ConfigError(
                    f"{item.index.fqn}: planned chunk {list(td.chunk.sizes)} but the "
                    f"tensor is {list(data.shape)}"
                )
            key = _storage_key(data)
            if key in by_storage:  # the same memory again (tied weights): store it once
                name, dtype, shape = by_storage[key]
                placed.append((item, name, dtype, shape))
                continue
            name = _unique(_stored_name(item), names)
            source, dtype = _tensor_source(name, data)
            sources.append(source)
            by_storage[key] = (name, dtype, tuple(data.shape))
            placed.append((item, name, dtype, tuple(data.shape)))
        _write_file(
            sources,
            target,
            {"mithril.dcp.rank": str(rank_plan.rank), "mithril.dcp.save": rank_plan.save_id},
            base=self._base_file,
            delta_coding=self.delta_coding,
            threads=self.threads,
            chunk_bytes=self.chunk_bytes,
            base_raw=self._cached_base(rank_plan.rank),
        )
        reader = _native.Reader(target, False)
        file_id = reader.content_id()
        _LAST_WRITTEN.pop(rank_plan.rank, None)
        if self.cache_base:
            copies = [(n, d, s, raw.copy()) for n, d, s, raw in sources]
            _LAST_WRITTEN[rank_plan.rank] = (target.resolve(), file_id, copies)
        stored = {name: reader.info(name)[3] for name in reader.names()}
        return [
            WriteResult(
                index=item.index,
                size_in_bytes=stored[name],
                storage_data=StoredItem(
                    file=file_name,
                    name=name,
                    dtype=dtype,
                    shape=shape,
                    stored=stored[name],
                    file_id=file_id,
                ),
            )
            for item, name, dtype, shape in placed
        ]

    def _cached_base(self, rank: int) -> list[RawTensor] | None:
        """The base file's tensors from memory, when this process wrote that very file."""
        cached = _LAST_WRITTEN.get(rank)
        if self._base_file is None or cached is None:
            return None
        path, file_id, tensors = cached
        if path != self._base_file.resolve():
            return None
        if _native.Reader(self._base_file, False).content_id() != file_id:
            return None  # replaced since: decode the file instead
        return tensors

    def _remove_replaced_files(self, keep: set[str]) -> None:
        """After the commit: data files of the checkpoint this one replaced, and temp files
        of writers that died. Every rank has finished writing by now."""
        removed = False
        for entry in os.scandir(self.path):
            name = entry.name
            stale = (_commit.DATA_FILE.match(name) and name not in keep) or (
                name.startswith(".__") and name.endswith(".tmp")
            )
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed = True
        if removed:
            fsync_dir(self.path)


def _unique(name: str, names: set[str]) -> str:
    if name in names:
        raise ConfigError(f"two items of one rank map to the stored name {name!r}")
    names.add(name)
    return name
