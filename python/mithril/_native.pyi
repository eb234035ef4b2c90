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
    "DecodeBuffer",
    "POOLED_FROM",
    "release_kept_memory",
    "kept_memory_bytes",
    "MinHasher",
    "Deduper",
    "BloomDeduper",
    "LshTables",
    "BandBloom",
    "optimal_params",
    "verify_buckets",
    "spanning_forest",
    "component_labels",
    "CacheStore",
    "blob_name",
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
    delta_coding: str | None = None,
) -> int: ...
def rewrite(
    src: _Path,
    dst: _Path,
    base_path: _Path | None = None,
    base_hint: str | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: _Progress | None = None,
    delta_coding: str | None = None,
) -> int: ...
def write_bytes(
    tensors: Sequence[_Tensor],
    metadata: dict[str, str] | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    base_tensor: _Tensor | None = None,
    delta_coding: str | None = None,
) -> bytes: ...
def compress_safetensors(
    src: _Path,
    dst: _Path,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    progress: _Progress | None = None,
    base_path: _Path | None = None,
    base_hint: str | None = None,
    delta_coding: str | None = None,
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
    def read_with_base_into(
        self,
        name: str,
        base: Buffer | npt.NDArray[Any],
        out: Buffer | npt.NDArray[Any],
        threads: int | None = None,
    ) -> None: ...
    @staticmethod
    def from_bytes(data: bytes) -> Reader: ...
    def lone_tensor(self) -> tuple[str, list[int], bool] | None: ...
    def names(self) -> list[str]: ...
    def info(self, name: str) -> tuple[str, list[int], int, int, list[str]]: ...
    def metadata(self) -> dict[str, str] | None: ...
    def has_safetensors_header(self) -> bool: ...
    def file_size(self) -> int: ...
    def read(self, name: str, threads: int | None = None) -> npt.NDArray[np.uint8]: ...
    def read_many_into(
        self,
        names: list[str],
        outs: list[Buffer | npt.NDArray[Any]],
        threads: int | None = None,
    ) -> None: ...
    def read_into(
        self, name: str, out: Buffer | npt.NDArray[Any], threads: int | None = None
    ) -> None: ...
    def verify(self, threads: int | None = None) -> int: ...

POOLED_FROM: int

@final
class DecodeBuffer:
    def __new__(cls, nbytes: int) -> DecodeBuffer: ...
    def __len__(self) -> int: ...

def release_kept_memory() -> int: ...
def kept_memory_bytes() -> int: ...

# Dedup. Texts are a list of str/bytes/None or an Arrow string/binary array (PyCapsule).

_Sig = npt.NDArray[np.uint32]

@final
class MinHasher:
    def __new__(
        cls, num_perm: int, ngram: int, seed: int, tokens: str, lowercase: bool, nfc: bool
    ) -> MinHasher: ...
    @property
    def num_perm(self) -> int: ...
    def signatures(
        self, texts: Any, threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]: ...
    def shingles(self, text: Any) -> npt.NDArray[np.uint64]: ...
    def band_keys(
        self, texts: Any, bands: int, rows: int, threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]: ...
    def fingerprint_sets(
        self, texts: Any, rows: Sequence[int], threads: int | None = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64]]: ...

@final
class Deduper:
    def __new__(
        cls,
        num_perm: int,
        ngram: int,
        seed: int,
        tokens: str,
        lowercase: bool,
        nfc: bool,
        bands: int,
        rows: int,
        threshold: float,
        verify: bool,
        keep: str,
    ) -> Deduper: ...
    def __len__(self) -> int: ...
    def add_batch(self, texts: Any, threads: int | None = None) -> None: ...
    def plan(self, threads: int | None = None) -> int: ...
    def needs_sets(self, start: int, count: int) -> bool: ...
    def add_sets(self, start: int, texts: Any, threads: int | None = None) -> None: ...
    def cluster(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def index_bytes(self) -> int: ...

@final
class BloomDeduper:
    def __new__(
        cls,
        num_perm: int,
        ngram: int,
        seed: int,
        tokens: str,
        lowercase: bool,
        nfc: bool,
        bands: int,
        rows: int,
        capacity: int,
        fp_rate: float,
        votes: int,
    ) -> BloomDeduper: ...
    def process(self, texts: Any, threads: int | None = None) -> npt.NDArray[np.bool_]: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def index_bytes(self) -> int: ...
    @property
    def probes(self) -> int: ...

@final
class LshTables:
    def __new__(cls, bands: int, rows: int) -> LshTables: ...
    def insert(self, id: int, sig: _Sig) -> None: ...
    def insert_many(self, ids: Sequence[int], sigs: _Sig) -> None: ...
    def query(self, sig: _Sig) -> list[int]: ...
    def remove(self, id: int) -> bool: ...
    def __contains__(self, key: int, /) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def index_bytes(self) -> int: ...

@final
class BandBloom:
    def __new__(
        cls, bands: int, rows: int, capacity: int, fp_rate: float, votes: int
    ) -> BandBloom: ...
    def contains(self, sig: _Sig) -> bool: ...
    def insert(self, sig: _Sig) -> None: ...
    def check_and_insert(self, sig: _Sig) -> bool: ...
    @property
    def index_bytes(self) -> int: ...
    @property
    def probes(self) -> int: ...

def optimal_params(
    threshold: float, num_perm: int, fp_weight: float, fn_weight: float
) -> tuple[int, int]: ...

_U64 = npt.NDArray[np.uint64]

def verify_buckets(
    members: _U64,
    bucket_offsets: _U64,
    set_ids: _U64,
    set_flat: npt.NDArray[np.uint32],
    set_offsets: _U64,
    threshold: float,
    verify: bool,
) -> tuple[_U64, _U64, tuple[int, int, int]]: ...
def spanning_forest(a: _U64, b: _U64) -> tuple[_U64, _U64]: ...
def component_labels(a: _U64, b: _U64) -> tuple[_U64, _U64]: ...

@final
class CacheStore:
    def __new__(cls, root: _Path, max_bytes: int | None = None) -> CacheStore: ...
    @property
    def root(self) -> str: ...
    @property
    def max_bytes(self) -> int | None: ...
    def put(self, data: Buffer) -> str: ...
    def get(self, name: str) -> bytes | None: ...
    def __contains__(self, key: str, /) -> bool: ...
    def put_action(
        self, key: str, outputs: dict[str, str], meta: dict[str, str] | None = None
    ) -> None: ...
    def get_action(self, key: str) -> dict[str, Any] | None: ...
    def stats(self) -> dict[str, Any]: ...
    def gc(self, max_bytes: int | None = None) -> dict[str, int]: ...
    def verify(self) -> dict[str, Any]: ...

def blob_name(data: Buffer) -> str: ...
