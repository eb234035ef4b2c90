"""Cut the bundled test/demo slice out of the shared corpus (run once; the slice is committed).

The slice keeps whole near-duplicate clusters (so its ground truth is exact: every pair with
Jaccard >= 0.8 among its documents is in the shared pair list) plus unrelated documents, and
stores the pairs among its documents beside it.

    python benches/make_dedup_slice.py [--data ../shared/data] [--out tests/data]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--clusters", type=int, default=120)
    ap.add_argument("--singletons", type=int, default=600)
    ap.add_argument("--max-bytes", type=int, default=20_000, help="longest document kept")
    args = ap.parse_args()
    rng = random.Random(7)
    corpus = pq.read_table(args.data / "corpus.parquet")
    lengths = pc.binary_length(corpus.column("text")).to_pylist()
    clusters = pq.read_table(args.data / "corpus_clusters.parquet").to_pydict()
    members: dict[int, list[int]] = {}
    for i, c in zip(clusters["id"], clusters["cluster"], strict=True):
        members.setdefault(c, []).append(i)
    small = [
        m
        for m in members.values()
        if 2 <= len(m) <= 12 and all(lengths[i] <= args.max_bytes for i in m)
    ]
    singles = [m[0] for m in members.values() if len(m) == 1 and lengths[m[0]] <= args.max_bytes]
    chosen = sorted(
        {i for m in rng.sample(small, args.clusters) for i in m}
        | set(rng.sample(singles, args.singletons))
    )
    table = corpus.take(pa.array(chosen))
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out / "corpus_slice.parquet", compression="zstd")
    pairs = pq.read_table(args.data / "corpus_near_duplicate_pairs.parquet")
    inside = pa.array(chosen)
    keep = pc.and_(pc.is_in(pairs.column("a"), inside), pc.is_in(pairs.column("b"), inside))
    pq.write_table(pairs.filter(keep), args.out / "corpus_slice_pairs.parquet")
    print(f"{len(chosen)} documents, {pc.sum(keep).as_py()} pairs")


if __name__ == "__main__":
    main()
