"""mithril.dedup: shingling, signatures, LSH, LSHBloom and the parquet pipeline.

The corpus checks use the bundled slice of the shared corpus (whole near-duplicate clusters
plus unrelated documents) and its exact ground truth (every pair with word-5-gram Jaccard
>= 0.8, computed exactly over the README's shingles).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mithril import ConfigError, FormatError
from mithril.dedup import LSHIndex, MinHasher, bloom_params, dedup_parquet, optimal_params

DATA = Path(__file__).resolve().parent / "data"
SLICE = DATA / "corpus_slice.parquet"
PAIRS = DATA / "corpus_slice_pairs.parquet"


# ---------------------------------------------------------------- references


def readme_shingles(text: str, n: int = 5) -> set[str]:
    """The ground truth's definition, in plain Python."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def exact_jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def truth_removed(ids: list[int], pairs: dict[str, list[int]]) -> set[int]:
    """Documents removed when each connected component of the pair graph keeps its lowest id."""
    parent = {i: i for i in ids}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs["a"], pairs["b"], strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i for i in ids if find(i) != i}


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    return pq.read_table(SLICE)


@pytest.fixture(scope="module")
def truth(corpus: pa.Table) -> set[int]:
    """Removed documents as row positions of the slice."""
    ids = corpus.column("id").to_pylist()
    row_of = {d: r for r, d in enumerate(ids)}
    pairs = pq.read_table(PAIRS).to_pydict()
    removed = truth_removed(ids, pairs)
    return {row_of[d] for d in removed}


# ---------------------------------------------------------------- MinHasher


def test_shingle_sets_match_the_reference_definition(corpus: pa.Table) -> None:
    h = MinHasher(nfc=False)
    texts = corpus.column("text").to_pylist()[:60]
    for a, b in itertools.pairwise(texts):
        ref_a, ref_b = readme_shingles(a), readme_shingles(b)
        assert len(h.shingles(a)) == len(ref_a)
        assert h.jaccard(a, b) == pytest.approx(exact_jaccard(ref_a, ref_b), abs=1e-12)


def test_short_and_empty_texts() -> None:
    h = MinHasher(nfc=False)
    assert len(h.shingles("only three words")) == 1
    assert h.jaccard("only three words", "Only, THREE words!") == 1.0
    assert h.jaccard("only three words", "only three") == 0.0
    assert len(h.shingles("")) == 0
    assert len(h.shingles("... !!! ---")) == 0
    sigs, counts = h.signatures_and_counts(["", None, "a b c d e f"])
    assert counts.tolist() == [0, 0, 2]
    assert (sigs[0] == 2**32 - 1).all() and (sigs[1] == 2**32 - 1).all()


def test_signatures_are_deterministic_and_seeded(corpus: pa.Table) -> None:
    texts = corpus.column("text").to_pylist()[:50]
    a = MinHasher(seed=3).signatures(texts)
    b = MinHasher(seed=3).signatures(texts, threads=1)
    c = MinHasher(seed=4).signatures(texts)
    assert a.dtype == np.uint64 and a.shape == (50, 128)
    assert (a == b).all()
    assert (a != c).mean() > 0.9
    assert a.max() < 2**32


def test_arrow_inputs_are_read_in_place_and_agree_with_lists(corpus: pa.Table) -> None:
    texts = corpus.column("text").to_pylist()[:40]
    texts[5] = None
    h = MinHasher()
    want = h.signatures(texts)
    for arr in (
        pa.array(texts, pa.string()),
        pa.array(texts, pa.large_string()),
        pa.array([t.encode() if t is not None else None for t in texts], pa.binary()),
        pa.chunked_array([texts[:17], texts[17:]], pa.large_string()),
        pa.array(texts, pa.string()).dictionary_encode(),
        pa.array(texts, pa.string_view()),
    ):
        assert (h.signatures(arr) == want).all(), arr.type
    # A sliced array starts at an offset into its buffers.
    sliced = pa.array(["x"] * 7 + texts, pa.string()).slice(7)
    assert (h.signatures(sliced) == want).all()
    assert h.signatures([]).shape == (0, 128)


def test_bad_texts_are_refused() -> None:
    h = MinHasher()
    with pytest.raises(ConfigError, match="text 1 is a int"):
        h.signatures(["fine", 3])
    with pytest.raises(ConfigError, match="not a single str"):
        h.signatures("a text, not a list")
    with pytest.raises(ConfigError, match="Arrow string or binary"):
        h.signatures(pa.array([1, 2, 3]))
    with pytest.raises(ConfigError, match="ngram"):
        MinHasher(ngram=0)
    with pytest.raises(ConfigError, match="num_perm"):
        MinHasher(num_perm=0)
    with pytest.raises(ConfigError, match="tokens"):
        MinHasher(tokens="sentence")  # type: ignore[arg-type]


def test_non_utf8_bytes_act_as_separators() -> None:
    h = MinHasher(ngram=2)
    bad = b"alpha\xff\xfebeta gamma"
    assert h.jaccard(bad, b"alpha beta gamma") == 1.0
    assert h.signatures(pa.array([bad], pa.binary())).shape == (1, 128)


def test_character_shingles_fold_whitespace() -> None:
    h = MinHasher(ngram=3, tokens="char")
    assert h.jaccard("The  cat\n\tsat", "the cat sat") == 1.0
    assert len(h.shingles("abcd")) == 2


def test_estimate_tracks_exact_jaccard_on_real_pairs(corpus: pa.Table) -> None:
    """The MinHash estimate on the slice's ground-truth pairs: unbiased within the sampling
    error of 128 permutations averaged over several seeds."""
    texts = corpus.column("text")
    row_of = {d: r for r, d in enumerate(corpus.column("id").to_pylist())}
    pairs = pq.read_table(PAIRS).to_pydict()
    a = np.array([row_of[x] for x in pairs["a"]])
    b = np.array([row_of[x] for x in pairs["b"]])
    exact = np.array(pairs["jaccard"])
    errors = []
    for seed in range(1, 9):
        s = MinHasher(nfc=False, seed=seed).signatures(texts)
        errors.append(((s[a] == s[b]).mean(axis=1) - exact).mean())
    assert abs(float(np.mean(errors))) < 0.01
    assert float(np.std(errors)) < 0.02


# ---------------------------------------------------------------- LSH


def test_optimal_params_follow_the_weights() -> None:
    assert optimal_params(0.8, 128) == (9, 13)
    assert optimal_params(0.8, 128, (0.05, 0.95)) == (16, 8)
    assert bloom_params(0.8, 128) == (25, 5, 12)
    with pytest.raises(ConfigError):
        optimal_params(1.5, 128)
    with pytest.raises(ConfigError):
        bloom_params(0.0, 128)


def test_lsh_index_finds_near_duplicates(corpus: pa.Table, truth: set[int]) -> None:
    texts = corpus.column("text")
    sigs = MinHasher().signatures(texts)
    index = LSHIndex(threshold=0.8, bands=(16, 8))
    index.insert_many([f"doc{i}" for i in range(len(sigs))], sigs)
    assert len(index) == len(sigs) and "doc0" in index
    found = sum(1 for r in truth if len(index.query(sigs[r])) > 1)
    assert found >= 0.95 * len(truth)
    first = sorted(truth)[0]
    assert f"doc{first}" in index.query(sigs[first])
    index.remove(f"doc{first}")
    assert f"doc{first}" not in index.query(sigs[first])
    with pytest.raises(KeyError):
        index.remove(f"doc{first}")
    with pytest.raises(ConfigError, match="already"):
        index.insert("doc1", sigs[1])
    with pytest.raises(ConfigError, match="signature of 128"):
        index.query(sigs[0][:64])
    with pytest.raises(ConfigError, match="32 bits"):
        index.query(np.full(128, 2**40, np.uint64))


def test_lsh_index_accepts_datasketch_minhashes() -> None:
    datasketch = pytest.importorskip("datasketch")
    m = datasketch.MinHash(num_perm=128)
    m.update(b"hello")
    index = LSHIndex(threshold=0.5)
    index.insert("a", m)
    assert index.query(m) == ["a"]


def test_bloom_index_has_no_false_negatives_and_stores_no_keys(corpus: pa.Table) -> None:
    sigs = MinHasher().signatures(corpus.column("text"))
    index = LSHIndex(bloom=True, capacity=len(sigs), fp_rate=1e-3)
    for row in sigs[:500]:
        index.insert(None, row)
    assert all(index.contains(row) for row in sigs[:500])
    assert index.index_bytes < 3 * index.bands * len(sigs)
    with pytest.raises(ConfigError, match="stores no keys"):
        index.query(sigs[0])
    with pytest.raises(ConfigError):
        LSHIndex(bloom=True, fp_rate=0.0)
    with pytest.raises(ConfigError, match="votes"):
        LSHIndex(bloom=True, bands=(4, 2), num_perm=8, votes=5)


# ---------------------------------------------------------------- dedup_parquet


def removed_rows(out: Path, corpus: pa.Table, name: str = "corpus_slice.parquet") -> set[int]:
    kept = set(pq.read_table(out / name, columns=["id"]).column("id").to_pylist())
    return {r for r, d in enumerate(corpus.column("id").to_pylist()) if d not in kept}


def test_dedup_parquet_matches_the_exact_answer(
    tmp_path: Path, corpus: pa.Table, truth: set[int]
) -> None:
    report = dedup_parquet(SLICE, tmp_path / "out", nfc=False, emit_clusters=True)
    removed = removed_rows(tmp_path / "out", corpus)
    assert removed == set(report.removed_ids.tolist())
    precision = len(removed & truth) / len(removed)
    recall = len(removed & truth) / len(truth)
    assert precision == 1.0
    assert recall >= 0.99
    assert report.documents_in == corpus.num_rows
    assert report.documents_out == corpus.num_rows - len(removed)
    assert (report.bands, report.rows) == (16, 8) and report.verify
    # Kept rows are copied whole and in order.
    kept = pq.read_table(tmp_path / "out" / "corpus_slice.parquet")
    assert kept.schema == corpus.schema
    mask = np.ones(corpus.num_rows, bool)
    mask[sorted(removed)] = False
    assert kept.equals(corpus.filter(pa.array(mask)))
    clusters = pq.read_table(tmp_path / "out" / "clusters.parquet").to_pydict()
    assert clusters["id"] == list(range(corpus.num_rows))
    label = np.array(clusters["cluster"])
    assert all(label[r] < r for r in removed)
    assert report.clusters == len({label[r] for r in removed})
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["removed"] == len(removed) and "removed_ids" not in saved


def test_unverified_and_bloom_modes(tmp_path: Path, corpus: pa.Table, truth: set[int]) -> None:
    plain = dedup_parquet(SLICE, tmp_path / "plain", nfc=False, verify=False)
    assert (plain.bands, plain.rows) == (9, 13) and plain.verified_pairs == 0
    bloom = dedup_parquet(SLICE, tmp_path / "bloom", nfc=False, bloom=True)
    removed = removed_rows(tmp_path / "bloom", corpus)
    assert removed == set(bloom.removed_ids.tolist())
    tp = len(removed & truth)
    f1 = 2 * tp / (len(removed) + len(truth))
    assert f1 >= 0.85
    assert bloom.index_bytes <= 3 * bloom.bands * corpus.num_rows
    assert (bloom.bands, bloom.rows, bloom.votes) == (25, 5, 12)


def test_same_seed_same_clusters_whatever_the_batching(tmp_path: Path) -> None:
    runs = []
    for i, (rows, threads) in enumerate([(4096, None), (37, 1), (1, 2)]):
        dedup_parquet(
            SLICE, tmp_path / f"o{i}", batch_rows=rows, threads=threads, emit_clusters=True
        )
        runs.append(pq.read_table(tmp_path / f"o{i}" / "clusters.parquet"))
    assert runs[0].equals(runs[1]) and runs[0].equals(runs[2])


def test_several_inputs_and_keep_longest(tmp_path: Path, corpus: pa.Table) -> None:
    half = corpus.num_rows // 2
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pq.write_table(corpus.slice(0, half), tmp_path / "a" / "part.parquet")
    pq.write_table(corpus.slice(half), tmp_path / "b" / "part.parquet")
    whole = dedup_parquet(SLICE, tmp_path / "whole", keep="longest", emit_clusters=True)
    split = dedup_parquet(
        [tmp_path / "a" / "part.parquet", tmp_path / "b" / "part.parquet"],
        tmp_path / "split",
        keep="longest",
        emit_clusters=True,
    )
    assert [Path(p).name for p in split.outputs] == ["00000-part.parquet", "00001-part.parquet"]
    assert (whole.removed_ids == split.removed_ids).all()
    lengths = pa.compute.binary_length(corpus.column("text")).to_numpy()
    label = pq.read_table(tmp_path / "whole" / "clusters.parquet").column("cluster").to_numpy()
    removed = set(whole.removed_ids.tolist())
    for c in {label[r] for r in removed}:
        members = np.flatnonzero(label == c)
        kept = [m for m in members if m not in removed]
        assert len(kept) == 1 and lengths[kept[0]] == lengths[members].max()


# ---------------------------------------------------------------- bad input


def write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_missing_and_non_string_columns(tmp_path: Path) -> None:
    src = write(tmp_path / "in.parquet", pa.table({"id": [1, 2], "body": ["a", "b"]}))
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: id, body\)"):
        dedup_parquet(src, tmp_path / "out")
    with pytest.raises(ConfigError, match="holds int64"):
        dedup_parquet(src, tmp_path / "out", column="id")
    assert not (tmp_path / "out").exists()


def test_nulls_empties_and_short_texts(tmp_path: Path) -> None:
    texts = [None, "", None, "", "two words", "Two, words.", "!!!", "a b c d e f g", None]
    src = write(tmp_path / "in.parquet", pa.table({"text": texts, "n": list(range(len(texts)))}))
    report = dedup_parquet(src, tmp_path / "out")
    kept = pq.read_table(tmp_path / "out" / "in.parquet").column("n").to_pylist()
    # Token-less texts are never duplicates; identical short texts are (one shingle each).
    assert kept == [0, 1, 2, 3, 4, 6, 7, 8]
    assert report.null_documents == 3 and report.empty_documents == 6


def test_binary_column_with_invalid_utf8(tmp_path: Path) -> None:
    texts = [b"the quick brown fox jumps over", b"the quick\xff brown fox jumps over", b"\xfe\xff"]
    src = write(tmp_path / "in.parquet", pa.table({"text": pa.array(texts, pa.binary())}))
    report = dedup_parquet(src, tmp_path / "out")
    assert report.removed_ids.tolist() == [1]
    assert pq.read_table(tmp_path / "out" / "in.parquet").column("text").to_pylist() == [
        texts[0],
        texts[2],
    ]


def test_zero_rows(tmp_path: Path) -> None:
    src = write(
        tmp_path / "in.parquet",
        pa.table({"text": pa.array([], pa.string()), "id": pa.array([], pa.int64())}),
    )
    for mode in ({}, {"bloom": True}):
        out = tmp_path / f"out{len(mode)}"
        report = dedup_parquet(src, out, **mode)
        assert report.documents_in == 0 and report.removed == 0
        assert pq.read_table(out / "in.parquet").schema.names == ["text", "id"]


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    data = SLICE.read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[:-100])  # footer cut off
    with pytest.raises(FormatError, match=r"bad\.parquet"):
        dedup_parquet(bad, tmp_path / "out")
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # footer length corrupted
    bad.write_bytes(bytes(flipped))
    with pytest.raises(FormatError, match=r"bad\.parquet"):
        dedup_parquet(bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        dedup_parquet(tmp_path / "missing.parquet", tmp_path / "out")


def test_outputs_never_replace_inputs_or_existing_files(tmp_path: Path) -> None:
    src = write(tmp_path / "in.parquet", pa.table({"text": ["a b c", "a b c", "d e f"]}))
    before = src.read_bytes()
    with pytest.raises(ConfigError, match="is an input file"):
        dedup_parquet(src, src)
    with pytest.raises(ConfigError, match="would overwrite the input"):
        dedup_parquet(src, tmp_path)
    assert src.read_bytes() == before
    dedup_parquet(src, tmp_path / "out")
    with pytest.raises(ConfigError, match="exists"):
        dedup_parquet(src, tmp_path / "out")
    assert dedup_parquet(src, tmp_path / "out", overwrite=True).removed == 1
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="emit_clusters"):
        dedup_parquet(SLICE, tmp_path / "o", bloom=True, emit_clusters=True)
    with pytest.raises(ConfigError, match="bands"):
        dedup_parquet(SLICE, tmp_path / "o", bands=(20, 8))
    with pytest.raises(ConfigError, match="threshold"):
        dedup_parquet(SLICE, tmp_path / "o", threshold=0.0)
    with pytest.raises(ConfigError, match="no input"):
        dedup_parquet([], tmp_path / "o")


def test_a_100mb_document(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    big = " ".join(vocab[rng.integers(0, len(vocab), 15_000_000)].tolist())
    assert len(big) > 100_000_000
    edited = big[:1000] + " inserted words here " + big[1000:]
    src = write(
        tmp_path / "in.parquet",
        pa.table({"text": pa.array([big, edited, "small"], pa.large_string())}),
    )
    del big, edited
    report = dedup_parquet(src, tmp_path / "out", batch_rows=1)
    assert report.removed_ids.tolist() == [1]


# ---------------------------------------------------------------- CLI


def test_cli_run(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("dedup", "run", SLICE, "-o", out, "--emit-clusters", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["removed"] > 0 and (out / "clusters.parquet").exists()
    assert stderr == ""  # no progress bar without a terminal
    code, _, stderr = run_cli("dedup", "run", SLICE, "-o", out)
    assert code == 1 and "exists" in stderr
    code, _, stderr = run_cli("dedup", "run", SLICE, "-o", out, "-f", "--column", "body")
    assert code == 1 and "no column 'body'" in stderr
    code, stdout, _ = run_cli("dedup", "run", SLICE, "-o", out, "-f", "--bloom")
    assert code == 0 and "LSHBloom" in stdout


def test_output_keeps_the_input_codecs_and_sensible_row_groups(tmp_path: Path) -> None:
    table = pq.read_table(SLICE)
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, compression={"id": "gzip", "text": "snappy"}, row_group_size=50)
    dedup_parquet(src, tmp_path / "out", batch_rows=16)
    meta = pq.ParquetFile(tmp_path / "out" / "in.parquet").metadata
    rg = meta.row_group(0)
    codecs = {rg.column(i).path_in_schema: rg.column(i).compression for i in range(2)}
    assert codecs == {"id": "GZIP", "text": "SNAPPY"}
    # Batches of 16 rows are regrouped: far fewer row groups than batches.
    assert meta.num_row_groups < table.num_rows / 16 / 4
