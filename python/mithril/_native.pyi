"""Type stubs for the Rust extension ``mithril._native``."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = [
    "__version__",
    "write_file",
    "write_bytes",
    "rewrite",
    "compress_safetensors",
    "decompress_safetensors",
    "Reader",
]
__version__: str

_Tensor = tuple[str, str, Sequence[int], Buffer | npt.NDArray[Any]]
_Path = str | PathLike[str]
_Progress = Callable[[int, int], object]

def write_file(
    path: _Path,
    tensors: Sequence[_Tensor],
    metadata: dict[str, str] | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: _Progress | None = None,
    base_path: _Path | None = None,
    base_hint: str | None = None,
    base_tensors: Sequence[_Tensor] | None = None,
) -> int: ...
def rewrite(
    src: _Path,
    dst: _Path,
    base_path: _Path | None = None,
    base_hint: str | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: _Progress | None = None,
) -> int: ...
def write_bytes(
    tensors: Sequence[_Tensor],
    metadata: dict[str, str] | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    base_tensor: _Tensor | None = None,
) -> bytes: ...
def compress_safetensors(
    src: _Path,
    dst: _Path,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: _Progress | None = None,
    base_path: _Path | None = None,
    base_hint: str | None = None,
) -> int: ...
def decompress_safetensors(
    src: _Path,
    dst: _Path,
    threads: int | None = None,
    progress: _Progress | None = None,
) -> int: ...

@final
class Reader:
    def __new__(
        cls, path: _Path, resolve_base: bool = True, base: _Path | None = None
    ) -> Reader: ...
    def content_id(self) -> str: ...
    def base_ref(self) -> tuple[str, str | None] | None: ...
    def chain(self) -> list[tuple[str, str, int]]: ...
    def read_with_base(
        self, name: str, base: Buffer | npt.NDArray[Any], threads: int | None = None
    ) -> npt.NDArray[np.uint8]: ...
    @staticmethod
    def from_bytes(data: bytes) -> Reader: ...
    def names(self) -> list[str]: ...
    def info(self, name: str) -> tuple[str, list[int], int, int, list[str]]: ...
    def metadata(self) -> dict[str, str] | None: ...
    def has_safetensors_header(self) -> bool: ...
    def file_size(self) -> int: ...
    def read(self, name: str, threads: int | None = None) -> npt.NDArray[np.uint8]: ...
    def read_into(
        self, name: str, out: Buffer | npt.NDArray[Any], threads: int | None = None
    ) -> None: ...
    def verify(self, threads: int | None = None) -> int: ...
