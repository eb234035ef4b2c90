"""Test helpers: bit-exact tensor comparison and a reader/rebuilder of the container layout.

The container (see crates/mithril-checkpoint/src/format.rs) is a 48-byte header::

    0 magic "MITHRIL\\0" | 8 u16 major | 10 u16 minor | 12 u32 flags | 16 u64 index_len
    24 u64 xxh3(index) | 32 u64 data_offset | 40 u64 data_len

then the JSON index, zero padding up to data_offset (a multiple of 64), then the chunks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

HEADER = struct.Struct("<8sHHIQQQQ")
HEADER_LEN = HEADER.size
MAGIC = b"MITHRIL\0"
DATA_ALIGN = 64
assert HEADER_LEN == 48


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes in C order, for bit-exact comparison."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensor(got: Any, want: torch.Tensor) -> None:
    """Same dtype, same shape, identical bytes (NaN payloads and signed zeros included), and
    the strides of a fresh contiguous tensor, as torch would make it."""
    assert isinstance(got, torch.Tensor), type(got)
    assert got.dtype == want.dtype
    assert tuple(got.shape) == tuple(want.shape)
    assert got.stride() == torch.empty(want.shape, dtype=want.dtype).stride()
    assert raw_bytes(got) == raw_bytes(want)


def xxh3(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def hex64(v: int) -> str:
    return f"{v:016x}"


def header_checksum(header: bytes, index_bytes: bytes) -> int:
    """The checksum stored at offset 24, as the installed writer computes it.

    docs/format.md specifies xxh3-64 of the 48 header bytes (this field zeroed) followed by
    the index; format.rs hashes the index alone. Whichever the writer uses is what the
    reader checks, so rebuilt files follow the writer."""
    if _HEADER_COVERED:
        return xxh3(header[:24] + bytes(8) + header[32:HEADER_LEN] + index_bytes)
    return xxh3(index_bytes)


def _writer_covers_header() -> bool:
    import mithril.checkpoint as mc

    blob = mc.save({"x": torch.arange(3)}, {"probe": "1"})
    index_len, stored = struct.unpack_from("<QQ", blob, 16)
    index_bytes = blob[HEADER_LEN : HEADER_LEN + index_len]
    if stored == xxh3(index_bytes):
        return False
    assert stored == xxh3(blob[:24] + bytes(8) + blob[32:HEADER_LEN] + index_bytes)
    return True


_HEADER_COVERED = _writer_covers_header()


@dataclass
class Container:
    magic: bytes
    major: int
    minor: int
    flags: int
    index_len: int
    index_sum: int
    data_offset: int
    data_len: int
    index: dict[str, Any]
    data: bytes

    @property
    def index_end(self) -> int:
        return HEADER_LEN + self.index_len

    def chunks(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(tensor name, chunk number, chunk entry) in file order."""
        return [(t["name"], i, c) for t in self.index["tensors"] for i, c in enumerate(t["chunks"])]

    def tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in self.index["tensors"] if t["name"] == name)


def parse(blob: bytes) -> Container:
    """Split a well-formed container into its parts (checks only what the tests rely on)."""
    magic, major, minor, flags, index_len, index_sum, data_offset, data_len = HEADER.unpack_from(
        blob
    )
    index_bytes = blob[HEADER_LEN : HEADER_LEN + index_len]
    assert header_checksum(blob[:HEADER_LEN], index_bytes) == index_sum
    assert data_offset % DATA_ALIGN == 0
    assert data_offset + data_len == len(blob)
    assert set(blob[HEADER_LEN + index_len : data_offset]) <= {0}
    return Container(
        magic,
        major,
        minor,
        flags,
        index_len,
        index_sum,
        data_offset,
        data_len,
        json.loads(index_bytes),
        blob[data_offset:],
    )


def build(
    index: dict[str, Any] | bytes | str,
    data: bytes,
    *,
    magic: bytes = MAGIC,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    data_offset: int | None = None,
) -> bytes:
    """A container holding ``index`` (a dict to serialise, or the verbatim index bytes) and
    ``data``, with every length, the index checksum, the data offset and padding consistent.
    ``data_offset`` defaults to the first multiple of 64 after the index."""
    if isinstance(index, dict):
        index_bytes = json.dumps(index, separators=(",", ":")).encode()
    elif isinstance(index, str):
        index_bytes = index.encode()
    else:
        index_bytes = index
    if data_offset is None:
        data_offset = -(-(HEADER_LEN + len(index_bytes)) // DATA_ALIGN) * DATA_ALIGN
    head = HEADER.pack(magic, major, minor, flags, len(index_bytes), 0, data_offset, len(data))
    head = head[:24] + struct.pack("<Q", header_checksum(head, index_bytes)) + head[32:]
    blob = head + index_bytes
    return blob + b"\0" * (data_offset - len(blob)) + data


def rebuild(c: Container, **overrides: Any) -> bytes:
    """Rewrite ``c`` (after edits to ``c.index`` / ``c.data``) as a consistent container."""
    return build(overrides.pop("index", c.index), overrides.pop("data", c.data), **overrides)


def chunk_payload(c: Container, entry: dict[str, Any]) -> bytes:
    return c.data[entry["offset"] : entry["offset"] + entry["length"]]


def replace_chunk(c: Container, entry: dict[str, Any], payload: bytes) -> bytes:
    """``c`` with one chunk's stored bytes replaced by ``payload`` (same length), its stored
    checksum recomputed so that only the decoder can notice what changed."""
    assert len(payload) == entry["length"]
    data = bytearray(c.data)
    data[entry["offset"] : entry["offset"] + entry["length"]] = payload
    entry["xxh3"] = hex64(xxh3(payload))
    return rebuild(c, data=bytes(data))


def flip_bit(blob: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(blob)
    b[offset] ^= 1 << bit
    return bytes(b)
