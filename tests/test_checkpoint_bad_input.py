"""Damaged, truncated and hostile inputs: every one must raise a specific MithrilError subclass
with a message that says what is wrong, never crash, hang or hand back data."""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import mithril
import mithril.checkpoint as mc
import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import (
    HEADER,
    HEADER_LEN,
    MAGIC,
    Container,
    build,
    chunk_payload,
    flip_bit,
    hex64,
    parse,
    rebuild,
    replace_chunk,
    xxh3,
)
from mithril import ConfigError, CorruptDataError, FormatError, MithrilError

# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def good_tensors(small_state_dict) -> dict[str, torch.Tensor]:
    """Real bf16 and fp32 weights, an fp32 bias and an int64 tensor."""
    return {
        "w.bf16": small_state_dict["attn.query.weight"][:16],  # 16x384 bf16: 12 KiB
        "w.f32": small_state_dict["ffn.weight"][:8],  # 8x384 fp32: 12 KiB
        "b.f32": small_state_dict["attn.query.bias"],  # 384 fp32
        "ids": small_state_dict["position_ids"],  # 1x512 int64: 4 KiB
    }


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, good_tensors) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.mithril"
    mc.save_file(good_tensors, path, metadata={"step": "1"}, chunk_bytes=2048)
    return path


@pytest.fixture(scope="module")
def good_blob(good_file: Path) -> bytes:
    return good_file.read_bytes()


@pytest.fixture
def container(good_blob: bytes) -> Container:
    """A fresh parsed copy of the good file, to edit."""
    return parse(good_blob)


def load_bytes(blob: bytes) -> dict:
    """Open, decode everything and verify, in memory."""
    return mc.load(blob)


def write(tmp_path: Path, blob: bytes, name: str = "bad.mithril") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def expect(
    exc: type[MithrilError], blob: bytes, tmp_path: Path, match: str, *, on_open: bool = True
) -> None:
    """``blob`` fails with ``exc`` (message matching ``match``) in every reading entry point.
    With ``on_open`` the failure comes already from opening (layout validation)."""
    path = write(tmp_path, blob)
    entry_points: list[tuple[str, Callable[[], object]]] = [
        ("load", lambda: mc.load(blob)),
        ("load_file", lambda: mc.load_file(path)),
        ("verify", lambda: mc.verify(path)),
    ]
    if on_open:
        entry_points += [
            ("safe_open", lambda: mc.safe_open(path)),
            ("inspect", lambda: mc.inspect(path)),
            ("decompress_tensor", lambda: mc.decompress_tensor(blob)),
        ]
    else:
        entry_points += [
            ("decompress_safetensors", lambda: mc.decompress_safetensors(path, tmp_path / "o.st")),
        ]
    for what, fn in entry_points:
        with pytest.raises(exc, match=match) as info:
            fn()
        assert type(info.value) is exc, f"{what}: {type(info.value).__name__}: {info.value}"
    assert not (tmp_path / "o.st").exists()


def test_the_fixture_file_is_good(good_file: Path, good_blob: bytes, good_tensors):
    c = parse(good_blob)
    assert len(c.chunks()) >= 12
    assert {e["encoding"] for _, _, e in c.chunks()} >= {"float", "zstd"}
    assert mc.verify(good_file) == len(c.chunks())
    # The rebuild helper itself gives a valid file.
    loaded = mc.load(rebuild(c))
    for name, want in good_tensors.items():
        assert torch.equal(loaded[name].view(torch.uint8), want.contiguous().view(torch.uint8))


# --------------------------------------------------------------------------------------------
# Header and length damage


def test_empty_file(tmp_path: Path):
    expect(FormatError, b"", tmp_path, "shorter than the 48-byte header")


def test_too_short_for_a_header(tmp_path: Path):
    expect(FormatError, MAGIC + b"\x01\x00", tmp_path, "shorter than the 48-byte header")


def test_truncation_in_the_header_and_index_region(good_blob: bytes):
    c = parse(good_blob)
    for cut in range(c.data_offset + 1):
        with pytest.raises(FormatError, match=r"truncated|outside|shorter") as info:
            load_bytes(good_blob[:cut])
        assert type(info.value) is FormatError


def test_truncation_in_the_data_section(good_blob: bytes, tmp_path: Path):
    c = parse(good_blob)
    cuts = [*range(c.data_offset + 1, len(good_blob), 97), len(good_blob) - 1]
    for cut in cuts:
        with pytest.raises(FormatError, match="truncated") as info:
            load_bytes(good_blob[:cut])
        assert type(info.value) is FormatError
    expect(FormatError, good_blob[: len(good_blob) - 1], tmp_path, "truncated")


def test_extra_bytes_at_the_end(good_blob: bytes, tmp_path: Path):
    expect(FormatError, good_blob + b"\0", tmp_path, "extended")
    expect(FormatError, good_blob + good_blob, tmp_path, "extended")


def test_bad_magic(good_blob: bytes, tmp_path: Path):
    expect(FormatError, b"MITHRIL\x01" + good_blob[8:], tmp_path, "bad magic")
    expect(FormatError, b"\x00" * len(good_blob), tmp_path, "bad magic")
    # A safetensors file is not a container.
    expect(FormatError, b"\x08\0\0\0\0\0\0\0{}      " + bytes(64), tmp_path, "bad magic")


@pytest.mark.parametrize("major", [0, 2, 0xFFFF])
def test_unknown_major_version(good_blob: bytes, tmp_path: Path, major: int):
    blob = good_blob[:8] + struct.pack("<H", major) + good_blob[10:]
    expect(FormatError, blob, tmp_path, f"version {major} is not supported")


@pytest.mark.parametrize("flags", [1, 0x80000000])
def test_nonzero_flags(good_blob: bytes, tmp_path: Path, flags: int):
    blob = good_blob[:12] + struct.pack("<I", flags) + good_blob[16:]
    expect(FormatError, blob, tmp_path, "flags")


def _with_field(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<Q", value) + blob[offset + 8 :]


def test_index_length_past_the_end(good_blob: bytes, tmp_path: Path):
    expect(FormatError, _with_field(good_blob, 16, len(good_blob)), tmp_path, "past the end")
    expect(FormatError, _with_field(good_blob, 16, (256 << 20) - 1), tmp_path, "past the end")


@pytest.mark.parametrize("length", [(256 << 20) + 1, 1 << 40, 2**64 - 1])
def test_index_length_over_the_cap(good_blob: bytes, tmp_path: Path, length: int):
    expect(FormatError, _with_field(good_blob, 16, length), tmp_path, "cap")


@pytest.mark.parametrize("offset", [0, 47, "index_end-1", "file_len+1", 2**63, 2**64 - 1])
def test_data_offset_outside_the_file(good_blob: bytes, tmp_path: Path, offset):
    c = parse(good_blob)
    value = {"index_end-1": c.index_end - 1, "file_len+1": len(good_blob) + 1}.get(offset, offset)
    expect(FormatError, _with_field(good_blob, 32, value), tmp_path, "data offset")


@pytest.mark.parametrize("delta", [-1, 1, 2**63])
def test_data_length_disagrees_with_the_file(good_blob: bytes, tmp_path: Path, delta: int):
    c = parse(good_blob)
    blob = _with_field(good_blob, 40, (c.data_len + delta) % 2**64)
    expect(FormatError, blob, tmp_path, "data bytes")


def test_index_checksum_mismatch(good_blob: bytes, tmp_path: Path):
    c = parse(good_blob)
    expect(CorruptDataError, _with_field(good_blob, 24, c.index_sum ^ 1), tmp_path, "checksum")


def test_nonzero_padding(good_blob: bytes, tmp_path: Path):
    c = parse(good_blob)
    assert c.data_offset > c.index_end
    blob = bytearray(good_blob)
    blob[c.data_offset - 1] = 0x20
    expect(CorruptDataError, bytes(blob), tmp_path, "padding")


def test_data_offset_must_be_aligned(container: Container, tmp_path: Path):
    """docs/format.md: the data offset is a multiple of 64."""
    index_bytes = json.dumps(container.index).encode()
    offset = HEADER_LEN + len(index_bytes) + 1
    if offset % 64 == 0:
        offset += 1
    blob = build(index_bytes, container.data, data_offset=offset)
    expect(FormatError, blob, tmp_path, "data offset")


def test_flipped_bits_across_header_and_index(good_blob: bytes):
    """Every byte before the data is covered by a check (docs/format.md), so a flipped bit
    anywhere in the header, index or padding is refused."""
    c = parse(good_blob)
    undetected = []
    offsets = [*range(HEADER_LEN), *range(HEADER_LEN, c.data_offset, 5)]
    for i, offset in enumerate(offsets):
        bit = i % 8
        try:
            load_bytes(flip_bit(good_blob, offset, bit))
        except (FormatError, CorruptDataError) as e:
            assert str(e)
        else:
            undetected.append((offset, bit))
    assert undetected == [], f"flips not detected at (offset, bit): {undetected}"


# --------------------------------------------------------------------------------------------
# Index content (rebuilt with consistent lengths and checksum, so the index itself is judged)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"tensors": [',
        "[]",
        '{"tensors": 5}',
        '{"tensors": [{"name": "x"}]}',
        '{"tensors": [], "metadata": {"a": 1}}',
        '{"tensors": [{"name": "x", "dtype": "F32", "shape": [-1], "chunks": []}]}',
        '{"tensors": []} trailing',
        "\udcff",
    ],
    ids=[
        "empty",
        "garbage",
        "unterminated",
        "array",
        "tensors-not-list",
        "missing-fields",
        "metadata-not-str",
        "negative-dim",
        "trailing",
        "not-utf8",
    ],
)
def test_index_is_not_valid_json(tmp_path: Path, text: str):
    index = text.encode("utf-8", "surrogateescape")
    expect(FormatError, build(index, b""), tmp_path, "index is not valid JSON")


def test_valid_empty_index_is_fine():
    assert mc.load(build({"tensors": []}, b"")) == {}


def test_duplicate_tensor_names(container: Container, tmp_path: Path):
    tensors = container.index["tensors"]
    dup = copy.deepcopy(tensors[-1])
    dup["chunks"] = []
    dup["shape"] = [0]
    tensors.append(dup)
    expect(FormatError, rebuild(container), tmp_path, f'duplicate tensor name "{dup["name"]}"')


def test_overlapping_chunks(container: Container, tmp_path: Path):
    chunks = container.index["tensors"][0]["chunks"]
    chunks[1]["offset"] -= 1
    expect(
        FormatError, rebuild(container), tmp_path, r"chunk 1: offset \d+ leaves a gap or overlap"
    )


def test_gap_between_chunks(container: Container, tmp_path: Path):
    name = container.index["tensors"][1]["name"]
    container.index["tensors"][1]["chunks"][2]["offset"] += 1
    expect(FormatError, rebuild(container), tmp_path, f'"{name}" chunk 2: offset')


def test_chunk_out_of_the_file(container: Container, tmp_path: Path):
    last = container.index["tensors"][-1]["chunks"][-1]
    last["length"] += 1
    expect(FormatError, rebuild(container), tmp_path, "past the end of the data")
    c = parse(rebuild(container, data=container.data))
    c.index["tensors"][-1]["chunks"][-1]["length"] = 2**64 - 1
    expect(FormatError, rebuild(c), tmp_path, "past the end of the data")


def test_chunks_do_not_cover_the_data(container: Container, tmp_path: Path):
    expect(FormatError, rebuild(container, data=container.data + b"\0" * 3), tmp_path, "cover")


def test_chunk_reordering_is_caught(container: Container, tmp_path: Path):
    chunks = container.index["tensors"][0]["chunks"]
    chunks[0], chunks[1] = chunks[1], chunks[0]
    expect(FormatError, rebuild(container), tmp_path, "gap or overlap")


@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**32, 2**32, 2], [2**63, 2]])
def test_shape_times_dtype_overflows(container: Container, tmp_path: Path, shape):
    container.index["tensors"][0]["shape"] = shape
    expect(FormatError, rebuild(container), tmp_path, "overflows")


def test_shape_disagrees_with_chunks(container: Container, tmp_path: Path):
    t = container.index["tensors"][0]
    t["shape"] = [t["shape"][0] + 1, *t["shape"][1:]]
    expect(FormatError, rebuild(container), tmp_path, "chunks hold")


def test_huge_chunk_raw_length_fails_fast(container: Container, tmp_path: Path):
    chunk = container.index["tensors"][0]["chunks"][0]
    chunk["raw_length"] = 1 << 40
    expect(FormatError, rebuild(container), tmp_path, "raw length 1099511627776")


def test_raw_length_not_whole_elements(container: Container, tmp_path: Path):
    container.index["tensors"][1]["chunks"][0]["raw_length"] -= 1  # fp32
    expect(FormatError, rebuild(container), tmp_path, "whole number of F32 elements")


def test_zero_raw_length(container: Container, tmp_path: Path):
    container.index["tensors"][1]["chunks"][0]["raw_length"] = 0
    expect(FormatError, rebuild(container), tmp_path, "raw length 0")


_BIG_TENSOR_SCRIPT = textwrap.dedent(
    """
    import sys
    import mithril.checkpoint as mc
    from mithril import MithrilError
    path, op = sys.argv[1], sys.argv[2]
    try:
        if op == "get_tensor":
            with mc.safe_open(path, framework="np") as f:
                f.get_tensor("x")
        elif op == "load":
            mc.load(open(path, "rb").read(), framework="np")
        elif op == "load_file_torch":
            mc.load_file(path)
        elif op == "decompress_tensor_torch":
            mc.decompress_tensor(open(path, "rb").read())
        else:
            mc.decompress_safetensors(path, path + ".safetensors")
    except (MithrilError, MemoryError) as e:
        print("raised", type(e).__name__, e)
        sys.exit(0)
    print("returned data")
    sys.exit(3)
    """
)


@pytest.mark.parametrize(
    "op",
    ["get_tensor", "load", "decompress_safetensors", "load_file_torch", "decompress_tensor_torch"],
)
def test_tensor_far_larger_than_memory_does_not_abort(tmp_path: Path, op: str):
    """A 1 KB file can claim a 64 GiB tensor in 1024 chunks of 64 MiB (each a legal size).
    Decoding must fail with an exception, not abort the interpreter on the allocation."""
    per = 64 << 20
    n = 1024
    name = "" if op == "decompress_tensor_torch" else "x"  # a compress_tensor() blob
    payload = b"\0"
    chunk = {
        "length": 1,
        "raw_length": per,
        "encoding": "zstd",
        "xxh3": hex64(xxh3(payload)),
        "raw_xxh3": "0" * 16,
    }
    index = {
        "tensors": [
            {
                "name": name,
                "dtype": "U8",
                "shape": [n * per],
                "chunks": [dict(chunk, offset=i) for i in range(n)],
            }
        ]
    }
    path = write(tmp_path, build(index, payload * n))
    with mc.safe_open(path) as f:  # the layout itself is legal
        assert f.keys() == [name]
    # Every chunk is bad and they are checked in parallel: whichever fails first is named.
    with pytest.raises(CorruptDataError, match=rf'tensor "{name}" chunk \d+: zstd'):
        mc.verify(path)
    proc = subprocess.run(
        [sys.executable, "-c", _BIG_TENSOR_SCRIPT, str(path), op],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[:2000]}"
    )
    assert proc.stdout.startswith("raised")


@pytest.mark.parametrize("dtype", ["F33", "bf16", "", "FLOAT"])
def test_unknown_dtype(container: Container, tmp_path: Path, dtype: str):
    container.index["tensors"][2]["dtype"] = dtype
    expect(FormatError, rebuild(container), tmp_path, f'unknown dtype "{dtype}"')


@pytest.mark.parametrize("encoding", ["lz4", "FLOAT", ""])
def test_unknown_encoding(container: Container, tmp_path: Path, encoding: str):
    container.index["tensors"][0]["chunks"][3]["encoding"] = encoding
    expect(FormatError, rebuild(container), tmp_path, f'chunk 3: unknown encoding "{encoding}"')


def test_raw_chunk_with_wrong_length(container: Container, tmp_path: Path):
    c = container.index["tensors"][0]["chunks"][0]
    assert c["encoding"] == "float"
    c["encoding"] = "raw"
    expect(FormatError, rebuild(container), tmp_path, "raw chunk with stored length")


@pytest.mark.parametrize("field", ["xxh3", "raw_xxh3"])
@pytest.mark.parametrize("value", ["", "0123", "xyzxyzxyzxyzxyzx", "0" * 17])
def test_malformed_checksums(container: Container, tmp_path: Path, field: str, value: str):
    container.index["tensors"][1]["chunks"][0][field] = value
    expect(FormatError, rebuild(container), tmp_path, "malformed checksum")


def test_wrong_raw_checksum(container: Container, tmp_path: Path):
    name = container.index["tensors"][1]["name"]
    c = container.index["tensors"][1]["chunks"][2]
    c["raw_xxh3"] = hex64(int(c["raw_xxh3"], 16) ^ 1)
    expect(
        CorruptDataError,
        rebuild(container),
        tmp_path,
        f'tensor "{name}" chunk 2: .*decoded data checksum mismatch',
        on_open=False,
    )


def test_float_encoding_on_an_integer_tensor(container: Container, tmp_path: Path):
    t = next(t for t in container.index["tensors"] if t["dtype"] == "I64")
    t["chunks"][0]["encoding"] = "float"
    path = write(tmp_path, rebuild(container))
    with pytest.raises((FormatError, CorruptDataError), match="float"):
        mc.load_file(path)
    with pytest.raises((FormatError, CorruptDataError), match="float"):
        mc.verify(path)


def test_swapped_chunk_payloads(container: Container, tmp_path: Path):
    """Two same-length chunks trade places: both stored checksums now fail."""
    c0, c1 = container.index["tensors"][0]["chunks"][:2]
    p0, p1 = chunk_payload(container, c0), chunk_payload(container, c1)
    c0["length"], c1["length"] = len(p1), len(p0)
    c1["offset"] = c0["offset"] + len(p1)
    data = container.data
    data = data[: c0["offset"]] + p1 + p0 + data[c1["offset"] + len(p0) :]
    expect(CorruptDataError, rebuild(container, data=data), tmp_path, "chunk 0", on_open=False)


# --------------------------------------------------------------------------------------------
# Chunk payload damage


def test_flipped_bit_in_every_chunk(good_blob: bytes, tmp_path: Path):
    c = parse(good_blob)
    for n, (name, i, entry) in enumerate(c.chunks()):
        offset = c.data_offset + entry["offset"] + (n * 7919) % entry["length"]
        blob = flip_bit(good_blob, offset, n % 8)
        path = write(tmp_path, blob)
        pattern = f'tensor "{name}" chunk {i}: .*checksum mismatch'
        with pytest.raises(CorruptDataError, match=pattern):
            mc.verify(path)
        with pytest.raises(CorruptDataError, match=pattern):
            mc.load_file(path)
        with pytest.raises(CorruptDataError, match=pattern):
            mc.load(blob)
        # Other tensors stay readable: decoding is per tensor.
        with mc.safe_open(path) as f:
            for other in f.keys():
                if other != name:
                    f.get_tensor(other)
            with pytest.raises(CorruptDataError, match=pattern):
                f.get_tensor(name)


def test_every_byte_of_a_chunk_is_checked(good_blob: bytes):
    c = parse(good_blob)
    name, i, entry = c.chunks()[5]
    start = c.data_offset + entry["offset"]
    for offset in range(start, start + entry["length"]):
        with pytest.raises(CorruptDataError, match=f'"{name}" chunk {i}'):
            mc.load(flip_bit(good_blob, offset, offset % 8))


# Head stream method ids of a float chunk payload (`u8 k | u8 method | ...`).
HEAD_METHODS = {"rANS": 2, "Huffman": 4}


def _refuses_damaged_head(
    container: Container, tmp_path: Path, coder: str, damage: Callable[[bytes], bytes], why: str
) -> None:
    """Damage the head stream of the first float chunk coded with ``coder`` and recompute the
    stored checksum, so that the decoder itself must refuse, with ``why`` in its message."""
    found = next(
        (
            (name, i, entry)
            for name, i, entry in container.chunks()
            if entry["encoding"] == "float"
            and chunk_payload(container, entry)[1] == HEAD_METHODS[coder]
        ),
        None,
    )
    assert found is not None, f"no float chunk with a {coder} head"
    name, i, entry = found
    blob = replace_chunk(container, entry, damage(chunk_payload(container, entry)))
    expect(CorruptDataError, blob, tmp_path, f'tensor "{name}" chunk {i}: .*({why})', on_open=False)


def _rans_damage(payload: bytes, how: str) -> bytes:
    """Damage the rANS head stream of a float chunk payload:
    u8 k | u8 method | u32 len | u16 nsym | nsym x (u16 sym, u16 freq) | 32 x u32 | words."""
    p = bytearray(payload)
    t = 6  # start of the rANS stream
    (nsym,) = struct.unpack_from("<H", p, t)
    sym = lambda j: t + 2 + 4 * j  # noqa: E731
    freq = lambda j: t + 4 + 4 * j  # noqa: E731
    get = lambda at: struct.unpack_from("<H", p, at)[0]  # noqa: E731
    put = lambda at, v: struct.pack_into("<H", p, at, v)  # noqa: E731
    if how == "zero_frequency":
        f0, f1 = get(freq(0)), get(freq(1))
        put(freq(0), 0)
        put(freq(1), f1 + f0)
    elif how == "sum_too_big":
        put(freq(0), get(freq(0)) + 1)
    elif how == "sum_too_small":
        f = max(range(nsym), key=lambda j: get(freq(j)))
        put(freq(f), get(freq(f)) - 1)
    elif how == "frequency_4096":
        put(freq(0), 4096)
    elif how == "symbols_not_increasing":
        s0, s1 = get(sym(0)), get(sym(1))
        put(sym(0), s1)
        put(sym(1), s0)
    elif how == "symbol_out_of_range":
        put(sym(nsym - 1), 0xFFFF)
    elif how == "one_symbol":
        put(t, 1)
    elif how == "too_many_symbols":
        put(t, 1025)
    elif how == "lane_state_below_range":
        struct.pack_into("<I", p, t + 2 + 4 * nsym, 5)
    elif how == "frequencies_shifted":
        # Still a valid table (sum 4096), but not the one the stream was coded with.
        big = max(range(nsym), key=lambda j: get(freq(j)))
        other = 0 if big != 0 else 1
        put(freq(big), get(freq(big)) - 1)
        put(freq(other), get(freq(other)) + 1)
    elif how == "head_method":
        p[1] = 7
    elif how == "head_width":
        p[0] = 9
    elif how == "stream_length":
        (n,) = struct.unpack_from("<I", p, 2)
        struct.pack_into("<I", p, 2, n + 1)
    elif how == "last_word":
        p[-1] ^= 0x40
    else:
        raise AssertionError(how)
    return bytes(p)


RANS_DAMAGE = {
    "zero_frequency": "rANS frequency 0 invalid",
    "sum_too_big": "rANS frequencies sum to 4097",
    "sum_too_small": "rANS frequencies sum to 4095",
    "frequency_4096": "rANS frequency 4096 invalid",
    "symbols_not_increasing": "not increasing",
    "symbol_out_of_range": "rANS symbol 65535 out of range",
    "one_symbol": "rANS table has 1 symbols",
    "too_many_symbols": "rANS table has 1025 symbols",
    "lane_state_below_range": "lane state out of range",
    "frequencies_shifted": "rANS|checksum",
    "head_method": "unknown head method 7",
    "head_width": "invalid head width k=9",
    "stream_length": "runs past|trailing|truncated|rANS",
    "last_word": "rANS|checksum|remainder|plane",
}


@pytest.fixture(scope="module")
def rans_blob(tmp_path_factory) -> bytes:
    """A bf16 tensor whose heads are so skewed (95 % exactly 1.0) that Huffman's whole-bit
    codes lose to rANS, so the writer codes them with rANS."""
    rng = np.random.default_rng(5)
    values = np.where(rng.random(65536) < 0.95, 1.0, rng.normal(0, 0.05, 65536))
    path = tmp_path_factory.mktemp("rans") / "skewed.mithril"
    mc.save_file({"skewed": torch.from_numpy(values).to(torch.bfloat16)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("how", list(RANS_DAMAGE))
def test_invalid_rans_stream_with_valid_checksum(rans_blob: bytes, tmp_path: Path, how: str):
    damage = lambda p: _rans_damage(p, how)  # noqa: E731
    _refuses_damaged_head(parse(rans_blob), tmp_path, "rANS", damage, RANS_DAMAGE[how])


def _huffman_damage(payload: bytes, how: str) -> bytes:
    """Damage the Huffman head stream of a float chunk payload:
    u8 k | u8 method | u32 len | u8 set form | set | 4-bit lengths | u8 segments | bits."""
    p = bytearray(payload)
    t = 6  # start of the Huffman stream
    if p[t] == 0:  # bitmap form: u16 first, u16 last, bitmap
        first, last = struct.unpack_from("<HH", p, t + 1)
        nsym = sum(bin(b).count("1") for b in p[t + 5 : t + 5 + (last - first) // 8 + 1])
        lengths = t + 5 + (last - first) // 8 + 1
    else:  # list form: u16 count, count x u16
        (nsym,) = struct.unpack_from("<H", p, t + 1)
        lengths = t + 3 + 2 * nsym
    nibbles = [(p[lengths + j // 2] >> (4 * (j % 2))) & 15 for j in range(nsym)]

    def set_nibble(j: int, v: int) -> None:
        shift = 4 * (j % 2)
        p[lengths + j // 2] = (p[lengths + j // 2] & ~(15 << shift) & 0xFF) | (v << shift)

    if how == "set_form":
        p[t] = 9
    elif how == "symbol_range":
        assert p[t] == 0
        struct.pack_into("<H", p, t + 3, 0xFFFF)
    elif how == "length_zero":
        set_nibble(0, 0)
    elif how == "length_12":
        set_nibble(0, 12)
    elif how == "incomplete_code":
        j = next(j for j, n in enumerate(nibbles) if n < 11)
        set_nibble(j, nibbles[j] + 1)
    elif how == "segments":
        p[lengths + (nsym + 1) // 2] = 3
    elif how == "stream_length":
        (n,) = struct.unpack_from("<I", p, 2)
        struct.pack_into("<I", p, 2, n + 1)
    elif how == "bits":
        (n,) = struct.unpack_from("<I", p, 2)
        p[t + n - 2] ^= 0x5A
    else:
        raise AssertionError(how)
    return bytes(p)


HUFFMAN_DAMAGE = {
    "set_form": "unknown Huffman symbol set form 9",
    "symbol_range": "Huffman symbol range",
    "length_zero": "Huffman code length 0 invalid",
    "length_12": "Huffman code length 12 invalid",
    "incomplete_code": "do not form a complete code",
    "segments": "Huffman stream has 3 segments",
    "stream_length": "runs past|trailing|truncated|Huffman",
    "bits": "Huffman|checksum",
}


@pytest.mark.parametrize("how", list(HUFFMAN_DAMAGE))
def test_invalid_huffman_stream_with_valid_checksum(container: Container, tmp_path: Path, how: str):
    damage = lambda p: _huffman_damage(p, how)  # noqa: E731
    _refuses_damaged_head(container, tmp_path, "Huffman", damage, HUFFMAN_DAMAGE[how])


def test_zstd_chunk_damage_with_valid_checksum(container: Container, tmp_path: Path):
    name, i, entry = next(x for x in container.chunks() if x[2]["encoding"] == "zstd")
    payload = bytearray(chunk_payload(container, entry))
    payload[len(payload) // 2] ^= 0xFF
    blob = replace_chunk(container, entry, bytes(payload))
    expect(CorruptDataError, blob, tmp_path, f'tensor "{name}" chunk {i}', on_open=False)
    c = parse(rebuild(container))
    entry = c.tensor(name)["chunks"][i]
    blob = replace_chunk(c, entry, b"\0" * entry["length"])
    expect(CorruptDataError, blob, tmp_path, f'tensor "{name}" chunk {i}: .*zstd', on_open=False)


def test_float_payload_garbage_with_valid_checksum(container: Container, tmp_path: Path):
    rng = np.random.default_rng(0)
    floats = [x for x in container.chunks() if x[2]["encoding"] == "float"]
    for name, i, entry in floats[:6]:
        c = parse(rebuild(container))
        entry = c.tensor(name)["chunks"][i]
        blob = replace_chunk(c, entry, rng.bytes(entry["length"]))
        with pytest.raises(CorruptDataError, match=f'tensor "{name}" chunk {i}'):
            mc.load(blob)


# --------------------------------------------------------------------------------------------
# A stored safetensors header that disagrees with the tensors


@pytest.fixture
def from_safetensors(tmp_path: Path, good_tensors) -> tuple[Container, dict]:
    src = tmp_path / "src.safetensors"
    safetensors.torch.save_file(good_tensors, str(src), metadata={"m": "1"})
    dst = tmp_path / "src.mithril"
    mc.compress_safetensors(src, dst, chunk_bytes=4096)
    c = parse(dst.read_bytes())
    return c, json.loads(c.index["safetensors_header"])


def _decompress_fails(tmp_path: Path, c: Container, header: dict | str, match: str) -> None:
    c.index["safetensors_header"] = header if isinstance(header, str) else json.dumps(header)
    path = write(tmp_path, rebuild(c))
    out = tmp_path / "out.safetensors"
    with pytest.raises(FormatError, match=match) as info:
        mc.decompress_safetensors(path, out)
    assert type(info.value) is FormatError
    assert not out.exists()


def test_stored_header_with_wrong_shape(tmp_path: Path, from_safetensors):
    c, h = from_safetensors
    h["b.f32"]["shape"] = [2, 192]
    _decompress_fails(tmp_path, c, h, 'disagrees with tensor "b.f32"')


def test_stored_header_missing_a_tensor(tmp_path: Path, from_safetensors):
    c, h = from_safetensors
    last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])
    del h[last]
    _decompress_fails(tmp_path, c, h, "names 3 tensors, the file has 4")


def test_stored_header_not_json(tmp_path: Path, from_safetensors):
    c, _ = from_safetensors
    _decompress_fails(tmp_path, c, "{not json", "stored header")


def test_stored_header_naming_an_unknown_tensor(tmp_path: Path, from_safetensors):
    c, h = from_safetensors
    h["renamed"] = h.pop("b.f32")
    _decompress_fails(tmp_path, c, h, "renamed")


def test_stored_header_with_offsets_that_do_not_match_the_sizes(tmp_path: Path, from_safetensors):
    """Writing this header verbatim would give a safetensors file that no reader accepts."""
    c, h = from_safetensors
    order = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])
    first, second = order[0], order[1]
    begin, end = h[first]["data_offsets"]
    h[first]["data_offsets"] = [begin, end + 8]
    b2, e2 = h[second]["data_offsets"]
    h[second]["data_offsets"] = [b2 + 8, e2]
    _decompress_fails(tmp_path, c, h, "offsets")


def test_stored_header_with_non_string_metadata(tmp_path: Path, from_safetensors):
    c, h = from_safetensors
    h["__metadata__"] = {"m": 1}
    _decompress_fails(tmp_path, c, h, "metadata")


# --------------------------------------------------------------------------------------------
# Malformed safetensors inputs


@pytest.fixture
def st_file(tmp_path: Path, good_tensors) -> Path:
    path = tmp_path / "in.safetensors"
    safetensors.torch.save_file(good_tensors, str(path), metadata={"m": "1"})
    return path


def _st_parts(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _st_build(header: dict | bytes, data: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _compress_fails(tmp_path: Path, blob: bytes, match: str) -> None:
    src = tmp_path / "bad.safetensors"
    src.write_bytes(blob)
    dst = tmp_path / "out.mithril"
    with pytest.raises(FormatError, match=match) as info:
        mc.compress_safetensors(src, dst)
    assert type(info.value) is FormatError
    assert "bad.safetensors" in str(info.value)
    assert not dst.exists()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_safetensors_empty(tmp_path: Path):
    _compress_fails(tmp_path, b"", "empty")


def test_safetensors_shorter_than_the_length(tmp_path: Path):
    _compress_fails(tmp_path, b"\x10\0\0", "shorter than 8 bytes")


def test_safetensors_truncated(tmp_path: Path, st_file: Path):
    blob = st_file.read_bytes()
    (n,) = struct.unpack_from("<Q", blob)
    for cut in [9, 8 + n // 2, 8 + n - 1]:
        _compress_fails(tmp_path, blob[:cut], "header length")
    for cut in [8 + n + 1, len(blob) - 1, len(blob) - 100]:
        _compress_fails(tmp_path, blob[:cut], "cover")


@pytest.mark.parametrize("n", [100_000_001, 2**63, 2**64 - 1])
def test_safetensors_header_length_huge(tmp_path: Path, st_file: Path, n: int):
    blob = st_file.read_bytes()
    _compress_fails(tmp_path, struct.pack("<Q", n) + blob[8:], f"header length {n}")


@pytest.mark.parametrize(
    "text", [b"not json", b"[1, 2]", b'{"a": 1', b"\xff\xfe{}", b'{"a": {"dtype": "F32"}}']
)
def test_safetensors_bad_json(tmp_path: Path, text: bytes):
    _compress_fails(tmp_path, _st_build(text, b""), "not a valid safetensors file")


def test_safetensors_offsets_do_not_match_shape(tmp_path: Path, st_file: Path):
    header, data = _st_parts(st_file)
    header["ids"]["shape"] = [1, 511]
    _compress_fails(tmp_path, _st_build(header, data), 'tensor "ids": data_offsets do not match')


def test_safetensors_reversed_offsets(tmp_path: Path, st_file: Path):
    header, data = _st_parts(st_file)
    b, e = header["b.f32"]["data_offsets"]
    header["b.f32"]["data_offsets"] = [e, b]
    _compress_fails(tmp_path, _st_build(header, data), "data_offsets")


def test_safetensors_overlap_and_gap(tmp_path: Path, st_file: Path):
    header, data = _st_parts(st_file)
    h = copy.deepcopy(header)
    for k in h:
        if k != "__metadata__":
            b, e = h[k]["data_offsets"]
            if b > 0:
                h[k]["data_offsets"] = [b - 4, e - 4]
                break
    _compress_fails(tmp_path, _st_build(h, data), "gap or overlap")
    h = copy.deepcopy(header)
    for k in h:
        if k != "__metadata__":
            b, e = h[k]["data_offsets"]
            h[k]["data_offsets"] = [b + 4, e + 4]
    _compress_fails(tmp_path, _st_build(h, data + bytes(4)), "gap or overlap")


def test_safetensors_unknown_dtype(tmp_path: Path, st_file: Path):
    header, data = _st_parts(st_file)
    header["ids"]["dtype"] = "C64"
    _compress_fails(tmp_path, _st_build(header, data), 'unknown dtype "C64"')


def test_safetensors_shape_overflow(tmp_path: Path):
    header = {"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 0]}}
    _compress_fails(tmp_path, _st_build(header, b""), "overflows")


def test_safetensors_bad_metadata(tmp_path: Path, st_file: Path):
    header, data = _st_parts(st_file)
    header["__metadata__"] = {"m": 1}
    _compress_fails(tmp_path, _st_build(header, data), "__metadata__")


def test_safetensors_extra_data(tmp_path: Path, st_file: Path):
    _compress_fails(tmp_path, st_file.read_bytes() + b"\0" * 8, "cover")


def test_a_container_is_not_a_safetensors_file(tmp_path: Path, good_blob: bytes):
    _compress_fails(tmp_path, good_blob, "not a valid safetensors file")


def test_a_safetensors_file_is_not_a_container(tmp_path: Path, st_file: Path):
    with pytest.raises(FormatError, match="bad magic"):
        mc.load_file(st_file)
    with pytest.raises(FormatError, match="bad magic"):
        mc.decompress_safetensors(st_file, tmp_path / "x.safetensors")


# --------------------------------------------------------------------------------------------
# Missing files and bad arguments


def test_missing_file(tmp_path: Path):
    missing = tmp_path / "missing.mithril"
    calls: list[Callable[[], object]] = [
        lambda: mc.load_file(missing),
        lambda: mc.safe_open(missing),
        lambda: mc.inspect(missing),
        lambda: mc.verify(missing),
        lambda: mc.compress_safetensors(missing, tmp_path / "o.mithril"),
        lambda: mc.decompress_safetensors(missing, tmp_path / "o.safetensors"),
    ]
    for call in calls:
        with pytest.raises(FileNotFoundError, match=r"missing\.mithril"):
            call()
    assert os.listdir(tmp_path) == []


def test_directory_instead_of_a_file(tmp_path: Path):
    with pytest.raises(OSError):
        mc.load_file(tmp_path)


@pytest.mark.parametrize(
    "value",
    [[1.0, 2.0], 3.5, "tensor", None, {"a": 1}, np.array([1 + 2j]), np.array(["x"])],
    ids=["list", "float", "str", "none", "dict", "complex-np", "str-np"],
)
def test_compress_tensor_of_an_unsupported_object(value):
    with pytest.raises(ConfigError):
        mc.compress_tensor(value)


UNSUPPORTED_DTYPES = [
    torch.complex64,
    torch.complex128,
    *(getattr(torch, n) for n in ("complex32", "float8_e4m3fnuz") if hasattr(torch, n)),
]


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", UNSUPPORTED_DTYPES, ids=str)
def test_compress_tensor_of_an_unsupported_dtype(dtype):
    t = torch.zeros(3, dtype=dtype)
    with pytest.raises(ConfigError, match="not supported"):
        mc.compress_tensor(t)


def test_decompress_tensor_of_a_multi_tensor_blob(good_blob: bytes):
    with pytest.raises(ConfigError, match=r"not a compress_tensor\(\) blob: it holds 4 named"):
        mc.decompress_tensor(good_blob)
    with pytest.raises(ConfigError, match="holds 0"):
        mc.decompress_tensor(mc.save({}))
    with pytest.raises(ConfigError, match="holds 1 named"):
        mc.decompress_tensor(mc.save({"named": torch.ones(2)}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threads": 0}, "threads"),
        ({"threads": -2}, "threads"),
        ({"threads": 1.5}, "threads"),
        ({"threads": "2"}, "threads"),
        ({"threads": True}, "threads"),
        ({"chunk_bytes": 0}, "chunk_bytes"),
        ({"chunk_bytes": -4096}, "chunk_bytes"),
        ({"metadata": [("a", "b")]}, "metadata"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"metadata": {1: "a"}}, "metadata"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, kwargs: dict, match: str):
    path = tmp_path / "o.mithril"
    with pytest.raises(ConfigError, match=match):
        mc.save_file({"a": torch.ones(4)}, path, **kwargs)
    assert not path.exists()
    if "chunk_bytes" not in kwargs:
        with pytest.raises(ConfigError, match=match):
            mc.save({"a": torch.ones(4)}, **kwargs)


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_thread_counts_everywhere(tmp_path: Path, good_file: Path, threads: int):
    st = tmp_path / "a.safetensors"
    calls: list[Callable[[], object]] = [
        lambda: mc.compress_tensor(torch.ones(3), threads=threads),
        lambda: mc.decompress_tensor(mc.compress_tensor(torch.ones(3)), threads=threads),
        lambda: mc.load_file(good_file, threads=threads),
        lambda: mc.safe_open(good_file, threads=threads),
        lambda: mc.verify(good_file, threads=threads),
        lambda: mc.decompress_safetensors(good_file, st, threads=threads),
        lambda: mc.compress_safetensors(st, tmp_path / "b.mithril", threads=threads),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="threads"):
            call()
    with pytest.raises(ConfigError, match="chunk_bytes"):
        mc.compress_safetensors(st, tmp_path / "b.mithril", chunk_bytes=0)


def test_decompress_tensor_of_garbage():
    for blob in [b"", b"\0" * 100, b"MITHRIL\0" + b"\xff" * 60]:
        with pytest.raises(FormatError):
            mc.decompress_tensor(blob)


def test_errors_are_mithril_errors():
    assert issubclass(FormatError, MithrilError)
    assert issubclass(CorruptDataError, MithrilError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(mithril.TensorNotFoundError, KeyError)
    assert not issubclass(FormatError, CorruptDataError)


def test_header_struct_matches_the_format():
    assert HEADER.size == 48
    blob = mc.save({})
    magic, major, minor, flags, *_ = HEADER.unpack_from(blob)
    assert (magic, major, minor, flags) == (MAGIC, 1, 3, 0)  # minor 3: sub-pack deltas


@pytest.mark.parametrize("elements", [100, 1_500_000])  # one chunk (decoded in place), several
def test_native_read_into_refuses_zero_threads_and_decodes_on_one(elements: int) -> None:
    t = torch.randn(elements)
    reader = mithril._native.Reader.from_bytes(mc.compress_tensor(t))
    out = np.empty(t.numel() * 4, np.uint8)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        reader.read_into("", out, 0)
    reader.read_into("", out, 1)
    assert out.tobytes() == t.numpy().tobytes()
