"""Bit-exact round trips through mithril.checkpoint: every dtype, odd shapes and layouts,
special float values, real weights, the safetensors-style API and safetensors interop."""

from __future__ import annotations

import filecmp
import itertools
import os
from pathlib import Path

import mithril
import mithril.checkpoint as mc
import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import assert_same_tensor, parse, raw_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------------------------
# dtypes

FLOAT_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    *(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)),
]
INT_DTYPES = [
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    *(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)),
]
ALL_DTYPES = [torch.bool, *INT_DTYPES, *FLOAT_DTYPES]

# The safetensors name mithril records for each dtype.
DTYPE_NAMES = {
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
for _attr, _name in (
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
):
    if hasattr(torch, _attr):
        DTYPE_NAMES[getattr(torch, _attr)] = _name


def _id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns of ``dtype`` (NaNs, infinities and subnormals included);
    bools are 0/1."""
    rng = np.random.default_rng(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, size=shape).astype(np.bool_))
    buf = bytearray(rng.bytes(n * itemsize))
    return (
        torch.frombuffer(buf, dtype=dtype, count=n).reshape(shape)
        if n
        else torch.empty(shape, dtype=dtype)
    )


def weight_like(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Trained-weight-like values: small normals in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 0.05).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


SHAPES = [(), (0,), (3, 0, 2), (1,), (7, 13), (5, 4, 3, 2), (5003,)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_id)
def test_every_dtype_and_shape_round_trips_through_a_file(tmp_path: Path, dtype: torch.dtype):
    tensors: dict[str, torch.Tensor] = {}
    for i, shape in enumerate(SHAPES):
        tensors[f"random.{i}"] = random_tensor(dtype, shape, seed=i)
        tensors[f"weights.{i}"] = weight_like(dtype, shape, seed=i)
    path = tmp_path / "t.mithril"
    mc.save_file(tensors, path)
    loaded = mc.load_file(path)
    assert list(loaded) == list(tensors)
    for name, want in tensors.items():
        assert_same_tensor(loaded[name], want)
    info = mc.inspect(path)
    for name, want in tensors.items():
        assert info["tensors"][name]["dtype"] == DTYPE_NAMES[dtype]
        assert info["tensors"][name]["shape"] == list(want.shape)
        assert info["tensors"][name]["raw_size"] == want.numel() * want.element_size()


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_id)
def test_zero_dim_and_empty_tensors_in_memory(dtype: torch.dtype):
    for shape in [(), (0,), (3, 0, 2), (0, 0)]:
        t = weight_like(dtype, shape, seed=3)
        assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(t)), t)
    blob = mc.save(
        {"scalar": torch.ones((), dtype=dtype), "empty": torch.empty(3, 0, 2, dtype=dtype)}
    )
    loaded = mc.load(blob)
    assert loaded["scalar"].shape == () and loaded["scalar"].dtype == dtype
    assert loaded["empty"].shape == (3, 0, 2) and loaded["empty"].dtype == dtype


def test_empty_tensors_have_no_chunks(tmp_path: Path):
    path = tmp_path / "e.mithril"
    mc.save_file({"a": torch.empty(0), "b": torch.empty(3, 0, 2, dtype=torch.bfloat16)}, path)
    info = mc.inspect(path)
    for name in ("a", "b"):
        assert info["tensors"][name]["chunks"] == 0
        assert info["tensors"][name]["raw_size"] == 0
    assert mc.verify(path) == 0
    assert mc.load_file(path)["b"].shape == (3, 0, 2)


def test_empty_state_dict(tmp_path: Path):
    path = tmp_path / "nothing.mithril"
    mc.save_file({}, path)
    assert mc.load_file(path) == {}
    assert mc.load(mc.save({})) == {}
    assert mc.verify(path) == 0
    info = mc.inspect(path)
    assert info["tensors"] == {} and info["raw_size"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64, torch.bool], ids=_id)
def test_non_contiguous_inputs(tmp_path: Path, dtype: torch.dtype):
    base = weight_like(dtype, (64, 48), seed=5)
    cases = {
        "transposed": base.t(),
        "step_slice": base[::3, 1::2],
        "offset_slice": base[5:40, 7:],
        "expanded": base[0].expand(10, 48),
        "permuted_3d": weight_like(dtype, (4, 5, 6), seed=6).permute(2, 0, 1),
        "column": base[:, 5],
    }
    for t in cases.values():
        if t.numel() > 1 and t.dim() > 0:
            assert not t.is_contiguous() or t.storage_offset() != 0
    path = tmp_path / "nc.mithril"
    mc.save_file(cases, path)
    loaded = mc.load_file(path)
    for name, want in cases.items():
        assert loaded[name].is_contiguous()
        assert_same_tensor(loaded[name], want)
        assert torch.equal(loaded[name], want)
    # The inputs are not modified.
    assert_same_tensor(cases["transposed"].t(), base)


def test_tensor_that_requires_grad(tmp_path: Path):
    w = torch.randn(16, 16, requires_grad=True)
    y = w * 2
    path = tmp_path / "g.mithril"
    mc.save_file({"w": w, "y": y}, path)
    loaded = mc.load_file(path)
    assert_same_tensor(loaded["w"], w.detach())
    assert_same_tensor(loaded["y"], y.detach())


# Special values, as bit patterns: NaNs with payloads and signs, signalling NaNs, +-0, +-inf,
# smallest and largest subnormals, largest finite.
SPECIAL_BITS = {
    torch.float32: (
        torch.int32,
        [
            0x7FC00000,
            0x7FC01234,
            0xFFC00001,
            0x7F800001,
            0xFFBFFFFF,
            0x7FFFFFFF,
            0x00000000,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x00000001,
            0x807FFFFF,
            0x007FFFFF,
            0x7F7FFFFF,
            0xFF7FFFFF,
            0x00800000,
        ],
    ),
    torch.float16: (
        torch.int16,
        [
            0x7E00,
            0x7E01,
            0xFE3F,
            0x7C01,
            0xFDFF,
            0x0000,
            0x8000,
            0x7C00,
            0xFC00,
            0x0001,
            0x83FF,
            0x03FF,
            0x7BFF,
            0xFBFF,
            0x0400,
        ],
    ),
    torch.bfloat16: (
        torch.int16,
        [
            0x7FC0,
            0x7FC1,
            0xFFC1,
            0x7F81,
            0xFFFF,
            0x0000,
            0x8000,
            0x7F80,
            0xFF80,
            0x0001,
            0x807F,
            0x007F,
            0x7F7F,
            0xFF7F,
            0x0080,
        ],
    ),
    torch.float64: (
        torch.int64,
        [
            0x7FF8000000000000,
            0x7FF8000000001234,
            -0x7FFFFFFFFFFFFFF,
            0x7FF0000000000001,
            0,
            -(1 << 63),
            0x7FF0000000000000,
            -0x10000000000000,
            1,
            0x000FFFFFFFFFFFFF,
        ],
    ),
}


def _from_bits(dtype: torch.dtype, bits: list[int]) -> torch.Tensor:
    int_dtype = SPECIAL_BITS[dtype][0]
    width = torch.empty((), dtype=int_dtype).element_size() * 8
    signed = [b - (1 << width) if b >= 1 << (width - 1) else b for b in bits]
    return torch.tensor(signed, dtype=int_dtype).view(dtype)


@pytest.mark.parametrize("dtype", list(SPECIAL_BITS), ids=_id)
def test_special_float_values_keep_their_bits(tmp_path: Path, dtype: torch.dtype):
    specials = _from_bits(dtype, SPECIAL_BITS[dtype][1])
    assert torch.isnan(specials.float()).any() and torch.isinf(specials.float()).any()
    normal = weight_like(dtype, (4096,), seed=9)
    mixed = normal.clone()
    mixed[:: 4096 // len(specials)][: len(specials)] = specials
    tensors = {
        "specials": specials,
        # Specials scattered through ordinary weights (entropy-coded path).
        "mixed": mixed,
        # Only one value: the constant-head path.
        "all_one_nan": specials[1:2].repeat(3000),
        "all_neg_zero": torch.full((2000,), -0.0, dtype=dtype),
        "subnormals_only": _from_bits(dtype, SPECIAL_BITS[dtype][1]).repeat(300),
    }
    path = tmp_path / "s.mithril"
    mc.save_file(tensors, path, chunk_bytes=1024)
    loaded = mc.load_file(path)
    for name, want in tensors.items():
        assert_same_tensor(loaded[name], want)
    got = mc.decompress_tensor(mc.compress_tensor(specials))
    assert_same_tensor(got, specials)
    # Signed zero survives as such, not just as an equal value.
    zeros = got.float()[~torch.isnan(got.float())]
    assert (torch.signbit(zeros) & (zeros == 0)).any()


@pytest.mark.parametrize("dtype", [d for d in FLOAT_DTYPES if d.itemsize == 1], ids=_id)
def test_fp8_every_bit_pattern(dtype: torch.dtype):
    every = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(every)), every)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_id)
def test_every_16_bit_pattern(dtype: torch.dtype):
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    perm = every[torch.randperm(every.numel(), generator=torch.Generator().manual_seed(1))]
    for t in (every, perm):
        assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(t)), t)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int32, torch.uint8], ids=_id
)
def test_many_chunks(tmp_path: Path, dtype: torch.dtype):
    big = weight_like(dtype, (301, 257), seed=11)  # not a multiple of the chunk size
    rnd = random_tensor(dtype, (20_011,), seed=12)
    path = tmp_path / "chunks.mithril"
    calls: list[tuple[int, int]] = []
    mc.save_file(
        {"big": big, "rnd": rnd}, path, chunk_bytes=4096, progress=lambda d, t: calls.append((d, t))
    )
    info = mc.inspect(path)
    for name, t in (("big", big), ("rnd", rnd)):
        nbytes = t.numel() * t.element_size()
        assert info["tensors"][name]["chunks"] == -(-nbytes // 4096)
    loaded = mc.load_file(path)
    assert_same_tensor(loaded["big"], big)
    assert_same_tensor(loaded["rnd"], rnd)
    assert mc.verify(path) == info["tensors"]["big"]["chunks"] + info["tensors"]["rnd"]["chunks"]
    # Progress reports raw bytes, monotonically, ending at the total.
    total = len(raw_bytes(big)) + len(raw_bytes(rnd))
    assert calls and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    assert all(t == total for _, t in calls)


def test_chunk_size_not_a_multiple_of_the_element(tmp_path: Path):
    t = weight_like(torch.float32, (10_000,), seed=2)
    path = tmp_path / "odd.mithril"
    mc.save_file({"t": t, "d": t.double()}, path, chunk_bytes=4097)
    assert_same_tensor(mc.load_file(path)["t"], t)
    assert_same_tensor(mc.load_file(path)["d"], t.double())
    chunks = parse(path.read_bytes()).tensor("t")["chunks"]
    assert len(chunks) > 1
    assert all(c["raw_length"] % 4 == 0 for c in chunks)


NUMPY_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.uint32,
    np.int32,
    np.uint64,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_inputs_round_trip_as_numpy(tmp_path: Path, dtype):
    rng = np.random.default_rng(4)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        base = rng.integers(0, 2, size=(40, 30)).astype(np.bool_)
    else:
        base = np.frombuffer(rng.bytes(40 * 30 * dt.itemsize), dtype=dt).reshape(40, 30)
    arrays = {
        "plain": base,
        "transposed": base.T,
        "strided": base[::3, ::-2],
        "scalar": np.array(base.reshape(-1)[7]),
        "empty": np.empty((3, 0, 2), dtype=dt),
        "fortran": np.asfortranarray(base),
    }
    if dt.itemsize > 1:
        arrays["big_endian"] = base.astype(dt.newbyteorder(">"))
    path = tmp_path / "np.mithril"
    mc.save_file(arrays, path)
    loaded = mc.load_file(path, framework="np")
    assert list(loaded) == list(arrays)
    for name, want in arrays.items():
        got = loaded[name]
        assert isinstance(got, np.ndarray), name
        assert got.dtype == dt, name
        assert got.shape == want.shape, name
        native = np.ascontiguousarray(want.astype(dt))
        assert got.tobytes() == native.tobytes(), name
    # The same arrays come back as torch tensors by default, with the same bytes.
    as_torch = mc.load_file(path)
    assert bytes(as_torch["plain"].reshape(-1).view(torch.uint8).numpy()) == base.tobytes()
    # And in memory.
    blob = mc.save({"plain": base})
    assert mc.load(blob, framework="np")["plain"].tobytes() == base.tobytes()
    assert mc.decompress_tensor(mc.compress_tensor(base.T), framework="np").tobytes() == (
        np.ascontiguousarray(base.T).tobytes()
    )


def test_numpy_framework_refuses_bf16(tmp_path: Path):
    path = tmp_path / "bf.mithril"
    mc.save_file({"w": torch.ones(3, dtype=torch.bfloat16)}, path)
    with pytest.raises(mithril.ConfigError, match="BF16"):
        mc.load_file(path, framework="np")
    with pytest.raises(mithril.ConfigError, match="framework"):
        mc.load_file(path, framework="jax")


# --------------------------------------------------------------------------------------------
# Real weights


@pytest.fixture(scope="module")
def minilm_as(minilm_tensors):
    def convert(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {
            k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
            for k, v in minilm_tensors.items()
        }

    return convert


@pytest.mark.parametrize(("dtype", "bar"), [(torch.bfloat16, 0.663), (torch.float32, 0.8193)])
def test_minilm_weights_round_trip_and_compress(tmp_path: Path, minilm_as, dtype, bar):
    tensors = minilm_as(dtype)
    raw = sum(t.numel() * t.element_size() for t in tensors.values())
    path = tmp_path / "minilm.mithril"
    mc.save_file(tensors, path)
    size = path.stat().st_size
    assert size <= bar * raw, f"{dtype}: {size / raw:.4%} of raw, bar {bar:.2%}"
    loaded = mc.load_file(path)
    assert list(loaded) == list(tensors)
    for name, want in tensors.items():
        assert_same_tensor(loaded[name], want)
    info = mc.inspect(path)
    assert info["raw_size"] == raw
    assert info["file_size"] == size
    assert info["ratio"] == pytest.approx(size / raw)
    assert "float" in info["tensors"]["embeddings.word_embeddings.weight"]["encodings"]


# --------------------------------------------------------------------------------------------
# The API


def test_compress_tensor_round_trip(small_state_dict):
    for t in small_state_dict.values():
        blob = mc.compress_tensor(t)
        assert isinstance(blob, bytes)
        assert_same_tensor(mc.decompress_tensor(blob), t)
        assert_same_tensor(mc.decompress_tensor(blob, threads=1), t)
    w = small_state_dict["ffn.weight"]
    assert len(mc.compress_tensor(w)) < w.numel() * w.element_size()


def test_blobs_decode_from_any_buffer(small_state_dict):
    """bytes and bytearray are read in place; a memoryview or numpy array is copied once.
    The reader keeps the caller's bytes alive: dropping them first changes nothing."""
    t = small_state_dict["ffn.weight"]
    blob = mc.compress_tensor(t)
    views = [blob, bytearray(blob), memoryview(blob), np.frombuffer(blob, dtype=np.uint8)]
    for data in views:
        assert_same_tensor(mc.decompress_tensor(data, threads=1), t)
    saved = mc.save({"w": t})
    for data in [bytearray(saved), memoryview(saved)]:
        assert_same_tensor(mc.load(data)["w"], t)
    f = mc.safe_open._from_reader(mithril._native.Reader.from_bytes(bytes(saved)), "pt", "cpu")
    assert_same_tensor(f.get_tensor("w"), t)


def test_compress_tensor_is_deterministic(small_state_dict):
    for t in small_state_dict.values():
        assert mc.compress_tensor(t) == mc.compress_tensor(t, threads=1)


def test_compress_tensor_from_many_python_threads(small_state_dict):
    """A one-chunk tensor is encoded on the calling thread with the GIL released, with that
    thread's scratch buffers and zstd context: concurrent callers get what one caller gets."""
    from concurrent.futures import ThreadPoolExecutor

    tensors = [t for t in small_state_dict.values() for _ in range(8)]
    want = [mc.compress_tensor(t, threads=1) for t in tensors]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: mc.compress_tensor(t, threads=1), tensors))
        back = list(pool.map(lambda b: mc.decompress_tensor(b, threads=1), got))
    assert got == want
    for t, b in zip(tensors, back, strict=True):
        assert_same_tensor(b, t)


# --------------------------------------------------------------------------------------------
# Recycled decode memory: tensors of 1 MiB or more are decoded into memory that returns to a
# bounded pool when they are garbage, and is handed to a later decode of a similar size.

POOLED_SHAPE = (512, 1024)  # 2 MiB of fp32, over the pooling threshold


def test_the_pooling_threshold_is_what_these_tests_assume():
    assert mithril._native.POOLED_FROM <= 512 * 1024 * 4 // 2


def test_freed_decode_memory_is_reused_exactly_and_can_be_released():
    mc.release_memory()
    blobs = [mc.compress_tensor(torch.full(POOLED_SHAPE, v)) for v in (1.5, -3.0)]
    t = mc.decompress_tensor(blobs[0])
    ptr = t.data_ptr()
    del t
    assert mithril._native.kept_memory_bytes() >= 2 << 20
    u = mc.decompress_tensor(blobs[1])
    assert u.data_ptr() == ptr
    assert torch.equal(u, torch.full(POOLED_SHAPE, -3.0))
    del u
    assert mc.release_memory() >= 2 << 20
    assert mc.release_memory() == 0
    assert mithril._native.kept_memory_bytes() == 0


def test_a_view_keeps_its_memory_while_others_are_decoded():
    """A view that outlives its tensor holds the memory: later decodes of the same size,
    which recycle freed memory, must not be given it."""
    blob = mc.compress_tensor(torch.full(POOLED_SHAPE, 1.5))
    t = mc.decompress_tensor(blob)
    view, array = t[3:5], mc.decompress_tensor(blob, framework="np")[7]
    ptr = t.data_ptr()
    del t
    blobs = [mc.compress_tensor(torch.full(POOLED_SHAPE, i)) for i in range(4)]
    others = [mc.decompress_tensor(b) for b in blobs]
    assert all(o.data_ptr() != ptr for o in others)
    assert torch.equal(view, torch.full((2, 1024), 1.5))
    assert np.array_equal(array, np.full(1024, 1.5, dtype=np.float32))
    assert array.flags.writeable


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32])
def test_recycled_memory_is_overwritten_in_full(dtype: torch.dtype):
    """Recycled memory still holds the bytes of the tensor decoded into it before, so every
    decoder must write every byte: zeros (constant chunks), random bits (raw chunks),
    weights, and a delta against a base all decode exactly into memory full of others."""
    gen = torch.Generator().manual_seed(7)
    n = POOLED_SHAPE[0] * POOLED_SHAPE[1]
    noise = torch.randint(-(2**31), 2**31 - 1, (n,), generator=gen, dtype=torch.int32)
    weights = (torch.randn(n, generator=gen) * 0.02).to(dtype)
    step = weights + (torch.randn(n, generator=gen) * 1e-4).to(dtype)
    zeros = torch.zeros(n, dtype=dtype)
    random_bits = noise.view(torch.uint8)[: n * weights.element_size()].view(dtype)
    for target in (zeros, random_bits, weights):
        mc.release_memory()
        del_me = mc.decompress_tensor(mc.compress_tensor(~zeros.view(torch.uint8)))
        del del_me  # the pool now holds memory full of 0xff bytes
        assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(target)), target)
    for coding in ("compact", "fast"):
        mc.release_memory()
        del_me = mc.decompress_tensor(mc.compress_tensor(random_bits))
        del del_me
        blob = mc.compress_tensor(step, base=weights, delta_coding=coding)
        assert_same_tensor(mc.decompress_tensor(blob, base=weights), step)


def test_a_failed_decode_into_recycled_memory_raises_and_the_next_one_works():
    t = torch.full(POOLED_SHAPE, 0.25) + torch.arange(POOLED_SHAPE[1]) * 1e-3
    blob = bytearray(mc.compress_tensor(t))
    good = bytes(blob)
    blob[len(blob) // 2] ^= 0x10
    for _ in range(3):
        with pytest.raises(mithril.CorruptDataError):
            mc.decompress_tensor(bytes(blob))
    assert_same_tensor(mc.decompress_tensor(good), t)


def test_save_load_bytes(small_state_dict):
    blob = mc.save(small_state_dict, {"step": "7"})
    assert blob[:8] == b"MITHRIL\0"
    loaded = mc.load(blob)
    assert list(loaded) == list(small_state_dict)
    for name, want in small_state_dict.items():
        assert_same_tensor(loaded[name], want)
    assert mc.load(bytearray(blob)).keys() == loaded.keys()


def test_save_bytes_equal_save_file(tmp_path: Path, small_state_dict):
    path = tmp_path / "s.mithril"
    mc.save_file(small_state_dict, path, metadata={"a": "b"})
    assert path.read_bytes() == mc.save(small_state_dict, {"a": "b"})


def test_metadata_round_trip(tmp_path: Path, small_state_dict):
    meta = {"format": "pt", "step": "12000", "unicode": "π ≈ 3.14 — ✓", "empty": "", "q": '"{}"'}
    path = tmp_path / "m.mithril"
    mc.save_file(small_state_dict, path, metadata=meta)
    with mc.safe_open(path, framework="pt") as f:
        assert f.metadata() == meta
    assert mc.inspect(path)["metadata"] == meta
    path2 = tmp_path / "n.mithril"
    mc.save_file(small_state_dict, path2)
    with mc.safe_open(path2) as f:
        assert f.metadata() is None
    with pytest.raises(mithril.ConfigError):
        mc.save_file(small_state_dict, path2, metadata={"step": 3})  # type: ignore[dict-item]


def test_safe_open_lazy_access(tmp_path: Path, small_state_dict):
    path = tmp_path / "lazy.mithril"
    mc.save_file(small_state_dict, path, metadata={"k": "v"})
    with mc.safe_open(path, framework="pt", device="cpu") as f:
        assert f.keys() == list(small_state_dict)
        assert list(f) == list(small_state_dict)
        assert f.metadata() == {"k": "v"}
        assert_same_tensor(f.get_tensor("ffn.weight"), small_state_dict["ffn.weight"])
        assert_same_tensor(f.get_tensor("position_ids"), small_state_dict["position_ids"])
        with pytest.raises(mithril.TensorNotFoundError, match="nope") as exc:
            f.get_tensor("nope")
        assert isinstance(exc.value, KeyError)
        assert isinstance(exc.value, mithril.MithrilError)
    with mc.safe_open(path, framework="np") as f:
        got = f.get_tensor("attn.query.bias")
        assert isinstance(got, np.ndarray)
        assert got.tobytes() == raw_bytes(small_state_dict["attn.query.bias"])


@pytest.mark.parametrize("threads", [1, 2, None])
def test_whole_file_load_decodes_tensors_concurrently_and_exactly(
    tmp_path: Path, minilm_tensors, threads
):
    """load_file decodes every tensor in one native call (tensors as well as their chunks
    in parallel); the result must not depend on the thread count."""
    state = {k: t.to(torch.bfloat16) for k, t in list(minilm_tensors.items())[:24]}
    state["ids"] = minilm_tensors["embeddings.position_ids"]
    path = tmp_path / "many.mithril"
    mc.save_file(state, path, chunk_bytes=64 << 10)
    got = mc.load_file(path, threads=threads)
    assert list(got) == list(state)
    for name, t in state.items():
        assert_same_tensor(got[name], t)
    reader = mithril._native.Reader(os.fspath(path))
    right = [np.empty(reader.info(name)[2], np.uint8) for name in state]
    with pytest.raises(mithril.TensorNotFoundError, match="nope"):
        reader.read_many_into([*state, "nope"], [*right, np.empty(1, np.uint8)], threads)
    with pytest.raises(mithril.MithrilError, match="ids"):
        reader.read_many_into(["ids"], [np.empty(3, np.uint8)], threads)
    with pytest.raises(ValueError, match="2 tensor names but 1 output buffers"):
        reader.read_many_into(["ids", "ids"], right[:1], threads)
    # Two tensors decoded concurrently into one memory: refused before anything is written.
    names = list(state)[:2]
    shared = np.zeros(max(reader.info(n)[2] for n in names) + 8, np.uint8)
    views = [shared[: reader.info(names[0])[2]], shared[8 : 8 + reader.info(names[1])[2]]]
    with pytest.raises(ValueError, match="output buffers overlap"):
        reader.read_many_into(names, views, threads)
    assert not shared.any()


def test_keys_keep_insertion_order(tmp_path: Path):
    names = ["zeta", "alpha", "m.2", "m.10", "m.1", "", "ünïcode", "with space", "a/b:c"]
    tensors = {n: torch.full((i + 1,), float(i)) for i, n in enumerate(names)}
    path = tmp_path / "order.mithril"
    mc.save_file(tensors, path)
    with mc.safe_open(path) as f:
        assert f.keys() == names
    loaded = mc.load_file(path)
    assert list(loaded) == names
    for n in names:
        assert_same_tensor(loaded[n], tensors[n])


def test_inspect_fields(tmp_path: Path, small_state_dict):
    path = tmp_path / "i.mithril"
    mc.save_file(small_state_dict, path, metadata={"x": "y"}, chunk_bytes=8192)
    info = mc.inspect(path)
    file_size = path.stat().st_size
    assert info["file_size"] == file_size
    assert info["metadata"] == {"x": "y"}
    assert info["from_safetensors"] is False
    assert list(info["tensors"]) == list(small_state_dict)
    raw_total = sum(t.numel() * t.element_size() for t in small_state_dict.values())
    assert info["raw_size"] == raw_total
    assert info["stored_size"] == sum(t["stored_size"] for t in info["tensors"].values())
    assert info["stored_size"] < file_size
    assert info["ratio"] == pytest.approx(file_size / raw_total)
    for name, t in info["tensors"].items():
        want = small_state_dict[name]
        assert t["shape"] == list(want.shape)
        assert t["raw_size"] == want.numel() * want.element_size()
        assert t["stored_size"] <= t["raw_size"]
        assert t["ratio"] == pytest.approx(t["stored_size"] / t["raw_size"])
        assert t["chunks"] == -(-t["raw_size"] // 8192)
        assert set(t["encodings"]) <= {"float", "zstd", "raw"}
    assert info["tensors"]["attn.query.weight"]["dtype"] == "BF16"
    assert info["tensors"]["ffn.weight"]["encodings"] == ["float"]
    assert info["tensors"]["position_ids"]["dtype"] == "I64"
    assert info["tensors"]["position_ids"]["encodings"] == ["zstd"]
    assert info["tensors"]["position_ids"]["ratio"] < 0.5


def test_incompressible_data_is_stored_raw(tmp_path: Path):
    noise = random_tensor(torch.uint8, (50_000,), seed=8)
    path = tmp_path / "noise.mithril"
    mc.save_file({"noise": noise}, path)
    t = mc.inspect(path)["tensors"]["noise"]
    assert t["encodings"] == ["raw"]
    assert t["stored_size"] == t["raw_size"]
    assert_same_tensor(mc.load_file(path)["noise"], noise)


def test_verify_counts_chunks(tmp_path: Path, small_state_dict):
    path = tmp_path / "v.mithril"
    mc.save_file(small_state_dict, path, chunk_bytes=4096)
    info = mc.inspect(path)
    n = sum(t["chunks"] for t in info["tensors"].values())
    assert n > len(small_state_dict)
    assert mc.verify(path) == n
    assert mc.verify(path, threads=1) == n


def test_pathlike_and_str_paths(tmp_path: Path, small_state_dict):
    p = tmp_path / "p.mithril"
    mc.save_file(small_state_dict, str(p))
    assert list(mc.load_file(p)) == list(small_state_dict)
    assert mc.verify(str(p)) > 0


def test_save_file_overwrites_an_existing_file(tmp_path: Path):
    path = tmp_path / "o.mithril"
    path.write_bytes(b"old contents")
    mc.save_file({"a": torch.arange(5)}, path)
    assert_same_tensor(mc.load_file(path)["a"], torch.arange(5))


def test_bad_arguments_are_config_errors():
    with pytest.raises(mithril.ConfigError, match="mapping"):
        mc.save([torch.ones(2)])  # type: ignore[arg-type]
    with pytest.raises(mithril.ConfigError, match="names must be strings"):
        mc.save({1: torch.ones(2)})  # type: ignore[dict-item]
    with pytest.raises(mithril.ConfigError, match="complex"):
        mc.save({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(mithril.ConfigError, match=r"sparse|dense"):
        mc.save({"s": torch.eye(3).to_sparse()})
    with pytest.raises(mithril.ConfigError, match="numpy dtype"):
        mc.save({"o": np.array(["a"], dtype=object)})


# --------------------------------------------------------------------------------------------
# safetensors interop


def test_safetensors_file_round_trips_byte_identical(tmp_path: Path, minilm_path: Path):
    packed = tmp_path / "m.mithril"
    back = tmp_path / "m.safetensors"
    size = mc.compress_safetensors(minilm_path, packed)
    assert size == packed.stat().st_size
    assert size < minilm_path.stat().st_size * 0.85
    assert mc.inspect(packed)["from_safetensors"] is True
    written = mc.decompress_safetensors(packed, back)
    assert written == minilm_path.stat().st_size
    assert filecmp.cmp(minilm_path, back, shallow=False)
    # The container reads directly too, with tensors equal to safetensors' view of them.
    want = safetensors.torch.load_file(str(minilm_path))
    with mc.safe_open(packed) as f:
        assert sorted(f.keys()) == sorted(want)
        name = "encoder.layer.3.output.dense.weight"
        assert_same_tensor(f.get_tensor(name), want[name])


def test_safetensors_with_metadata_round_trips_byte_identical(tmp_path: Path, small_state_dict):
    src = tmp_path / "src.safetensors"
    meta = {"format": "pt", "note": "fine-tuned, step 3"}
    tensors = dict(small_state_dict)
    tensors["fp16"] = weight_like(torch.float16, (33, 7), seed=1)
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.empty(0, 4)
    tensors["mask"] = torch.rand(10) > 0.5
    safetensors.torch.save_file(tensors, str(src), metadata=meta)
    packed = tmp_path / "c.mithril"
    back = tmp_path / "back.safetensors"
    mc.compress_safetensors(src, packed, chunk_bytes=4096, threads=1)
    with mc.safe_open(packed) as f:
        assert f.metadata() == meta
    assert mc.load_file(packed).keys() == tensors.keys()
    mc.decompress_safetensors(packed, back, threads=1)
    assert back.read_bytes() == src.read_bytes()
    loaded = safetensors.torch.load_file(str(back))
    for name, want in tensors.items():
        assert_same_tensor(loaded[name], want)


def test_mithril_container_converts_to_a_readable_safetensors_file(
    tmp_path: Path, small_state_dict
):
    tensors = dict(small_state_dict)
    tensors["scalar"] = torch.tensor(3, dtype=torch.int32)
    tensors["empty"] = torch.empty(3, 0, 2, dtype=torch.bfloat16)
    tensors["flags"] = torch.tensor([True, False, True])
    path = tmp_path / "c.mithril"
    out = tmp_path / "c.safetensors"
    mc.save_file(tensors, path, metadata={"framework": "pt"})
    assert mc.inspect(path)["from_safetensors"] is False
    calls: list[tuple[int, int]] = []
    written = mc.decompress_safetensors(path, out, progress=lambda d, t: calls.append((d, t)))
    assert written == out.stat().st_size
    raw_total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert calls and calls[-1] == (raw_total, raw_total)
    loaded = safetensors.torch.load_file(str(out))
    assert loaded.keys() == tensors.keys()
    for name, want in tensors.items():
        assert_same_tensor(loaded[name], want)
    with safetensors.safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"framework": "pt"}
    # And compressing that file again gives back the same tensors.
    again = tmp_path / "again.mithril"
    mc.compress_safetensors(out, again)
    for name, got in mc.load_file(again).items():
        assert_same_tensor(got, tensors[name])


# --------------------------------------------------------------------------------------------
# Property test

PROPERTY_DTYPES = [d for d in ALL_DTYPES if d != torch.bool]


def test_empty_tensors_with_any_strides_roundtrip(tmp_path: Path) -> None:
    """torch counts every empty tensor as contiguous, whatever its strides; one whose last
    stride is not 1 has no byte view, and was refused with a torch RuntimeError (found by
    the property test below)."""
    tensors = {
        "a": torch.empty_strided((0, 1), (1, 0), dtype=torch.float16),
        "b": torch.empty_strided((3, 0), (0, 0), dtype=torch.bfloat16),
    }
    for t in tensors.values():
        assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(t)), t)
    mc.save_file(tensors, tmp_path / "e.mithril")
    got = mc.load_file(tmp_path / "e.mithril")
    for k, t in tensors.items():
        assert_same_tensor(got[k], t)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    dtype=st.sampled_from(PROPERTY_DTYPES),
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    style=st.sampled_from(["random", "weights", "few_values"]),
)
def test_property_compress_tensor_is_bit_exact(dtype, shape, seed, style):
    shape = tuple(shape)
    if style == "random":
        t = random_tensor(dtype, shape, seed=seed)
    elif style == "weights":
        t = weight_like(dtype, shape, seed=seed % 10_000)
    else:
        rng = np.random.default_rng(seed)
        n = int(np.prod(shape, dtype=np.int64))
        itemsize = torch.empty((), dtype=dtype).element_size()
        pool = np.frombuffer(rng.bytes(3 * itemsize), dtype=np.uint8).reshape(3, itemsize)
        picks = pool[rng.integers(0, 3, size=n)] if n else np.empty((0, itemsize), np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(picks).reshape(-1)).view(dtype).reshape(shape)
    assert_same_tensor(mc.decompress_tensor(mc.compress_tensor(t)), t)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), dtype=st.sampled_from(PROPERTY_DTYPES))
def test_property_arbitrary_bytes_chunked(data, dtype):
    itemsize = torch.empty((), dtype=dtype).element_size()
    data = data[: len(data) // itemsize * itemsize]
    t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
    loaded = mc.load(mc.save({"t": t}))
    assert_same_tensor(loaded["t"], t)


# --------------------------------------------------------------------------------------------
# Atomic writes


def _temp_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".") and n.endswith(".tmp")]


def test_save_file_leaves_no_temp_files(tmp_path: Path, small_state_dict):
    path = tmp_path / "a.mithril"
    mc.save_file(small_state_dict, path)
    mc.save_file(small_state_dict, path)  # replacing an existing file
    assert sorted(os.listdir(tmp_path)) == ["a.mithril"]
    mc.decompress_safetensors(path, tmp_path / "a.safetensors")
    mc.compress_safetensors(tmp_path / "a.safetensors", tmp_path / "b.mithril")
    assert _temp_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["a.mithril", "a.safetensors", "b.mithril"]


def test_failed_save_with_unsupported_tensor_keeps_the_old_file(tmp_path: Path, small_state_dict):
    path = tmp_path / "keep.mithril"
    mc.save_file(small_state_dict, path)
    before = path.read_bytes()
    bad = dict(small_state_dict)
    bad["oops"] = [1, 2, 3]
    with pytest.raises(mithril.ConfigError, match="oops"):
        mc.save_file(bad, path)
    bad["oops"] = torch.zeros(2, dtype=torch.complex64)
    with pytest.raises(mithril.ConfigError, match="oops"):
        mc.save_file(bad, path)
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


class BoomError(Exception):
    pass


@pytest.mark.parametrize("fail_at", ["first", "last"])
def test_progress_callback_exception_aborts_and_keeps_the_old_file(
    tmp_path: Path, small_state_dict, fail_at
):
    path = tmp_path / "keep.mithril"
    mc.save_file({"old": torch.arange(10)}, path)
    before = path.read_bytes()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if fail_at == "first" or done == total:
            raise BoomError(f"stop at {done}/{total}")

    with pytest.raises(BoomError, match="stop at"):
        mc.save_file(small_state_dict, path, chunk_bytes=1024, threads=1, progress=progress)
    assert seen
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["keep.mithril"]

    # The same for the safetensors conversions.
    st_path = tmp_path / "x.safetensors"
    safetensors.torch.save_file(small_state_dict, str(st_path))
    with pytest.raises(BoomError):
        mc.compress_safetensors(st_path, path, chunk_bytes=1024, threads=1, progress=progress)
    assert path.read_bytes() == before
    st_before = st_path.read_bytes()
    with pytest.raises(BoomError):
        mc.decompress_safetensors(path, st_path, progress=progress)
    assert st_path.read_bytes() == st_before
    assert _temp_files(tmp_path) == []


def test_failed_save_to_a_missing_directory(tmp_path: Path, small_state_dict):
    with pytest.raises(FileNotFoundError):
        mc.save_file(small_state_dict, tmp_path / "no" / "such" / "dir.mithril")
    assert os.listdir(tmp_path) == []
