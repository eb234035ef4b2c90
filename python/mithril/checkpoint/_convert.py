"""Conversion between user tensors (torch or numpy) and the raw little-endian bytes the
Rust core stores, without copying when the input is already contiguous on the CPU."""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np

from mithril import _native
from mithril.errors import ConfigError

_NUMPY_TO_NAME = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}
_NAME_TO_NUMPY = {v: k for k, v in _NUMPY_TO_NAME.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("mithril.checkpoint supports little-endian hosts only")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


@functools.cache
def _torch_names(torch: Any) -> dict[Any, str]:
    """torch dtype -> Mithril dtype name, for the dtypes this torch build has (built once;
    callers only read it)."""
    names = {
        torch.bool: "BOOL",
        torch.uint8: "U8",
        torch.int8: "I8",
        torch.int16: "I16",
        torch.int32: "I32",
        torch.int64: "I64",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float32: "F32",
        torch.float64: "F64",
    }
    for attr, name in (
        ("uint16", "U16"),
        ("uint32", "U32"),
        ("uint64", "U64"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
    ):
        if hasattr(torch, attr):
            names[getattr(torch, attr)] = name
    return names


RawTensor = tuple[str, str, list[int], np.ndarray]
"""(name, dtype name, shape, uint8 bytes): a tensor as the Rust core takes it."""


def to_raw(name: str, value: Any) -> RawTensor:
    """(name, dtype name, shape, uint8 view of the bytes) for a torch tensor or numpy array."""
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        dtype_name = _torch_names(torch).get(value.dtype)
        if dtype_name is None:
            raise ConfigError(f"tensor {name!r}: dtype {value.dtype} is not supported")
        if value.layout != torch.strided:
            raise ConfigError(f"tensor {name!r}: only dense (strided) tensors can be stored")
        # Each torch call costs about a microsecond, which counts over hundreds of small
        # tensors: detach and move only when needed.
        t = value.detach() if value.requires_grad else value
        if not t.is_cpu:
            t = t.cpu()
        shape = list(t.shape)
        # A contiguous tensor needs only a view and a numpy reshape (about half the cost of
        # copying and flattening in torch, which counts over hundreds of small tensors); a
        # byte view needs at least one dimension, and a last stride of 1, which an empty
        # tensor need not have (torch counts any empty tensor as contiguous).
        if t.dim() == 0 or not t.is_contiguous() or t.numel() == 0:
            t = t.contiguous().reshape(-1)
        return name, dtype_name, shape, t.view(torch.uint8).numpy().reshape(-1)
    if isinstance(value, np.ndarray):
        dtype = value.dtype
        if dtype.name == "bfloat16":  # ml_dtypes
            dtype_name = "BF16"
        elif dtype.newbyteorder("=") in _NUMPY_TO_NAME:
            dtype_name = _NUMPY_TO_NAME[dtype.newbyteorder("=")]
        else:
            raise ConfigError(f"tensor {name!r}: numpy dtype {dtype} is not supported")
        arr = value
        if dtype.byteorder == ">":
            arr = arr.astype(dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        return name, dtype_name, list(value.shape), arr.reshape(-1).view(np.uint8)
    raise ConfigError(
        f"tensor {name!r}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
    )


# torch dtypes that numpy lacks (or that older torch cannot take from numpy) are allocated
# as a signed integer array of the same width and viewed as their dtype.
_CARRIERS = {
    1: np.dtype(np.int8),
    2: np.dtype(np.int16),
    4: np.dtype(np.int32),
    8: np.dtype(np.int64),
}
_FROM_NUMPY_AS_IS = ("BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "F32", "F64")


def empty_tensor(dtype: str, shape: list[int], framework: str, what: str) -> tuple[Any, np.ndarray]:
    """An uninitialised tensor of ``dtype`` and ``shape`` (torch for ``framework="pt"``,
    numpy for ``"np"``) and a flat uint8 numpy view of its memory, for a decoder to fill in
    place: ``(tensor, bytes)``.

    The memory is a numpy array, which the torch tensor shares (as safetensors' tensors
    share theirs, they cannot be resized). Allocating it as torch bytes, then viewing and
    reshaping them took three torch calls per tensor, about 10 us, which over the hundred
    small tensors of a checkpoint is a tenth of decoding them. A size the allocator
    refuses (a hostile file can claim any) is a ``MemoryError`` naming ``what``.

    Tensors of ``_native.POOLED_FROM`` bytes or more live in a ``_native.DecodeBuffer``:
    memory that goes back to a bounded pool when the tensor is garbage and is reused by a
    later decode, which then skips the kernel's zeroing of fresh pages (see
    :func:`mithril.checkpoint.release_memory`).
    """
    torch, np_dtype, torch_dtype = _allocation(dtype, framework)
    try:
        nbytes = math.prod(shape) * np_dtype.itemsize if min(shape, default=0) >= 0 else -1
        if nbytes >= _native.POOLED_FROM:
            a = np.frombuffer(_native.DecodeBuffer(nbytes), dtype=np_dtype).reshape(shape)
        else:
            a = np.empty(shape, dtype=np_dtype)
    except (MemoryError, ValueError, OverflowError) as e:
        raise MemoryError(f"{what}: cannot allocate {dtype} of shape {shape} ({e})") from None
    buf = a.reshape(-1).view(np.uint8)
    if torch is None:
        return a, buf
    if a.size == 0:  # numpy gives empty arrays strides that torch would copy
        return torch.empty(shape, dtype=torch_dtype), buf
    t = torch.from_numpy(a)
    return (t if t.dtype == torch_dtype else t.view(torch_dtype)), buf


@functools.cache
def _allocation(dtype: str, framework: str) -> tuple[Any, np.dtype, Any]:
    """How :func:`empty_tensor` makes ``dtype`` for ``framework``: (torch module or None
    for numpy, numpy dtype to allocate, torch dtype of the result). Worked out once per
    pair, since a checkpoint decodes hundreds of tensors of a few dtypes; an unsupported
    pair raises ``ConfigError`` (and is not cached)."""
    if framework in ("pt", "torch"):
        torch = _torch()
        if torch is None:
            raise ConfigError("framework='pt' needs torch; install mithril[torch] or use 'np'")
        by_name = _torch_dtypes_by_name(torch)
        if dtype not in by_name:
            raise ConfigError(f"dtype {dtype} is not available in this torch build")
        torch_dtype = by_name[dtype]
        if dtype in _FROM_NUMPY_AS_IS:
            return torch, _NAME_TO_NUMPY[dtype], torch_dtype
        return torch, _CARRIERS[torch_dtype.itemsize], torch_dtype
    if framework in ("np", "numpy"):
        if dtype not in _NAME_TO_NUMPY:
            raise ConfigError(f"dtype {dtype} has no numpy equivalent; use framework='pt'")
        return None, _NAME_TO_NUMPY[dtype], None
    raise ConfigError(f"unknown framework {framework!r} (expected 'pt' or 'np')")


def on_device(t: Any, device: str) -> Any:
    """``t`` on ``device`` (a torch device name; ``"cpu"`` leaves it where it is)."""
    return t if device == "cpu" else t.to(device)


@functools.cache
def _torch_dtypes_by_name(torch: Any) -> dict[str, Any]:
    return {v: k for k, v in _torch_names(torch).items()}


def default_framework() -> str:
    return "pt" if _torch() is not None else "np"
