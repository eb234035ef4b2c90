"""Demo: remove near-duplicates from the shared real text corpus and print the report.

Uses ../shared/data/corpus.parquet (32,023 documents, 232.6 MB of text) when it is there,
else the slice bundled in tests/data. Where the exact ground truth is beside the corpus, the
removal precision and recall against it are printed too.

    python benches/demo_dedup.py [--data DIR] [--bloom]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from mithril.dedup import dedup_parquet

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLED = REPO / "tests" / "data"


def truth_removed(data: Path, corpus: Path) -> set[int] | None:
    """Row numbers the exact answer removes (lowest id kept per connected component)."""
    pairs_file = (
        data / "corpus_near_duplicate_pairs.parquet"
        if corpus.name == "corpus.parquet"
        else data / "corpus_slice_pairs.parquet"
    )
    if not pairs_file.exists():
        return None
    ids = pq.read_table(corpus, columns=["id"]).column("id").to_pylist()
    row_of = {d: r for r, d in enumerate(ids)}
    parent = list(range(len(ids)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = pq.read_table(pairs_file).to_pydict()
    for a, b in zip(pairs["a"], pairs["b"], strict=True):
        ra, rb = find(row_of[a]), find(row_of[b])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {r for r in range(len(ids)) if find(r) != r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a directory with corpus(_slice).parquet")
    ap.add_argument("--bloom", action="store_true", help="one-pass LSHBloom instead")
    args = ap.parse_args()
    if args.data is not None:
        data = args.data
        corpus = data / "corpus.parquet"
        if not corpus.exists():
            corpus = data / "corpus_slice.parquet"
    elif (SHARED / "corpus.parquet").exists():
        data, corpus = SHARED, SHARED / "corpus.parquet"
    else:
        data, corpus = BUNDLED, BUNDLED / "corpus_slice.parquet"
    print(f"\n== Near-duplicate removal: {corpus} (word 5-grams, Jaccard >= 0.8) ==")
    with tempfile.TemporaryDirectory() as out:
        # The ground truth's shingles are plain lowercase words, without NFC composition.
        report = dedup_parquet(
            corpus, out, nfc=False, bloom=args.bloom, emit_clusters=not args.bloom
        )
        print(report.format_table())
        truth = truth_removed(data, corpus)
        if truth is not None:
            removed = set(report.removed_ids.tolist())
            hit = len(removed & truth)
            print(
                f"against the exact answer: precision {hit / max(len(removed), 1):.4f}, "
                f"recall {hit / max(len(truth), 1):.4f} ({len(truth):,} to remove)"
            )


if __name__ == "__main__":
    main()
