"""Near-duplicate removal on a real corpus: Mithril beside datasketch and rensa.

Run it with::

    make bench-dedup

which calls ``.venv/bin/python benches/bench_dedup.py --markdown``.

The corpus is ``corpus.parquet`` from the shared data folder (``--data DIR``; by default
``<repo>/../shared/data``): 32,023 documents, 232.6 MB of text, with the exact answer at
Jaccard >= 0.8 over word 5-gram shingles (see that folder's README.md). Every system uses
128 permutations and threshold 0.8.

Rows:

* ``datasketch 16x8`` / ``datasketch 9x13``  ``MinHash(num_perm=128, seed=1)`` fed with
  ``update_batch`` of the UTF-8 encoded shingles, ``MinHashLSH(threshold=0.8, num_perm=128)``
  with ``params=(16, 8)``, and with datasketch's own optimal choice (9 bands of 13 rows).
  Both rows share one signature pass.
* ``rensa 16x8``  ``RMinHash(128, 1).update(shingles)`` per document,
  ``RMinHashLSH(0.8, 128, 16)`` filled with ``insert_many`` and queried with ``query_all``.
* ``mithril 1 core`` / ``mithril N cores`` / ``mithril LSHBloom``
  ``mithril.dedup.dedup_parquet`` (``verify=True``, Mithril's own band choice; the LSHBloom row
  adds ``bloom=True``), each in a fresh subprocess; printed as "not built" when
  ``mithril.dedup`` cannot be imported.

The peers are fed the shingles the corpus README defines, made in Python (lowercase matches
of ``\\w+``, word 5-grams joined by one space, shorter documents are one shingle). The peers
are single-threaded and run in this process with pyarrow limited to one thread; they share
one read of the parquet file and one shingling pass, whose times are added to each peer's
end-to-end time. End to end = read parquet + shingle + signatures + LSH insert and query +
choosing the removals; for Mithril it is the wall time of the ``dedup_parquet`` call, which
also writes the kept rows (and ``clusters.parquet``) to a temporary folder.

Removal semantics: every group of documents joined by a (candidate) pair keeps its lowest
id; the other members are removed. For the peers, every document is inserted, every
document is queried, and the (document, candidate) pairs are joined with union-find,
without Jaccard verification. The true removed set is, for every ground-truth cluster of
two or more documents, all members but the lowest id (8,957 documents on the full corpus;
with ``--limit N`` the truth is recomputed from the exact pairs among the first N ids).
Precision and recall compare the removed sets.

Signature throughput is the signature step alone: for the peers, building the MinHash
objects from ready shingle lists (datasketch's time includes encoding the shingles to
bytes); for Mithril, ``MinHasher.signatures`` on the text column already in memory as an
Arrow array. Shingles/s counts the distinct shingles of each document, summed, as the
Python shingling made them (when the peers ran; else as ``MinHasher.shingles`` counts them).
Peak RSS is the Mithril child's ``VmHWM`` at the end of the ``dedup_parquet`` call (it
includes the interpreter, numpy and pyarrow; ``ru_maxrss`` would inherit this process's
size). The Mithril children run before the peers. LSH s for Mithril is the report's
"candidates" stage (band keys are made with the signatures; the LSHBloom row has none).
Index B/doc is the report's ``index_bytes`` over documents in.
MB/s means 1e6 bytes of UTF-8 text per second. Timings are a single pass, no warm-up.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from report import cpu_model, pkg_version, render_table

NUM_PERM = 128
THRESHOLD = 0.8
NGRAM = 5
SEED = 1
PEER_BANDS = (16, 8)
WORD = re.compile(r"\w+")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = "corpus.parquet"
CLUSTERS = "corpus_clusters.parquet"
PAIRS = "corpus_near_duplicate_pairs.parquet"
CHILD_MARK = "BENCH_DEDUP_JSON "
# Stages of ``DedupReport.seconds`` counted as LSH insert + query: "candidates" groups the
# band keys (computed with the signatures) and lists the candidate pairs. Bloom mode times
# signatures and filters as one stage, so its LSH time is not printed.
MITHRIL_LSH_STAGES = ("candidates",)

clock = time.perf_counter


# --------------------------------------------------------------------------- shingles


def words(text: str) -> list[str]:
    """The lowercase matches of ``\\w+``."""
    return [w.lower() for w in WORD.findall(text)]


def shingle_set(ws: list[str]) -> list[str]:
    """The corpus README's shingle set of one document's words, as a list."""
    if len(ws) < NGRAM:
        return [" ".join(ws)]
    return list({" ".join(ws[i : i + NGRAM]) for i in range(len(ws) - NGRAM + 1)})


def shingles(text: str) -> list[str]:
    return shingle_set(words(text))


# --------------------------------------------------------------------------- removals


def removed_by_components(n: int, edges: Iterable[tuple[int, int]]) -> set[int]:
    """Union-find over ids 0..n-1; every component keeps its lowest id, the rest go."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:  # the root of a component is always its lowest id
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    return {i for i in range(n) if find(i) != i}


def truth_removed(data: Path, n: int, n_total: int) -> set[int]:
    """All but the lowest id of every true cluster among the first n documents."""
    if n == n_total:
        t = pq.read_table(data / CLUSTERS, columns=["id", "cluster"])
        ids = t.column("id").to_numpy()
        cl = t.column("cluster").to_numpy()
        order = np.lexsort((ids, cl))
        ids, cl = ids[order], cl[order]
        first = np.ones(len(ids), dtype=bool)
        first[1:] = cl[1:] != cl[:-1]
        return set(ids[~first].tolist())
    t = pq.read_table(data / PAIRS, columns=["a", "b"])
    a = t.column("a").to_numpy()
    b = t.column("b").to_numpy()
    keep = (a < n) & (b < n)
    return removed_by_components(n, zip(a[keep].tolist(), b[keep].tolist(), strict=True))


@dataclass
class Score:
    removed: int
    precision: float
    recall: float
    f1: float


def score(pred: set[int], truth: set[int]) -> Score:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return Score(len(pred), p, r, f1)


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    system: str
    bands: str = "-"
    status: str = "ok"
    docs: int = 0
    text_bytes: int = 0
    e2e_s: float | None = None
    sig_s: float | None = None
    sig_shingles: int | None = None
    lsh_s: float | None = None
    score: Score | None = None
    rss_mb: float | None = None
    index_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self, amount: float | None, seconds: float | None) -> float | None:
        if amount is None or not seconds:
            return None
        return amount / seconds


COLUMNS = [
    "system",
    "bands",
    "end-to-end s",
    "MB/s",
    "docs/s",
    "sig docs/s",
    "sig Mshingles/s",
    "LSH s",
    "removed",
    "precision",
    "recall",
    "F1",
    "peak RSS MB",
    "index B/doc",
]


def format_rows(rows: Sequence[Row]) -> list[list[str]]:
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    table = []
    for r in rows:
        if r.status != "ok":
            short = r.status.split(" (", 1)[0]  # the reason goes below the table
            table.append([r.system, r.bands, short] + ["-"] * (len(COLUMNS) - 3))
            continue
        s = r.score
        shingle_rate = r.rate(r.sig_shingles, r.sig_s)
        table.append(
            [
                r.system,
                r.bands,
                num(r.e2e_s, ".2f"),
                num(r.rate(r.text_bytes / 1e6, r.e2e_s), ".1f"),
                num(r.rate(r.docs, r.e2e_s), ",.0f"),
                num(r.rate(r.docs, r.sig_s), ",.0f"),
                num(None if shingle_rate is None else shingle_rate / 1e6, ".2f"),
                num(r.lsh_s, ".2f"),
                "-" if s is None else f"{s.removed:,}",
                "-" if s is None else f"{s.precision:.3f}",
                "-" if s is None else f"{s.recall:.3f}",
                "-" if s is None else f"{s.f1:.3f}",
                num(r.rss_mb, ",.0f"),
                num(None if r.index_bytes is None else r.index_bytes / r.docs, ",.1f"),
            ]
        )
    return table


def render_bias(biases: Sequence[Bias], markdown: bool) -> str:
    head = ["system", "seeds", "mean bias", "+- s.e.", "RMSE"]
    body = [
        [
            x.system,
            str(x.seeds),
            f"{x.mean:+.4f}",
            "-" if x.stderr is None else f"{x.stderr:.4f}",
            f"{x.rmse:.4f}",
        ]
        for x in biases
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * 4) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]
    )


def render(rows: Sequence[Row], markdown: bool) -> str:
    # The system and dtype/compressor columns hold text; the rest are numbers.
    return render_table(COLUMNS, format_rows(rows), markdown, left={0, 1})


# --------------------------------------------------------------------------- peers


def load_pairs(data: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ground-truth pairs (a, b, exact Jaccard) among the first n documents."""
    t = pq.read_table(data / PAIRS, columns=["a", "b", "jaccard"])
    a = t.column("a").to_numpy()
    b = t.column("b").to_numpy()
    keep = (a < n) & (b < n)
    return a[keep], b[keep], t.column("jaccard").to_numpy()[keep]


@dataclass
class Bias:
    system: str
    seeds: int
    mean: float
    stderr: float | None
    rmse: float


def bias_of(system: str, per_seed: list[np.ndarray], exact: np.ndarray) -> Bias:
    """Mean estimate error over the true pairs, averaged over seeds. Pairs share documents
    (one cluster of 122 documents holds 7,381 of them), so one seed's mean error is itself
    noisy; the standard error across seeds says how far the average can be trusted."""
    means = [float((e - exact).mean()) for e in per_seed]
    rmse = float(np.sqrt(np.mean([((e - exact) ** 2).mean() for e in per_seed])))
    se = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None
    return Bias(system, len(means), float(np.mean(means)), se, rmse)


def mithril_bias(texts: Any, pairs: tuple[np.ndarray, ...], seeds: int) -> Bias:
    from mithril.dedup import MinHasher

    a, b, exact = pairs
    per_seed = []
    for seed in range(1, seeds + 1):
        sig = MinHasher(NUM_PERM, NGRAM, seed, nfc=False).signatures(texts)
        per_seed.append((sig[a] == sig[b]).mean(axis=1))
    return bias_of("mithril", per_seed, exact)


def bloom_false_positives(texts: Any) -> str:
    """Filter false positives of LSHBloom at Mithril's defaults: documents the Bloom filters
    flag although fewer than ``votes`` of their bands were really seen before (counted
    exactly with one Python set per band)."""
    from mithril.dedup import LSHIndex, MinHasher, bloom_params

    b, r, votes = bloom_params(THRESHOLD, NUM_PERM)
    hasher = MinHasher(NUM_PERM, NGRAM, SEED, nfc=False)
    sigs, counts = hasher.signatures_and_counts(texts)
    keys, _ = hasher._native.band_keys(texts.combine_chunks(), b, r)
    fp_rate = 1e-3
    index = LSHIndex(
        THRESHOLD,
        NUM_PERM,
        bloom=True,
        bands=(b, r),
        capacity=len(sigs),
        fp_rate=fp_rate,
        votes=votes,
    )
    seen: list[set[int]] = [set() for _ in range(b)]
    false = flagged = checked = 0
    for i in range(len(sigs)):
        if counts[i] == 0:
            continue
        checked += 1
        row = keys[i].tolist()
        hits = sum(1 for j, k in enumerate(row) if k in seen[j])
        for j, k in enumerate(row):
            seen[j].add(k)
        bloom_says = index.check_and_insert(None, sigs[i])
        flagged += bloom_says
        false += bloom_says and hits < votes
    return (
        f"LSHBloom filters ({b}x{r}, {votes} votes, fp_rate {fp_rate:g}, "
        f"{index.index_bytes / max(len(sigs), 1) / b:.2f} B per band per document): "
        f"{false} of {checked:,} documents flagged by filter false positives alone "
        f"(measured rate {false / max(checked, 1):.2e}); {flagged:,} flagged in all"
    )


def run_peers(
    texts: list[str],
    read_s: float,
    text_bytes: int,
    truth: set[int],
    pairs: tuple[np.ndarray, ...],
    biases: list[Bias],
) -> list[Row]:
    """datasketch and rensa on one core, sharing one shingling pass."""
    try:
        import datasketch
    except ImportError as exc:
        datasketch = None
        ds_missing = f"absent ({exc})"
    try:
        import rensa
    except ImportError as exc:
        rensa = None
        rs_missing = f"absent ({exc})"

    n = len(texts)
    shingle_s = ds_sig_s = rs_sig_s = 0.0
    n_shingles = n_positions = 0
    ds_sigs: list[Any] = []
    rs_sigs: list[Any] = []
    for text in texts:
        t0 = clock()
        ws = words(text)
        sh = shingle_set(ws)
        t1 = clock()
        if datasketch is not None:
            m = datasketch.MinHash(num_perm=NUM_PERM, seed=SEED)
            m.update_batch([s.encode("utf-8") for s in sh])
            ds_sigs.append(m)
        t2 = clock()
        if rensa is not None:
            rm = rensa.RMinHash(NUM_PERM, SEED)
            rm.update(sh)
            rs_sigs.append(rm)
        t3 = clock()
        shingle_s += t1 - t0
        ds_sig_s += t2 - t1
        rs_sig_s += t3 - t2
        n_shingles += len(sh)
        n_positions += max(len(ws) - NGRAM + 1, 1 if ws else 0)
    shared = {
        "read_s": read_s,
        "shingle_s": shingle_s,
        "shingles": n_shingles,
        "shingle_positions": n_positions,
    }

    def row(name: str, bands: str, sig_s: float, lsh_s: float, pick_s: float, pred: set[int]):
        return Row(
            system=name,
            bands=bands,
            docs=n,
            text_bytes=text_bytes,
            e2e_s=read_s + shingle_s + sig_s + lsh_s + pick_s,
            sig_s=sig_s,
            sig_shingles=n_shingles,
            lsh_s=lsh_s,
            score=score(pred, truth),
            extra={**shared, "removal_s": pick_s},
        )

    a, b, exact = pairs
    if ds_sigs:
        est = np.array([ds_sigs[x].jaccard(ds_sigs[y]) for x, y in zip(a, b, strict=True)])
        biases.append(bias_of("datasketch", [est], exact))
    if rs_sigs:
        est = np.array([rs_sigs[x].jaccard(rs_sigs[y]) for x, y in zip(a, b, strict=True)])
        biases.append(bias_of("rensa", [est], exact))

    rows: list[Row] = []
    if datasketch is None:
        rows.append(Row("datasketch", "16x8", status=ds_missing))
    else:
        for name, params in (("datasketch", PEER_BANDS), ("datasketch (own bands)", None)):
            t0 = clock()
            lsh = datasketch.MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=params)
            for i, m in enumerate(ds_sigs):
                lsh.insert(i, m)
            cands = [lsh.query(m) for m in ds_sigs]
            t1 = clock()
            pred = removed_by_components(
                n, ((i, j) for i, c in enumerate(cands) for j in c if j != i)
            )
            t2 = clock()
            bands = f"{lsh.b}x{lsh.r}"
            rows.append(row(name, bands, ds_sig_s, t1 - t0, t2 - t1, pred))
            del lsh, cands
    if rensa is None:
        rows.append(Row("rensa", "16x8", status=rs_missing))
    else:
        t0 = clock()
        lsh = rensa.RMinHashLSH(THRESHOLD, NUM_PERM, PEER_BANDS[0])
        lsh.insert_many(rs_sigs, 0)
        cands = lsh.query_all(rs_sigs)
        t1 = clock()
        pred = removed_by_components(n, ((i, j) for i, c in enumerate(cands) for j in c if j != i))
        t2 = clock()
        bands = f"{lsh.get_num_bands()}x{NUM_PERM // lsh.get_num_bands()}"
        rows.append(row("rensa", bands, rs_sig_s, t1 - t0, t2 - t1, pred))
    return rows


# --------------------------------------------------------------------------- mithril


def mithril_lsh_seconds(seconds: dict[str, float]) -> float | None:
    """The LSH insert + query share of ``DedupReport.seconds`` (None if no such stage)."""
    keys = [k for k in MITHRIL_LSH_STAGES if k in seconds]
    return sum(seconds[k] for k in keys) if keys else None


def _plain(x: Any) -> Any:
    """A report field as JSON (numpy scalars and arrays become Python values)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return repr(x)


def peak_rss_kb() -> int:
    """This process's peak resident set in KiB.

    ``VmHWM`` belongs to the process's own address space, whereas Linux carries
    ``ru_maxrss`` over from the parent across fork and exec (a child of this big process
    would report the parent's size), so ``ru_maxrss`` is only the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_main(cfg: dict[str, Any]) -> int:
    """One Mithril configuration in a fresh process; prints one JSON line on stdout."""
    threads = cfg["threads"]
    if threads == 1:
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
    from mithril.dedup import MinHasher, dedup_parquet

    rss_base_kb = peak_rss_kb()
    src = cfg["input"]
    out: dict[str, Any] = {"rss_base_kb": rss_base_kb}
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as outdir:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        report = dedup_parquet(
            [src],
            outdir,
            column="text",
            threshold=THRESHOLD,
            num_perm=NUM_PERM,
            ngram=NGRAM,
            seed=SEED,
            tokens="word",
            nfc=False,
            bands=None,
            verify=True,
            bloom=cfg["bloom"],
            emit_clusters=not cfg["bloom"],  # bloom mode forms no clusters
            threads=threads,
        )
        out["e2e_s"] = clock() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        out["rss_peak_kb"] = peak_rss_kb()
        out["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        # What the call left behind (untimed): kept rows and the clusters file.
        files = sorted(os.listdir(outdir))
        out["output_files"] = files
        out["kept_rows"] = sum(
            pq.ParquetFile(os.path.join(outdir, f)).metadata.num_rows
            for f in files
            if f.endswith(".parquet") and f != "clusters.parquet"
        )
    fields = getattr(report, "__dataclass_fields__", None) or vars(report)
    out["report"] = {k: _plain(getattr(report, k)) for k in fields}
    del report
    gc.collect()

    texts = pq.read_table(src, columns=["text"]).column("text")
    hasher = MinHasher(
        num_perm=NUM_PERM, ngram=NGRAM, seed=SEED, tokens="word", lowercase=True, nfc=False
    )
    t0 = clock()
    sigs = hasher.signatures(texts, threads=threads)
    out["sig_s"] = clock() - t0
    out["sig_shape"] = list(np.shape(sigs))
    out["sig_dtype"] = str(getattr(sigs, "dtype", type(sigs)))
    # Mithril's own shingle count (untimed), to check it against the Python shingling.
    out["shingles_counted"] = int(sum(len(hasher.shingles(t)) for t in texts.to_pylist()))
    print(CHILD_MARK + json.dumps(out), flush=True)
    return 0


def run_mithril(
    label: str,
    src: Path,
    threads: int | None,
    bloom: bool,
    text_bytes: int,
    truth: set[int],
    timeout: float,
) -> Row:
    """Run one configuration in a child process and turn its JSON into a row."""
    cfg = {"input": str(src), "threads": threads, "bloom": bloom}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Row(label, status=f"timed out (after {timeout:.0f} s)")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(label, status=f"failed (exit {proc.returncode}: {tail})")
    res = json.loads(lines[-1][len(CHILD_MARK) :])
    rep = res["report"]
    docs = int(rep.get("documents_in", 0))
    seconds = {str(k): float(v) for k, v in (rep.get("seconds") or {}).items()}
    pred = set(int(i) for i in rep.get("removed_ids", []))
    bands = f"{rep['bands']}x{rep['rows']}" if "bands" in rep and "rows" in rep else "-"
    index_bytes = rep.get("index_bytes")
    return Row(
        system=label,
        bands=bands,
        docs=docs,
        text_bytes=text_bytes,
        e2e_s=res["e2e_s"],
        sig_s=res["sig_s"],
        sig_shingles=res.get("shingles_counted"),
        lsh_s=mithril_lsh_seconds(seconds),
        score=score(pred, truth),
        rss_mb=res["rss_peak_kb"] / 1024,
        index_bytes=None if index_bytes is None else int(index_bytes),
        extra={k: v for k, v in res.items() if k != "report"}
        | {"report": {k: v for k, v in rep.items() if k != "removed_ids"}},
    )


# --------------------------------------------------------------------------- notes


def notes(rows: Sequence[Row], n_shingles: int | None, cores: int) -> list[str]:
    out: list[str] = []
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r.status != "ok":
            seen.setdefault(r.status, []).append(r.system)
    out += [f"{', '.join(names)}: {status}" for status, names in seen.items()]
    peer = next((r for r in rows if r.status == "ok" and "shingle_s" in r.extra), None)
    if peer is not None:
        x = peer.extra
        out.append(
            f"peers share: read parquet {x['read_s']:.2f} s, Python shingling "
            f"{x['shingle_s']:.1f} s ({x['shingles']:,} distinct shingles per document summed, "
            f"{x['shingle_positions']:,} positions; "
            f"{peer.text_bytes / 1e6 / x['shingle_s']:.1f} MB/s)"
        )
    for r in rows:
        if r.status != "ok" or "report" not in r.extra:
            continue
        x = r.extra
        rep = x["report"]
        stages = ", ".join(f"{k} {float(v):.2f}" for k, v in (rep.get("seconds") or {}).items())
        line = (
            f"{r.system}: stages s [{stages}]; CPU {x['cpu_s']:.1f} s over "
            f"{r.e2e_s:.1f} s wall; RSS after imports {x['rss_base_kb'] / 1024:.0f} MB"
        )
        for key in ("candidate_pairs", "verified_pairs", "clusters"):
            if key in rep and not rep.get("bloom"):
                line += f"; {key.replace('_', ' ')} {_count(rep[key])}"
        problems = []
        if rep.get("documents_in") is not None and rep.get("documents_out") is not None:
            if int(rep["documents_in"]) - r.score.removed != int(rep["documents_out"]):
                problems.append("documents_in - removed != documents_out")
            if x["kept_rows"] != int(rep["documents_out"]):
                problems.append(f"output parquet holds {x['kept_rows']:,} rows")
        if n_shingles is not None and x.get("shingles_counted") != n_shingles:
            problems.append(
                f"MinHasher.shingles counts {x.get('shingles_counted'):,} shingles, "
                f"Python {n_shingles:,}"
            )
        if "shingles" in rep:
            line += f"; report.shingles {_count(rep['shingles'])}"
        if x["sig_shape"][1:] != [NUM_PERM] or x["sig_dtype"] != "uint64":
            problems.append(f"signatures {x['sig_dtype']} {x['sig_shape']}")
        if "1 core" in r.system and x["cpu_s"] > 1.25 * r.e2e_s:
            problems.append("used more than one core")
        if problems:
            line += "; CHECK: " + "; ".join(problems)
        out.append(line)
    return out


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else (f"{len(v):,}" if isinstance(v, list) else str(v))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA})"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N documents")
    parser.add_argument("--skip-peers", action="store_true", help="no datasketch/rensa rows")
    parser.add_argument("--skip-mithril", action="store_true", help="no Mithril rows")
    parser.add_argument(
        "--bias-seeds", type=int, default=16, help="seeds for Mithril's estimate bias (16)"
    )
    parser.add_argument(
        "--child-timeout", type=float, default=1800, help="seconds per Mithril subprocess"
    )
    parser.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(json.loads(args.child))

    corpus = args.data / CORPUS
    if not corpus.is_file():
        parser.error(f"{corpus} not found (use --data DIR)")
    n_total = pq.ParquetFile(corpus).metadata.num_rows
    n = n_total if args.limit is None else max(0, min(args.limit, n_total))
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench_dedup_in_") as tmp:
        src = corpus
        if n < n_total:  # everybody reads the same, smaller file (written untimed)
            src = Path(tmp) / f"corpus_first_{n}.parquet"
            pq.write_table(pq.read_table(corpus).slice(0, n), src, compression="zstd")
        src.read_bytes()  # warm the page cache for every reader
        probe = pq.read_table(src, columns=["id", "text"])
        text_bytes = int(pc.sum(pc.binary_length(probe.column("text"))).as_py() or 0)
        if not np.array_equal(probe.column("id").to_numpy(), np.arange(n)):
            print("WARNING: ids are not 0..N-1 in row order; scores use row indices")
        del probe
        truth = truth_removed(args.data, n, n_total)
        pairs = load_pairs(args.data, n)
        biases: list[Bias] = []

        # Mithril first, while this process is small; the peers' rows are printed first.
        cores = os.cpu_count() or 1
        mithril_rows: list[Row] = []
        bloom_note = ""
        if not args.skip_mithril:
            configs = [
                ("mithril 1 core", 1, False),
                (f"mithril {cores} cores", None, False),
                (f"mithril LSHBloom {cores} cores", None, True),
            ]
            if importlib.util.find_spec("mithril.dedup") is None:
                mithril_rows = [Row(label, status="not built") for label, _, _ in configs]
            else:
                mithril_rows = [
                    run_mithril(label, src, threads, bloom, text_bytes, truth, args.child_timeout)
                    for label, threads, bloom in configs
                ]
                column = pq.read_table(src, columns=["text"]).column("text")
                if args.bias_seeds > 0 and len(pairs[0]):
                    biases.append(mithril_bias(column, pairs, args.bias_seeds))
                bloom_note = bloom_false_positives(column)
                del column

        peer_rows: list[Row] = []
        n_shingles: int | None = None
        if not args.skip_peers:
            pa.set_cpu_count(1)
            pa.set_io_thread_count(1)
            t0 = clock()
            texts = pq.read_table(src, columns=["id", "text"]).column("text").to_pylist()
            read_s = clock() - t0
            peer_rows = run_peers(texts, read_s, text_bytes, truth, pairs, biases)
            del texts
            gc.collect()
            n_shingles = next(
                (r.extra["shingles"] for r in peer_rows if "shingles" in r.extra), None
            )
        for r in mithril_rows:  # one shingle count for every row: Python's, when it ran
            if r.status == "ok" and n_shingles is not None:
                r.sig_shingles = n_shingles
        rows = peer_rows + mithril_rows

    command = (
        shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["python", *argv])
    )
    header = (
        f"CPU: {cpu_model()} ({cores} logical cores) | {CORPUS}: {n:,} of {n_total:,} docs, "
        f"{text_bytes / 1e6:.1f} MB text | truth at J >= {THRESHOLD}: {len(truth):,} docs "
        f"to remove | {NUM_PERM} perms, {NGRAM}-word shingles, single pass | "
        f"rerun: `{os.getcwd()}$ {command}`"
    )
    versions = (
        f"python {platform.python_version()}, datasketch {pkg_version('datasketch')}, "
        f"rensa {pkg_version('rensa')}, pyarrow {pa.__version__}, "
        f"mithril {pkg_version('mithril')}"
    )
    print(header)
    print(versions)
    print()
    print(render(rows, args.markdown))
    for note in notes(rows, n_shingles, cores):
        print(f"\n{note}" if args.markdown else note)
    if bloom_note:
        print(f"\n{bloom_note}" if args.markdown else bloom_note)
    if biases:
        print()
        print(
            f"Jaccard estimate bias on the {len(pairs[0]):,} true pairs "
            "(mean of estimate - exact; +- standard error across seeds):"
        )
        print()
        print(render_bias(biases, args.markdown))

    if args.json:
        doc = {
            "header": header,
            "versions": versions,
            "cpu": cpu_model(),
            "logical_cores": cores,
            "documents": n,
            "text_bytes": text_bytes,
            "truth_removed": len(truth),
            "command": command,
            "rows": [asdict(r) for r in rows],
            "bias": [asdict(x) for x in biases],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
