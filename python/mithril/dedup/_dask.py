"""The batch deduplication as tasks of a Dask cluster: the same Rust kernels, the engine's
scheduling, data movement and fault handling.

Stages (each a set of tasks; only small arrays travel between them):

1. *sign*, one task per parquet row group: band keys of every document, routed by key hash
   to ``P`` shuffle partitions as ``(band, key, doc)`` records.
2. *buckets*, one task per shuffle partition: records sorted by ``(band, key)``; runs of two
   or more documents are candidate buckets.
3. *sets* (verification only), one task per row group: fingerprint sets of the row group's
   candidate documents, sent to the bucket partitions that need them.
4. *verify*, one task per shuffle partition: exact Jaccard over each bucket's pairs; returns a
   spanning forest of the joined pairs.
5. *components*: forests merged pairwise in a tree of tasks; the last one labels every
   clustered document with its cluster's lowest id and picks the kept document.
6. *write*, one task per row group: the kept rows, every column, to ``<output>/<input
   stem>/part-<row group>.parquet`` (and ``clusters/`` with ``emit_clusters``).

Documents are numbered across the inputs in order, as in :func:`dedup_parquet`, and the
clusters and the kept rows are identical to its result for the same options.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mithril._fsutil import fsync_dir, write_atomic
from mithril.dedup._lsh import UNVERIFIED_WEIGHTS, VERIFIED_WEIGHTS, optimal_params
from mithril.dedup._parquet import (
    REPORT_NAME,
    DedupReport,
    PathLike,
    Progress,
    _open_inputs,
)
from mithril.errors import ConfigError

_MIX = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1
_BATCH_ROWS = 256


@dataclass(frozen=True)
class _Part:
    """One row group of one input: the unit of map-side work."""

    path: str
    row_group: int
    start: int
    rows: int
    output: str
    clusters: str


@dataclass(frozen=True)
class _Config:
    column: str
    num_perm: int
    ngram: int
    seed: int
    tokens: str
    lowercase: bool
    nfc: bool
    bands: int
    rows: int
    threshold: float
    verify: bool
    keep: str
    shuffle: int
    emit_clusters: bool

    def hasher(self) -> Any:
        from mithril import _native

        return _native.MinHasher(
            self.num_perm, self.ngram, self.seed, self.tokens, self.lowercase, self.nfc
        )


def _text_batches(part: _Part, column: str) -> Any:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(part.path, pre_buffer=False, buffer_size=1 << 20)
    for batch in f.iter_batches(
        batch_size=_BATCH_ROWS, row_groups=[part.row_group], columns=[column], use_threads=False
    ):
        yield batch.column(0)


def _sign(part: _Part, cfg: _Config) -> tuple[dict[str, int], np.ndarray, list[np.ndarray]]:
    """Band keys of a row group, split into ``cfg.shuffle`` record arrays of
    ``(band, key, doc)``; also the stats and the text lengths."""
    import pyarrow.compute as pc

    hasher = cfg.hasher()
    keys, counts, lengths = [], [], []
    stats = {"documents": 0, "bytes": 0, "shingles": 0, "empty": 0, "nulls": 0}
    for col in _text_batches(part, cfg.column):
        k, c = hasher.band_keys(col, cfg.bands, cfg.rows, 1)
        keys.append(k)
        counts.append(c)
        lens = pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False)
        lengths.append(lens.astype(np.int64))
        stats["nulls"] += col.null_count
    key = np.concatenate(keys) if keys else np.zeros((0, cfg.bands), np.uint64)
    count = np.concatenate(counts) if counts else np.zeros(0, np.uint64)
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if len(length) != part.rows:
        raise ConfigError(
            f"{part.path}: row group {part.row_group} read {len(length)} rows, "
            f"its metadata says {part.rows}"
        )
    stats["documents"] = part.rows
    stats["bytes"] = int(length.sum())
    stats["shingles"] = int(count.sum())
    stats["empty"] = int((count == 0).sum())
    docs = np.arange(part.start, part.start + part.rows, dtype=np.uint64)[count > 0]
    key = key[count > 0]
    routed: list[list[np.ndarray]] = [[] for _ in range(cfg.shuffle)]
    for band in range(cfg.bands):
        k = key[:, band]
        salt = np.uint64((band * _MIX) & _U64)
        dest = ((k ^ salt) % np.uint64(cfg.shuffle)).astype(np.int64)
        rec = np.empty((len(k), 3), np.uint64)
        rec[:, 0], rec[:, 1], rec[:, 2] = band, k, docs
        for j in range(cfg.shuffle):
            routed[j].append(rec[dest == j])
    pieces = [np.concatenate(r) if r else np.zeros((0, 3), np.uint64) for r in routed]
    return stats, length, pieces


def _buckets(*pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate buckets of one shuffle partition: (members, offsets, candidate docs)."""
    rec = np.concatenate(pieces) if pieces else np.zeros((0, 3), np.uint64)
    if len(rec) == 0:
        empty = np.zeros(0, np.uint64)
        return empty, np.zeros(1, np.uint64), empty
    order = np.lexsort((rec[:, 2], rec[:, 1], rec[:, 0]))
    rec = rec[order]
    same = (rec[1:, 0] == rec[:-1, 0]) & (rec[1:, 1] == rec[:-1, 1])
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    ends = np.append(starts[1:], len(rec))
    members, offsets, seen = [], [0], set()
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        bucket = rec[s:e, 2]
        sig = bucket.tobytes()
        if sig in seen:  # the same documents collide in several bands
            continue
        seen.add(sig)
        members.append(bucket)
        offsets.append(offsets[-1] + len(bucket))
    flat = np.concatenate(members) if members else np.zeros(0, np.uint64)
    return flat, np.array(offsets, np.uint64), np.unique(flat)


def _sets(part: _Part, cfg: _Config, *wanted: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Fingerprint sets of this row group's documents, one (ids, flat, offsets) per shuffle
    partition that needs some of them."""
    lo, hi = part.start, part.start + part.rows
    local = [w[(w >= lo) & (w < hi)] for w in wanted]
    need = np.unique(np.concatenate(local)) if local else np.zeros(0, np.uint64)
    sets: dict[int, np.ndarray] = {}
    if len(need):
        hasher = cfg.hasher()
        offset = part.start
        for col in _text_batches(part, cfg.column):
            n = len(col)
            rows = need[(need >= offset) & (need < offset + n)] - np.uint64(offset)
            if len(rows):
                flat, offs = hasher.fingerprint_sets(col, rows.tolist(), 1)
                for i, r in enumerate(rows.tolist()):
                    sets[offset + r] = flat[offs[i] : offs[i + 1]]
            offset += n
    out = []
    for ids in local:
        chosen = [sets[int(i)] for i in ids]
        offsets = np.zeros(len(chosen) + 1, np.uint64)
        offsets[1:] = np.cumsum([len(c) for c in chosen]) if chosen else []
        flat = np.concatenate(chosen) if chosen else np.zeros(0, np.uint32)
        out.append((ids.astype(np.uint64), flat.astype(np.uint32), offsets))
    return out


def _native_array(x: np.ndarray, dtype: type) -> np.ndarray:
    """Arrays that crossed the network can arrive unaligned or read-only views of a frame;
    the native kernels take aligned, C-contiguous memory."""
    return np.require(x, dtype=dtype, requirements=["C", "A"])


def _verify(
    buckets: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: _Config, *sets: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    from mithril import _native

    members, offsets, _ = buckets
    ids = [s[0] for s in sets]
    flats = [s[1] for s in sets]
    set_offsets = [np.zeros(1, np.uint64)]
    base = 0
    for s in sets:
        set_offsets.append(s[2][1:] + np.uint64(base))
        base += len(s[1])
    u64 = np.uint64
    return _native.verify_buckets(
        _native_array(members, u64),
        _native_array(offsets, u64),
        _native_array(np.concatenate(ids) if ids else np.zeros(0, u64), u64),
        _native_array(np.concatenate(flats) if flats else np.zeros(0, np.uint32), np.uint32),
        _native_array(np.concatenate(set_offsets), u64),
        cfg.threshold,
        cfg.verify,
    )


def _merge(*forests: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    from mithril import _native

    a = np.concatenate([f[0] for f in forests]) if forests else np.zeros(0, np.uint64)
    b = np.concatenate([f[1] for f in forests]) if forests else np.zeros(0, np.uint64)
    return _native.spanning_forest(_native_array(a, np.uint64), _native_array(b, np.uint64))


def _choose(
    forest: tuple[np.ndarray, np.ndarray], keep: str, *lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clustered ids, their cluster labels, removed ids)."""
    from mithril import _native

    ids, labels = _native.component_labels(*(_native_array(x, np.uint64) for x in forest))
    ids, labels = ids.astype(np.int64), labels.astype(np.int64)
    if keep == "lowest":
        kept = labels
    else:
        lens = np.concatenate(lengths)[ids]
        # Longest per cluster, ties to the lowest id: sort by (label, -length, id).
        order = np.lexsort((ids, -lens, labels))
        head = np.concatenate(([True], labels[order][1:] != labels[order][:-1]))
        best = dict(zip(labels[order][head].tolist(), ids[order][head].tolist(), strict=True))
        kept = np.array([best[x] for x in labels.tolist()], np.int64)
    removed = ids[kept != ids]
    return ids, labels, np.sort(removed)


def _write(part: _Part, cfg: _Config, chosen: tuple[np.ndarray, ...]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mithril.dedup._parquet import _write_atomic_parquet, input_compression

    ids, labels, removed = chosen
    lo, hi = part.start, part.start + part.rows
    mask = np.ones(part.rows, bool)
    inside = removed[(removed >= lo) & (removed < hi)]
    mask[inside - lo] = False
    f = pq.ParquetFile(part.path, pre_buffer=False, buffer_size=1 << 20)

    def kept() -> Any:
        offset = 0
        for batch in f.iter_batches(
            batch_size=_BATCH_ROWS, row_groups=[part.row_group], use_threads=False
        ):
            yield batch.filter(pa.array(mask[offset : offset + batch.num_rows]))
            offset += batch.num_rows

    Path(part.output).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic_parquet(Path(part.output), f.schema_arrow, kept(), input_compression(f))
    fsync_dir(Path(part.output).parent)
    if cfg.emit_clusters:
        label = np.arange(lo, hi, dtype=np.int64)
        sel = (ids >= lo) & (ids < hi)
        label[ids[sel] - lo] = labels[sel]
        table = pa.table({"id": np.arange(lo, hi, dtype=np.int64), "cluster": label})
        Path(part.clusters).parent.mkdir(parents=True, exist_ok=True)
        _write_atomic_parquet(Path(part.clusters), table.schema, iter(table.to_batches()))
        fsync_dir(Path(part.clusters).parent)
    return int(mask.sum())


def dedup_parquet_dask(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    client: Any = None,
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
    keep: Literal["lowest", "longest"] = "lowest",
    emit_clusters: bool = False,
    shuffle_partitions: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DedupReport:
    """:func:`~mithril.dedup.dedup_parquet` on a Dask cluster (``client``; by default a local
    cluster of one single-threaded worker process per core, closed afterwards).

    Every parquet row group is a task. The kept rows go to ``<output>/<input stem>/part-<row
    group>.parquet`` (and, with ``emit_clusters``, ``<output>/clusters/<input stem>-<row
    group>.parquet``), plus ``report.json``. The same options give the same clusters and kept
    rows as :func:`~mithril.dedup.dedup_parquet`. LSHBloom is inherently sequential and is
    not offered here. Needs ``dask[distributed]``.
    """
    try:
        from dask.distributed import Client, LocalCluster, wait
    except ImportError as e:  # pragma: no cover - exercised only without dask
        raise ConfigError("dedup_parquet_dask needs dask[distributed] installed") from e

    start = time.perf_counter()
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not paths:
        raise ConfigError("no input files given")
    if keep not in ("lowest", "longest"):
        raise ConfigError(f'keep must be "lowest" or "longest", not {keep!r}')
    out_dir = Path(output)
    files = _open_inputs(paths, column)
    resolved = {p.resolve() for p, _ in files}
    if out_dir.resolve() in resolved:
        raise ConfigError(f"output {out_dir} is an input file; choose an output directory")
    stems = [p.stem for p, _ in files]
    collide = len(set(stems)) != len(stems)
    parts: list[_Part] = []
    offset = 0
    for i, (path, f) in enumerate(files):
        stem = f"{i:05d}-{path.stem}" if collide else path.stem
        for rg in range(f.metadata.num_row_groups):
            rows = f.metadata.row_group(rg).num_rows
            parts.append(
                _Part(
                    str(path.resolve()),
                    rg,
                    offset,
                    rows,
                    str(out_dir / stem / f"part-{rg:05d}.parquet"),
                    str(out_dir / "clusters" / f"{stem}-{rg:05d}.parquet"),
                )
            )
            offset += rows
    targets = [Path(p.output) for p in parts] + (
        [Path(p.clusters) for p in parts] if emit_clusters else []
    )
    for t in targets:
        if t.resolve() in resolved:
            raise ConfigError(f"output {t} would overwrite an input")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass overwrite=True (-f) to replace it")
    weights = VERIFIED_WEIGHTS if verify else UNVERIFIED_WEIGHTS
    b, r = bands if bands is not None else optimal_params(threshold, num_perm, weights)
    if b < 1 or r < 1 or b * r > num_perm:
        raise ConfigError(
            f"bands x rows must be between 1 and num_perm ({num_perm}), got {b} x {r}"
        )
    own_cluster = client is None
    if own_cluster:
        cluster = LocalCluster(
            n_workers=os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    shuffle = shuffle_partitions or max(1, len(client.scheduler_info().get("workers", {})))
    cfg = _Config(
        column,
        num_perm,
        ngram,
        seed,
        tokens,
        lowercase,
        nfc,
        b,
        r,
        threshold,
        verify,
        keep,
        shuffle,
        emit_clusters,
    )
    cfg.hasher()  # refuse bad shingling options here, not inside a task
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    done = 0
    total = len(parts) * (3 if verify else 2)

    def stage(name: str, futures: list[Any]) -> None:
        nonlocal clock, done
        for _ in _as_completed(futures):
            done += 1
            if progress is not None:
                progress(done, total)
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now

    def _as_completed(futures: list[Any]) -> Any:
        from dask.distributed import as_completed

        return as_completed(futures) if futures else iter(())

    try:
        signed = [client.submit(_sign, p, cfg, pure=False) for p in parts]
        stage("signatures", signed)
        import operator

        stats = [client.submit(operator.getitem, s, 0) for s in signed]
        lengths = [client.submit(operator.getitem, s, 1) for s in signed]
        pieces = [[client.submit(_piece, s, j) for s in signed] for j in range(shuffle)]
        buckets = [client.submit(_buckets, *pieces[j]) for j in range(shuffle)]
        wait(buckets)
        seconds["candidates"] = round(time.perf_counter() - clock, 4)
        clock = time.perf_counter()
        if verify:
            wanted = [client.submit(operator.getitem, bk, 2) for bk in buckets]
            sets = [client.submit(_sets, p, cfg, *wanted, pure=False) for p in parts]
            stage("sets", sets)
            forests = [
                client.submit(
                    _verify, buckets[j], cfg, *[client.submit(operator.getitem, s, j) for s in sets]
                )
                for j in range(shuffle)
            ]
        else:
            forests = [client.submit(_verify, buckets[j], cfg) for j in range(shuffle)]
        counts = client.gather([client.submit(operator.getitem, f, 2) for f in forests])
        level = forests
        while len(level) > 1:
            level = [client.submit(_merge, *level[i : i + 2]) for i in range(0, len(level), 2)]
        root = client.submit(_merge, level[0]) if len(level) == 1 else client.submit(_merge)
        chosen = client.submit(_choose, root, keep, *lengths)
        wait(chosen)
        seconds["verify+cluster"] = round(time.perf_counter() - clock, 4)
        clock = time.perf_counter()
        written = [client.submit(_write, p, cfg, chosen, pure=False) for p in parts]
        stage("write", written)
        stat_list = client.gather(stats)
        ids, labels, removed = client.gather(chosen)
        candidates = len(np.unique(np.concatenate(client.gather(wanted)))) if verify else len(ids)
    finally:
        if own_cluster:
            client.close()
            cluster.close()
    fsync_dir(out_dir)
    seconds["total"] = round(time.perf_counter() - start, 4)
    agg = {k: sum(s[k] for s in stat_list) for k in stat_list[0]} if stat_list else {}
    n = sum(p.rows for p in parts)
    report = DedupReport(
        inputs=[str(p) for p, _ in files],
        outputs=[p.output for p in parts],
        documents_in=n,
        documents_out=n - len(removed),
        removed=len(removed),
        clusters=len(np.unique(labels)),
        bytes_in=int(agg.get("bytes", 0)),
        shingles=int(agg.get("shingles", 0)),
        empty_documents=int(agg.get("empty", 0)),
        null_documents=int(agg.get("nulls", 0)),
        candidate_documents=candidates,
        candidate_pairs=sum(c[0] for c in counts),
        verified_pairs=sum(c[1] for c in counts),
        similar_pairs=sum(c[2] for c in counts),
        bands=b,
        rows=r,
        votes=1,
        threshold=threshold,
        verify=verify,
        bloom=False,
        index_bytes=8 * b * n,
        set_bytes=0,
        seconds=seconds,
        removed_ids=removed.astype(np.int64),
    )
    write_atomic(out_dir / REPORT_NAME, json.dumps(report.to_dict(), indent=2))
    return report


def _piece(signed: tuple[Any, ...], j: int) -> np.ndarray:
    return signed[2][j]
