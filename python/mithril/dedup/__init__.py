"""Near-duplicate removal for training corpora, with the work done in Rust on all cores.

Texts are normalised and shingled (lowercase word 5-grams by default), signed with MinHash,
bucketed by LSH bands and, by default, every candidate pair is checked by exact Jaccard
similarity of its shingle sets, so nothing is removed on the strength of an estimate alone.
LSHBloom (``bloom=True``) replaces the band tables by one Bloom filter per band for a
one-pass, fixed-memory run.

    >>> from mithril.dedup import dedup_parquet
    >>> report = dedup_parquet(["corpus.parquet"], "deduped/", column="text", threshold=0.8)
    >>> print(report.format_table())

:func:`dedup_parquet_dask` runs the same kernels as tasks of a Dask cluster (one task per
parquet row group, band keys shuffled between workers), with identical results.

The parts are usable on their own: :class:`MinHasher` computes signatures and
:class:`LSHIndex` is an insert/query index in the style of datasketch's ``MinHashLSH``.
"""

from __future__ import annotations

from mithril.dedup._dask import dedup_parquet_dask
from mithril.dedup._lsh import LSHIndex, bloom_params, optimal_params
from mithril.dedup._minhash import MinHasher
from mithril.dedup._parquet import DedupReport, dedup_parquet

__all__ = [
    "MinHasher",
    "LSHIndex",
    "dedup_parquet",
    "dedup_parquet_dask",
    "DedupReport",
    "optimal_params",
    "bloom_params",
]
