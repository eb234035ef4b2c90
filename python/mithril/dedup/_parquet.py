"""Parquet corpus in, deduplicated parquet corpus out.

Batch mode (the default) reads the text column twice: pass 1 signs every document and keeps
only its band keys; pass 2 collects the exact shingle sets of the documents that share a band
with another one; candidates are then verified and clustered, and a last pass copies the kept
rows, all columns, to the output. Bloom mode decides each document as it streams past and
writes in the same pass. pyarrow reads and writes; Arrow arrays reach Rust without a copy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mithril import _native
from mithril._fsutil import atomic_path, fsync_dir, write_atomic
from mithril.dedup._lsh import UNVERIFIED_WEIGHTS, VERIFIED_WEIGHTS, bloom_params, optimal_params
from mithril.errors import ConfigError, FormatError

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], object]

REPORT_NAME = "report.json"
CLUSTERS_NAME = "clusters.parquet"


@dataclass
class DedupReport:
    """What a deduplication run read, found, wrote and how long each stage took."""

    inputs: list[str]
    outputs: list[str]
    documents_in: int
    documents_out: int
    removed: int
    clusters: int
    """Clusters of two or more documents (batch mode; 0 in bloom mode)."""
    bytes_in: int
    shingles: int
    empty_documents: int
    """Documents without a single token (empty, null, punctuation only): always kept."""
    null_documents: int
    candidate_documents: int
    candidate_pairs: int
    verified_pairs: int
    similar_pairs: int
    bands: int
    rows: int
    votes: int
    """Band hits that flag a document in bloom mode (1 otherwise)."""
    threshold: float
    verify: bool
    bloom: bool
    index_bytes: int
    """Band keys (batch) or Bloom filters (bloom) held for the whole corpus."""
    set_bytes: int
    """Shingle sets held for verification."""
    seconds: dict[str, float] = field(default_factory=dict)
    removed_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    """Global row numbers (inputs concatenated in order) of the removed documents."""

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (without ``removed_ids``)."""
        d = asdict(self)
        d.pop("removed_ids")
        return d

    def format_table(self) -> str:
        """A human-readable summary."""
        total = self.seconds.get("total", 0.0) or 1e-9
        mb = self.bytes_in / 1e6
        lines = [
            f"documents in      {self.documents_in:>12,}",
            f"documents out     {self.documents_out:>12,}",
            f"removed           {self.removed:>12,}  "
            f"({100 * self.removed / max(self.documents_in, 1):.2f} %)",
            f"clusters (>= 2)   {self.clusters:>12,}",
            f"text              {mb:>12,.1f} MB   {mb / total:,.1f} MB/s   "
            f"{self.documents_in / total:,.0f} docs/s",
            f"shingles          {self.shingles:>12,}",
            f"bands x rows      {self.bands:>9} x {self.rows}  (threshold {self.threshold}, "
            + (
                f"LSHBloom, {self.votes} band votes"
                if self.bloom
                else "verified"
                if self.verify
                else "unverified"
            )
            + ")",
            f"candidates        {self.candidate_documents:>12,} docs  "
            f"{self.candidate_pairs:,} pairs"
            f"  {self.verified_pairs:,} verified  {self.similar_pairs:,} similar",
            f"index             {self.index_bytes / 1e6:>12,.2f} MB  "
            f"({self.index_bytes / max(self.documents_in, 1):.1f} B/doc)   "
            f"sets {self.set_bytes / 1e6:,.1f} MB",
            "seconds           " + "  ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()),
        ]
        return "\n".join(lines)


_TEXT_TYPES = ("string", "large_string", "binary", "large_binary", "string_view", "binary_view")


@dataclass
class _Input:
    path: Path
    file: Any  # pyarrow.parquet.ParquetFile
    rows: int
    output: Path


def _open_inputs(inputs: Sequence[PathLike], column: str) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for p in inputs:
        path = Path(p)
        if path.is_dir():
            raise ConfigError(
                f"{path} is a directory; pass its parquet files (e.g. {path}/*.parquet)"
            )
        try:
            # Streamed reads (no pre-buffering of whole row groups) keep memory near one batch.
            f = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as e:
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file") from e
            raise FormatError(f"{path}: not a readable parquet file ({e})") from e
        schema = f.schema_arrow
        if column not in schema.names:
            raise ConfigError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
        ty = schema.field(column).type
        if str(ty) not in _TEXT_TYPES and not (
            pa.types.is_dictionary(ty) and str(ty.value_type) in _TEXT_TYPES
        ):
            raise ConfigError(f"{path}: column {column!r} holds {ty}, not strings or binary")
        files.append((path, f))
    return files


def _plan_outputs(files: list[Any], output: Path) -> list[_Input]:
    names = [p.name for p, _ in files]
    collide = len(set(names)) != len(names)
    out = []
    inputs_resolved = {p.resolve() for p, _ in files}
    if output.resolve() in inputs_resolved:
        raise ConfigError(f"output {output} is an input file; choose an output directory")
    for i, (path, f) in enumerate(files):
        name = f"{i:05d}-{path.name}" if collide else path.name
        dst = output / name
        if dst.resolve() in inputs_resolved:
            raise ConfigError(
                f"output {dst} would overwrite the input {path}; choose another output directory"
            )
        out.append(_Input(path, f, f.metadata.num_rows, dst))
    return out


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
        return now


def _batches(
    inp: _Input, columns: list[str] | None, batch_rows: int, clock: _Clock
) -> Iterator[Any]:
    import pyarrow as pa

    # Parallel column decoding buys nothing for one text column and raises peak memory.
    it = inp.file.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            clock.add("read", t)
            return
        except (pa.ArrowException, OSError) as e:
            raise FormatError(f"{inp.path}: cannot read ({e})") from e
        clock.add("read", t)
        yield batch


def _copy_kept(
    plan: list[_Input],
    keep: Callable[[Any, int], np.ndarray],
    batch_rows: int,
    clock: _Clock,
    tick: Callable[[int], None],
) -> None:
    """Read every input again, all columns, and write the rows ``keep(batch, first_row)``
    marks True (a boolean mask) to its output."""
    import pyarrow as pa

    offset = 0
    for inp in plan:

        def kept(inp: _Input = inp) -> Iterator[Any]:
            nonlocal offset
            for batch in _batches(inp, None, batch_rows, clock):
                mask = keep(batch, offset)
                offset += batch.num_rows
                t = time.perf_counter()
                rows = batch.filter(pa.array(mask))
                clock.add("write", t)
                tick(batch.num_rows)
                yield rows

        _write_timed(inp, kept(), clock)


#: Kept rows are gathered into row groups of about this much data before writing.
ROW_GROUP_BYTES = 4 << 20

_CODECS = {
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "LZ4": "lz4",
    "LZ4_RAW": "lz4",
    "ZSTD": "zstd",
    "UNCOMPRESSED": "none",
}


def input_compression(file: Any) -> dict[str, str] | str:
    """The input's codec per column (from its first row group), so the output keeps it;
    zstd when the input has no row groups or an unknown codec."""
    md = file.metadata
    if md.num_row_groups == 0:
        return "zstd"
    rg = md.row_group(0)
    codecs = {}
    for i in range(rg.num_columns):
        col = rg.column(i)
        codecs[col.path_in_schema] = _CODECS.get(str(col.compression).upper(), "zstd")
    return codecs


def _regrouped(batches: Iterator[Any], limit: int) -> Iterator[Any]:
    """Consecutive non-empty batches joined into tables of about ``limit`` bytes, so the
    output's row groups are not as small as the read batches."""
    import pyarrow as pa

    pending: list[Any] = []
    size = 0
    for b in batches:
        if not b.num_rows:
            continue
        pending.append(b)
        size += b.nbytes
        if size >= limit:
            yield pa.Table.from_batches(pending)
            pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _write_atomic_parquet(
    dst: Path, schema: Any, batches: Iterator[Any], compression: dict[str, str] | str = "zstd"
) -> None:
    import pyarrow.parquet as pq

    with atomic_path(dst) as tmp, pq.ParquetWriter(tmp, schema, compression=compression) as w:
        for table in _regrouped(batches, ROW_GROUP_BYTES):
            w.write_table(table, row_group_size=table.num_rows)


def dedup_parquet(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    column: str = "text",
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    tokens: Literal["word", "char"] = "word",
    lowercase: bool = True,
    nfc: bool = True,
    bands: tuple[int, int] | None = None,
    verify: bool = True,
    bloom: bool = False,
    bloom_fp_rate: float = 1e-3,
    bloom_capacity: int | None = None,
    bloom_votes: int | None = None,
    keep: Literal["lowest", "longest"] = "lowest",
    emit_clusters: bool = False,
    batch_rows: int = 256,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DedupReport:
    """Remove near-duplicate rows of parquet files; write the kept rows, all columns, to
    ``output/<input name>``, plus ``report.json`` and (``emit_clusters``) ``clusters.parquet``
    with ``(id, cluster)`` for every row: ``id`` is the row number across the inputs in order,
    ``cluster`` the lowest id of its cluster.

    Documents whose ``column`` texts have Jaccard similarity ≥ ``threshold`` over their shingle
    sets (see :class:`MinHasher` for ``ngram``/``tokens``/``lowercase``/``nfc``) are joined into
    clusters; one per cluster is kept (``keep="lowest"`` id, or ``"longest"`` text). With
    ``verify`` (default) every candidate pair is checked exactly; ``bands`` defaults to the
    choice that favours recall when verifying and balances errors when not. ``bloom=True``
    runs LSHBloom instead: one pass, memory fixed by ``bloom_capacity`` (default: the input
    row count) and ``bloom_fp_rate``; a document is removed when at least ``bloom_votes`` of its
    bands were seen before (default: :func:`bloom_params` of the threshold, or 1 when ``bands``
    is given), without verification.

    Null, empty and token-less texts are kept and never clustered. Binary columns are read as
    UTF-8, invalid bytes acting as separators. Existing outputs are refused unless
    ``overwrite``; an output never replaces an input. ``progress(done, total)`` is called
    with rows processed over all passes.
    """
    import pyarrow as pa

    start = time.perf_counter()
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not paths:
        raise ConfigError("no input files given")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if bloom and emit_clusters:
        raise ConfigError("bloom mode forms no clusters; emit_clusters needs the batch mode")
    if bloom and keep != "lowest":
        raise ConfigError("bloom mode always keeps the first document it sees (keep='lowest')")
    out_dir = Path(output)
    files = _open_inputs(paths, column)
    plan = _plan_outputs(files, out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is not a directory")
    extra = [out_dir / CLUSTERS_NAME] if emit_clusters else []
    existing = [p for p in [i.output for i in plan] + extra if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass overwrite=True (-f) to replace it")
    votes = 1
    if bloom:
        b, r, votes = bloom_params(threshold, num_perm)
        if bands is not None:
            b, r = bands
            votes = 1
        if bloom_votes is not None:
            votes = bloom_votes
    else:
        weights = VERIFIED_WEIGHTS if verify else UNVERIFIED_WEIGHTS
        b, r = bands if bands is not None else optimal_params(threshold, num_perm, weights)
    total_rows = sum(i.rows for i in plan)
    clock = _Clock()
    clock.seconds["read"] = 0.0
    passes = 1 if bloom else 3 if verify else 2
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total_rows * passes)

    shingle_args = (num_perm, ngram, seed, tokens, lowercase, nfc)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [str(i.output) for i in plan]

    if bloom:
        capacity = bloom_capacity if bloom_capacity is not None else max(total_rows, 1)
        engine = _native.BloomDeduper(*shingle_args, b, r, capacity, bloom_fp_rate, votes)
        removed_parts = []

        def unseen(batch: Any, first: int) -> np.ndarray:
            t = time.perf_counter()
            dup = engine.process(_text_array(batch, column), threads)
            clock.add("signatures+bloom", t)
            removed_parts.append(np.flatnonzero(dup) + first)
            return ~dup

        _copy_kept(plan, unseen, batch_rows, clock, tick)
        stats = engine.stats()
        removed_ids = np.concatenate(removed_parts) if removed_parts else np.zeros(0, np.int64)
        n_clusters = 0
        index_bytes = engine.index_bytes
    else:
        engine = _native.Deduper(*shingle_args, b, r, threshold, verify, keep)
        for inp in plan:
            for batch in _batches(inp, [column], batch_rows, clock):
                t = time.perf_counter()
                engine.add_batch(_text_array(batch, column), threads)
                clock.add("signatures", t)
                tick(batch.num_rows)
        t = time.perf_counter()
        engine.plan(threads)
        clock.add("candidates", t)
        if verify:
            offset = 0
            for inp in plan:
                for batch in _batches(inp, [column], batch_rows, clock):
                    if engine.needs_sets(offset, batch.num_rows):
                        t = time.perf_counter()
                        engine.add_sets(offset, _text_array(batch, column), threads)
                        clock.add("sets", t)
                    offset += batch.num_rows
                    tick(batch.num_rows)
        t = time.perf_counter()
        label, kept_of = engine.cluster()
        clock.add("verify+cluster", t)
        ids = np.arange(len(label), dtype=np.int64)
        keep_mask = kept_of == ids
        removed_ids = np.flatnonzero(~keep_mask).astype(np.int64)
        sizes = np.bincount(label, minlength=len(label)) if len(label) else np.zeros(0, np.int64)
        n_clusters = int(np.count_nonzero(sizes >= 2))
        _copy_kept(
            plan,
            lambda batch, first: keep_mask[first : first + batch.num_rows],
            batch_rows,
            clock,
            tick,
        )
        if emit_clusters:
            t = time.perf_counter()
            table = pa.table({"id": pa.array(ids), "cluster": pa.array(label)})
            _write_atomic_parquet(out_dir / CLUSTERS_NAME, table.schema, iter(table.to_batches()))
            clock.add("write", t)
        stats = engine.stats()
        index_bytes = engine.index_bytes
    fsync_dir(out_dir)
    clock.seconds["total"] = time.perf_counter() - start
    report = DedupReport(
        inputs=[str(i.path) for i in plan],
        outputs=outputs,
        documents_in=int(stats["documents"]),
        documents_out=int(stats["documents"]) - len(removed_ids),
        removed=len(removed_ids),
        clusters=n_clusters,
        bytes_in=int(stats["bytes"]),
        shingles=int(stats["shingles"]),
        empty_documents=int(stats["empty"]),
        null_documents=int(stats["nulls"]),
        candidate_documents=int(stats["candidate_docs"]),
        candidate_pairs=int(stats["candidate_pairs"]),
        verified_pairs=int(stats["verified_pairs"]),
        similar_pairs=int(stats["similar_pairs"]),
        bands=b,
        rows=r,
        votes=votes,
        threshold=threshold,
        verify=verify and not bloom,
        bloom=bloom,
        index_bytes=int(index_bytes),
        set_bytes=int(stats["set_bytes"]),
        seconds={k: round(v, 4) for k, v in clock.seconds.items()},
        removed_ids=removed_ids,
    )
    write_atomic(out_dir / REPORT_NAME, json.dumps(report.to_dict(), indent=2))
    return report


def _write_timed(inp: _Input, batches: Iterator[Any], clock: _Clock) -> None:
    """Write ``batches`` to ``inp.output`` atomically, with the input's schema and codecs.
    Encoding and writing count as "write"; the time spent producing the batches (reading,
    filtering) is counted by their producer."""
    t = time.perf_counter()
    produced = _Counting(batches)
    schema = inp.file.schema_arrow
    _write_atomic_parquet(inp.output, schema, produced, input_compression(inp.file))
    elapsed = time.perf_counter() - t
    clock.seconds["write"] = clock.seconds.get("write", 0.0) + max(elapsed - produced.seconds, 0.0)


class _Counting:
    """Iterator wrapper that measures the time spent inside ``next`` of the wrapped one."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it
        self.seconds = 0.0

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t


def _text_array(batch: Any, column: str) -> Any:
    col = batch.column(batch.schema.get_field_index(column))
    return col
