"""``MithrilReader``: the DCP storage reader for checkpoints written by ``MithrilWriter``.

It refuses a directory without a commit record, checks every rank file against the content
id the commit recorded, resolves delta chains, and decodes each saved chunk straight into
the destination tensor where the layouts allow (otherwise through one temporary)."""

from __future__ import annotations

import io
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from mithril import _native
from mithril.checkpoint import _positive
from mithril.checkpoint.torch import _commit
from mithril.checkpoint.torch._commit import StoredItem
from mithril.errors import CorruptDataError, FormatError, MithrilError

__all__ = ["MithrilReader"]


class MithrilReader(StorageReader):
    """Read a checkpoint written by :class:`MithrilWriter`:
    ``dcp.load(state_dict, storage_reader=MithrilReader(path))``, on any number of ranks
    (DCP reshards to the new layout). ``threads``: decode threads per rank (default: all
    cores).

    A directory whose save did not finish raises :class:`mithril.IncompleteCheckpointError`
    (inside DCP's error); a damaged or replaced rank file raises
    :class:`mithril.CorruptDataError` naming the file and the tensor.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = _positive("threads", threads)
        self.load_id = uuid.uuid4().hex
        self.storage_data: dict[Any, StoredItem] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = Path(checkpoint_id)
        self.storage_data = {}
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        doc = _commit.read(self.path)
        metadata = _commit.decode(doc, str(self.path / _commit.COMMIT_NAME))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        data = metadata.storage_data
        if not isinstance(data, dict) or not all(isinstance(v, StoredItem) for v in data.values()):
            raise FormatError(
                f"{self.path}: the checkpoint metadata was not written by MithrilWriter"
            )
        self.storage_data = data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[tuple[ReadItem, StoredItem]]] = {}
        for req in plan.items:
            item = self.storage_data.get(req.storage_index)
            if item is None:
                raise FormatError(
                    f"{self.path}: the commit record has no storage entry for "
                    f"{req.storage_index.fqn!r} at {list(req.storage_index.offset or [])}"
                )
            per_file.setdefault(item.file, []).append((req, item))
        for file_name, reqs in per_file.items():
            self._read_file(file_name, reqs, planner)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, str | os.PathLike)

    # -- the work -----------------------------------------------------------------------------

    def _open(self, file_name: str, reqs: list[tuple[ReadItem, StoredItem]]) -> _native.Reader:
        path = self.path / file_name
        file_id = reqs[0][1].file_id
        keys = sorted({req.storage_index.fqn for req, _ in reqs})
        holding = f"{', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        try:
            reader = _native.Reader(path)
        except FileNotFoundError:
            raise CorruptDataError(
                f"{path}: this rank file, listed in the commit record, is missing "
                f"(it holds {holding})"
            ) from None
        except MithrilError as e:
            raise type(e)(f"{path} (the rank file holding {holding}): {e}") from e
        if reader.content_id() != file_id:
            raise CorruptDataError(
                f"{path}: the rank file was replaced after the checkpoint was committed "
                f"(content id {reader.content_id()}, the commit record says {file_id})"
            )
        return reader

    def _read_file(
        self, file_name: str, reqs: list[tuple[ReadItem, StoredItem]], planner: LoadPlanner
    ) -> None:
        reader = self._open(file_name, reqs)
        uses = Counter(item.name for _, item in reqs)
        decoded: dict[str, torch.Tensor] = {}
        rest = self._read_direct_batch(reader, reqs, planner, uses) if _batchable(planner) else reqs
        for req, item in rest:
            try:
                self._read_item(reader, req, item, planner, uses, decoded)
            except MithrilError as e:
                raise type(e)(
                    f"{self.path / file_name}: {_describe(req)} (stored as {item.name!r}): {e}"
                ) from e

    def _read_direct_batch(
        self,
        reader: _native.Reader,
        reqs: list[tuple[ReadItem, StoredItem]],
        planner: LoadPlanner,
        uses: Counter[str],
    ) -> list[tuple[ReadItem, StoredItem]]:
        """Decode every request that reads a whole stored tensor into a matching contiguous
        CPU destination, all in one native call (tensors in parallel as well as their
        chunks), and commit them. Returns the requests left for :meth:`_read_item`. On an
        error the batch is not committed and those requests go the one-by-one way too, so
        that the error names its request."""
        direct: list[tuple[ReadItem, StoredItem, torch.Tensor]] = []
        rest = []
        for req, item in reqs:
            target = _direct_target(req, item, planner, uses)
            if target is None:
                rest.append((req, item))
            else:
                direct.append((req, item, target))
        if not direct:
            return rest
        names = [item.name for _, item, _ in direct]
        outs = [target.reshape(-1).view(torch.uint8).numpy() for _, _, target in direct]
        try:
            reader.read_many_into(names, outs, self.threads)
        except MithrilError:
            return [(req, item) for req, item, _ in direct] + rest
        for req, _, target in direct:
            planner.commit_tensor(req, target)
        return rest

    def _read_item(
        self,
        reader: _native.Reader,
        req: ReadItem,
        item: StoredItem,
        planner: LoadPlanner,
        uses: Counter[str],
        decoded: dict[str, torch.Tensor],
    ) -> None:
        if req.type == LoadItemType.BYTE_IO:
            if item.dtype != "bytes":
                raise FormatError(f"expected a bytes object, the commit says {item.dtype}")
            raw = reader.read(item.name, self.threads)
            planner.load_bytes(req, io.BytesIO(raw.tobytes()))
            return
        if item.dtype == "bytes":
            raise FormatError("expected a tensor, the commit says it is a bytes object")
        dtype = _commit.dtype_from_name(item.dtype, item.name)
        if len(req.storage_offsets) != len(item.shape):
            raise FormatError(
                f"the plan reads {len(req.storage_offsets)} dimensions, the stored chunk has "
                f"{len(item.shape)}"
            )
        target = planner.resolve_tensor(req).detach()
        if _reads_whole_alone(req, item, uses) and _fits_in_place(target, item, dtype):
            # Decode straight into the destination: no temporary, no copy.
            reader.read_into(item.name, target.reshape(-1).view(torch.uint8).numpy(), self.threads)
        else:
            source = decoded.get(item.name)
            if source is None:
                raw = reader.read(item.name, self.threads)
                source = torch.from_numpy(raw).view(dtype).reshape(item.shape)
                if uses[item.name] > 1:
                    decoded[item.name] = source
            uses[item.name] -= 1
            if uses[item.name] == 0:
                decoded.pop(item.name, None)
            for dim, (start, length) in enumerate(
                zip(req.storage_offsets, req.lengths, strict=True)
            ):
                source = source.narrow(dim, start, length)
            if target.shape != source.shape:
                raise FormatError(
                    f"the destination is {list(target.shape)} but the stored slice is "
                    f"{list(source.shape)}"
                )
            target.copy_(source)
        planner.commit_tensor(req, target)


def _batchable(planner: LoadPlanner) -> bool:
    """Whether destinations may all be resolved before any is committed: true of DCP's
    default planner, whose resolve returns the state dict's own tensors. A custom planner
    may reuse one staging buffer between a resolve and its commit, so it gets one request
    at a time, as DCP's own reader does."""
    cls = type(planner)
    return (
        cls.resolve_tensor is DefaultLoadPlanner.resolve_tensor
        and cls.commit_tensor is DefaultLoadPlanner.commit_tensor
    )


def _reads_whole_alone(req: ReadItem, item: StoredItem, uses: Counter[str]) -> bool:
    """Whether ``req`` reads the whole stored tensor and no other request reads it."""
    return (
        uses[item.name] == 1
        and tuple(req.storage_offsets) == (0,) * len(item.shape)
        and tuple(req.lengths) == tuple(item.shape)
    )


def _fits_in_place(target: torch.Tensor, item: StoredItem, dtype: torch.dtype) -> bool:
    """Whether the stored tensor can be decoded straight into ``target``: a contiguous CPU
    tensor of its dtype and shape."""
    return (
        target.device.type == "cpu"
        and target.dtype == dtype
        and target.is_contiguous()
        and tuple(target.shape) == item.shape
    )


def _direct_target(
    req: ReadItem, item: StoredItem, planner: LoadPlanner, uses: Counter[str]
) -> torch.Tensor | None:
    """The destination of a request that reads one whole stored tensor, used by no other
    request, into a contiguous CPU tensor of its dtype and shape; ``None`` otherwise."""
    if req.type == LoadItemType.BYTE_IO or item.dtype == "bytes":
        return None
    if not _reads_whole_alone(req, item, uses):
        return None
    try:
        dtype = _commit.dtype_from_name(item.dtype, item.name)
    except MithrilError:
        return None  # reported with its request by _read_item
    target = planner.resolve_tensor(req).detach()
    return target if _fits_in_place(target, item, dtype) else None


def _describe(req: ReadItem) -> str:
    offset = req.storage_index.offset
    where = "" if offset is None or not len(offset) else f" chunk at {list(offset)}"
    kind = "object" if req.type == LoadItemType.BYTE_IO else "tensor"
    return f"{kind} {req.storage_index.fqn!r}{where}"
