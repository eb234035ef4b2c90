"""Command-line interface: ``mithril checkpoint compress|decompress|inspect|convert|verify|...``.

Errors print one line on stderr and exit with status 1 (2 for usage errors); progress bars
appear only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mithril._progress import ProgressBar
from mithril.errors import MithrilError


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise MithrilError(f"{path} exists; pass -f/--force to overwrite it")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _positive(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
    return n


def _threads(text: str) -> int:
    return _positive(text, "number of threads")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _convert(
    args: argparse.Namespace, suffix: str, verb: str, run: Callable[..., int]
) -> tuple[Path, Path, int, float]:
    """Shared by compress and decompress: resolve and guard the output path, run the
    conversion under a progress bar, and return (src, dst, bytes written, seconds)."""
    src = Path(args.input)
    dst = Path(args.output) if args.output else src.with_suffix(suffix)
    if _same_file(src, dst):
        raise MithrilError(f"output {dst} is the input file")
    _refuse_overwrite(dst, args.force)
    bar = ProgressBar(f"{verb} {src.name}")
    start = time.perf_counter()
    try:
        size = run(src, dst, threads=args.threads, progress=bar)
    finally:
        bar.close()
    return src, dst, size, time.perf_counter() - start


def _compress(args: argparse.Namespace) -> int:
    from mithril import checkpoint as mc

    def run(src: Path, dst: Path, **kw: object) -> int:
        return mc.compress_safetensors(  # type: ignore[arg-type]
            src, dst, base=args.base, delta_coding=args.delta_coding, **kw
        )

    src, dst, size, elapsed = _convert(args, ".mithril", "compress", run)
    raw = src.stat().st_size
    if not args.quiet:
        against = f" (delta against {args.base})" if args.base else ""
        print(
            f"{src} -> {dst}{against}: {_human(raw)} -> {_human(size)} "
            f"({100 * size / raw:.2f}%) in {elapsed:.2f} s ({raw / elapsed / 1e6:.0f} MB/s)"
        )
    return 0


def _rewrite(args: argparse.Namespace) -> int:
    """squash (no --onto) and rebase (--onto BASE): re-encode a file as full or delta."""
    from mithril import checkpoint as mc

    onto = getattr(args, "onto", None)

    def run(src: Path, dst: Path, **kw: object) -> int:
        return mc.rebase(src, dst, onto, **kw)  # type: ignore[arg-type]

    verb = "rebase" if onto else "squash"
    src, dst, size, elapsed = _convert(args, ".full.mithril", verb, run)
    if not args.quiet:
        what = f"delta against {onto}" if onto else "full file"
        print(f"{src} -> {dst}: {what}, {_human(size)} in {elapsed:.2f} s")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from mithril import checkpoint as mc

    src, dst, size, elapsed = _convert(
        args, ".safetensors", "decompress", mc.decompress_safetensors
    )
    if not args.quiet:
        print(f"{src} -> {dst}: {_human(size)} in {elapsed:.2f} s")
    return 0


def _print_table(rows: Sequence[tuple[str, ...]], right: set[int]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(
            "  ".join(
                c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)
            )
        )


def _inspect_dir(args: argparse.Namespace) -> int:
    """A DCP checkpoint directory (Mithril or plain): per key and per rank file."""
    from mithril.checkpoint.torch import inspect_dir

    info = inspect_dir(args.input)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if info["complete"] else 1
    if not info["complete"]:
        print(f"{args.input}: incomplete Mithril DCP checkpoint: {info['error']}")
        for name in info["partial_files"]:
            print(f"  left behind: {name}")
        return 1
    rows: list[tuple[str, ...]] = [("key", "dtype", "size", "chunks", "raw", "stored", "ratio")]
    for key, t in info["tensors"].items():
        rows.append(
            (
                key,
                t["dtype"],
                "x".join(map(str, t["size"])) or "()",
                str(t["chunks"]),
                _human(t["raw_size"]),
                _human(t["stored_size"]) if "stored_size" in t else "-",
                f"{100 * t['ratio']:.2f}%" if "ratio" in t else "-",
            )
        )
    _print_table(rows, {3, 4, 5, 6})
    if info["objects"]:
        print(f"objects: {', '.join(sorted(info['objects']))}")
    if info["kind"] == "dcp":
        print(f"\nplain DCP checkpoint, {_human(info['raw_size'])} of tensors")
        return 0
    print(
        f"\nMithril DCP checkpoint {info['save_id']}: {len(info['tensors'])} tensors, "
        f"{_human(info['raw_size'])} raw, {_human(info['stored_size'])} stored "
        f"({100 * info['ratio']:.2f}%)"
    )
    if info["base"]:
        print(f"delta against {info['base']}")
    for f in info["files"]:
        extra = f"  error: {f['error']}" if "error" in f else ""
        extra += f"  base {f['base']}" if f.get("base") else ""
        size = "?" if f["size"] is None else _human(f["size"])
        print(f"  rank {f['rank']}: {f['file']}  {size}{extra}")
    return 0


def _convert_dir(args: argparse.Namespace) -> int:
    from mithril.checkpoint.torch import convert

    dst = Path(args.output)
    if dst.exists() and not args.force:
        raise MithrilError(f"{dst} exists; pass -f/--force to overwrite it")
    start = time.perf_counter()
    kind = convert(
        args.input,
        dst,
        to=args.to,
        base=args.base,
        skip_objects=args.skip_objects,
        threads=args.threads,
    )
    if not args.quiet:
        print(f"{args.input} -> {dst} ({kind}) in {time.perf_counter() - start:.2f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from mithril import checkpoint as mc

    if os.path.isdir(args.input):
        return _inspect_dir(args)
    info = mc.inspect(args.input)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [("tensor", "dtype", "shape", "raw", "stored", "ratio", "encoding")]
    for name, t in info["tensors"].items():
        rows.append(
            (
                name,
                t["dtype"],
                "x".join(map(str, t["shape"])) or "()",
                _human(t["raw_size"]),
                _human(t["stored_size"]),
                f"{100 * t['ratio']:.2f}%",
                "+".join(t["encodings"]) or "-",
            )
        )
    _print_table(rows, {3, 4, 5})
    print(
        f"\n{len(info['tensors'])} tensors, {_human(info['raw_size'])} raw, "
        f"file {_human(info['file_size'])} ({100 * info['ratio']:.2f}% of raw)"
    )
    if info["metadata"]:
        print(f"metadata: {json.dumps(info['metadata'])}")
    if info["base"]:
        print("chain (newest first):")
        for link in info["chain"]:
            if "error" in link:
                print(f"  ! {link['error']}")
            else:
                print(f"  {link['path']}  id {link['content_id']}  {_human(link['file_size'])}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from mithril import checkpoint as mc

    start = time.perf_counter()
    chunks = mc.verify(args.input, threads=args.threads)
    if not args.quiet:
        print(f"{args.input}: OK, {chunks} chunks verified in {time.perf_counter() - start:.2f} s")
    return 0


def _dedup_run(args: argparse.Namespace) -> int:
    from mithril.dedup import dedup_parquet, dedup_parquet_dask

    bands = None
    if args.bands is not None or args.rows is not None:
        if args.bands is None or args.rows is None:
            raise MithrilError("--bands and --rows go together")
        bands = (args.bands, args.rows)
    # The options both engines share; each adds its own below.
    options = {
        "column": args.column,
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "ngram": args.ngram,
        "seed": args.seed,
        "tokens": args.tokens,
        "lowercase": not args.no_lowercase,
        "nfc": not args.no_nfc,
        "bands": bands,
        "verify": not args.no_verify,
        "keep": args.keep,
        "emit_clusters": args.emit_clusters,
        "overwrite": args.force,
    }
    client = None
    if args.dask is not None:
        if args.bloom:
            raise MithrilError("--bloom is a single-pass mode and cannot run on --dask")
        if args.dask != "local":
            from dask.distributed import Client

            client = Client(args.dask)
        bar = ProgressBar("dedup", unit="tasks", scale=1)
        run: Callable[..., Any] = dedup_parquet_dask
        options["client"] = client
    else:
        bar = ProgressBar("dedup", unit="k rows", scale=1e3)
        run = dedup_parquet
        options.update(
            bloom=args.bloom,
            bloom_fp_rate=args.bloom_fp_rate,
            bloom_votes=args.bloom_votes,
            batch_rows=args.batch_rows,
            threads=args.threads,
        )
    try:
        report = run(args.inputs, args.output, progress=None if args.quiet else bar, **options)
    finally:
        bar.close()
        if client is not None:
            client.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0


def _size(text: str) -> int:
    """Bytes from ``123``, ``10K``, ``512M``, ``20G`` (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        n = float(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 20G, got {text!r}")
    return int(n)


def _cache_store(args: argparse.Namespace) -> object:
    from mithril.cache import Store

    return Store(args.dir, max_bytes=getattr(args, "max_bytes", None))


def _cache_stats(args: argparse.Namespace) -> int:
    store: Any = _cache_store(args)
    s = store.stats()
    if args.json:
        print(json.dumps({"root": str(store.root), **s}, indent=2))
        return 0
    cap = "none" if s["max_bytes"] is None else _human(s["max_bytes"])
    print(f"store        {store.root}")
    print(f"blobs        {s['blobs']:,} ({_human(s['blob_bytes'])}, cap {cap})")
    print(f"actions      {s['actions']:,}")
    print(f"quarantined  {s['quarantined']:,}")
    return 0


def _cache_gc(args: argparse.Namespace) -> int:
    store: Any = _cache_store(args)
    r = store.gc(args.max_bytes)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"evicted {r['evicted_blobs']:,} blobs ({_human(r['evicted_bytes'])}), "
            f"dropped {r['removed_actions']:,} actions and {r['removed_tmp']:,} stale "
            f"temporary files; {_human(r['remaining_bytes'])} remain"
        )
    return 0


def _cache_verify(args: argparse.Namespace) -> int:
    store: Any = _cache_store(args)
    r = store.verify()
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"checked {r['blobs']:,} blobs and {r['actions']:,} actions")
        for name in r["corrupt"]:
            print(f"corrupt, quarantined: {name}")
    return 1 if r["corrupt"] else 0


def _cache_env(args: argparse.Namespace) -> int:
    import shlex

    from mithril.cache import env, pull, remote_from_env, restore

    store: Any = _cache_store(args)
    remote = remote_from_env()
    if remote is not None:
        pull(store, remote)  # the fleet's snapshot first, when a shared store is configured
    restore(store)  # a snapshot in the store (a moved store, an import) is put in place first
    for k, v in env(store).items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _cache_export(args: argparse.Namespace) -> int:
    from mithril.cache import export_bundle

    dst = Path(args.bundle)
    _refuse_overwrite(dst, args.force)
    r = export_bundle(dst, _cache_store(args))  # type: ignore[arg-type]
    if not r["environments"]:
        print("nothing to export: no compiled artifacts for this environment", file=sys.stderr)
        dst.unlink(missing_ok=True)
        return 1
    print(
        f"wrote {dst}: {r['blobs']:,} blobs, {_human(r['bytes'])}, environment(s) "
        + ", ".join(r["environments"])
    )
    return 0


def _cache_import(args: argparse.Namespace) -> int:
    from mithril.cache import import_bundle

    r = import_bundle(args.bundle, _cache_store(args))  # type: ignore[arg-type]
    print(f"imported {r['blobs']:,} blobs for environment(s) {', '.join(r['environments'])}")
    for name in r["refused"]:
        print(f"refused (content does not match its name): {name}", file=sys.stderr)
    return 1 if r["refused"] else 0


def _cache_push(args: argparse.Namespace) -> int:
    from mithril.cache import push

    r = push(_cache_store(args))  # type: ignore[arg-type]
    print(f"uploaded {r['uploaded']:,} blobs ({r['present']:,} already shared)")
    return 0


def _cache_pull(args: argparse.Namespace) -> int:
    from mithril.cache import pull

    r = pull(_cache_store(args))  # type: ignore[arg-type]
    print(
        f"fetched {r['fetched']:,} blobs ({r['present']:,} already here, "
        f"{r['missing']:,} refused or missing)"
    )
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cc = sub.add_parser("cache", help="the compile-artifact store")
    cs = cc.add_subparsers(dest="command", required=True)
    store_help = "the store (default: $MITHRIL_CACHE_DIR or ~/.cache/mithril)"
    e = cs.add_parser(
        "env", help='print the exports for torch.compile: eval "$(mithril cache env)"'
    )
    e.add_argument("--dir", help=store_help)
    e.set_defaults(func=_cache_env)
    x = cs.add_parser("export", help="write this environment's compiled artifacts as a bundle")
    x.add_argument("bundle")
    x.add_argument("--dir", help=store_help)
    x.add_argument("-f", "--force", action="store_true", help="overwrite an existing bundle")
    x.set_defaults(func=_cache_export)
    i = cs.add_parser("import", help="load a bundle (verified) and restore its directories")
    i.add_argument("bundle")
    i.add_argument("--dir", help=store_help)
    i.set_defaults(func=_cache_import)
    for name, func, text in (
        (
            "push",
            _cache_push,
            "upload this environment's compiled artifacts to $MITHRIL_CACHE_REMOTE",
        ),
        ("pull", _cache_pull, "fetch them from $MITHRIL_CACHE_REMOTE (signatures checked)"),
    ):
        c = cs.add_parser(name, help=text)
        c.add_argument("--dir", help=store_help)
        c.set_defaults(func=func)
    for name, func, text in (
        ("stats", _cache_stats, "blob and action counts and sizes"),
        ("gc", _cache_gc, "evict least-recently-used blobs down to a size, drop dangling actions"),
        ("verify", _cache_verify, "re-hash every blob; quarantine damaged ones (exit 1 if any)"),
    ):
        c = cs.add_parser(name, help=text)
        c.add_argument("--dir", help="the store (default: $MITHRIL_CACHE_DIR or ~/.cache/mithril)")
        if name == "gc":
            c.add_argument("--max-bytes", type=_size, help="target size, e.g. 20G")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(func=func)


def _positive_int(text: str) -> int:
    return _positive(text, "integer")


def _add_dedup(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dd = sub.add_parser("dedup", help="near-duplicate removal for parquet text corpora")
    ds = dd.add_subparsers(dest="command", required=True)
    r = ds.add_parser(
        "run",
        help="remove near-duplicate rows: write the kept rows (all columns) and a report",
    )
    r.add_argument("inputs", nargs="+", help="parquet files")
    r.add_argument("-o", "--output", required=True, help="output directory")
    r.add_argument("--column", default="text", help="the text column (default: text)")
    r.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (0.8)")
    r.add_argument("--num-perm", type=_positive_int, default=128, help="permutations (128)")
    r.add_argument("--ngram", type=_positive_int, default=5, help="tokens per shingle (5)")
    r.add_argument("--tokens", choices=["word", "char"], default="word")
    r.add_argument("--no-lowercase", action="store_true", help="keep case")
    r.add_argument("--no-nfc", action="store_true", help="skip Unicode NFC composition")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--bands", type=_positive_int, help="LSH bands (default: from the threshold)")
    r.add_argument("--rows", type=_positive_int, help="rows per band (with --bands)")
    r.add_argument(
        "--no-verify", action="store_true", help="trust band collisions (no exact Jaccard check)"
    )
    r.add_argument("--bloom", action="store_true", help="one-pass LSHBloom, fixed memory")
    r.add_argument(
        "--bloom-fp-rate", type=float, default=1e-3, help="LSHBloom false positives per document"
    )
    r.add_argument(
        "--bloom-votes",
        type=_positive_int,
        help="LSHBloom: band hits that flag a document (default: from the threshold)",
    )
    r.add_argument("--keep", choices=["lowest", "longest"], default="lowest")
    r.add_argument(
        "--emit-clusters", action="store_true", help="also write clusters.parquet (id, cluster)"
    )
    r.add_argument("--batch-rows", type=_positive_int, default=256)
    r.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run as tasks of a Dask cluster: a scheduler address, or 'local' for one worker "
        "process per core (outputs become <output>/<input stem>/part-<row group>.parquet)",
    )
    r.add_argument("-t", "--threads", type=_threads, default=None, help="worker threads (all)")
    r.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_dedup_run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mithril", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="group")
    ck = sub.add_parser("checkpoint", help="lossless checkpoint compression")
    cs = ck.add_subparsers(dest="command", required=True)

    c = cs.add_parser("compress", help="compress a .safetensors file (bit-exact round trip)")
    c.add_argument("input")
    c.add_argument("-o", "--output", help="output path (default: INPUT with .mithril)")
    c.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    c.add_argument(
        "-t", "--threads", type=_threads, default=None, help="worker threads (all cores)"
    )
    c.add_argument("--base", help="an earlier .mithril of the same model: store deltas against it")
    c.add_argument(
        "--delta-coding",
        choices=["compact", "fast"],
        default="fast",
        help="with --base: deltas faster to code than a full file (fast, the default) "
        "or the smallest ones (compact)",
    )
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=_compress)

    d = cs.add_parser("decompress", help="write a .mithril file back as .safetensors")
    d.add_argument("input")
    d.add_argument("-o", "--output", help="output path (default: INPUT with .safetensors)")
    d.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    d.add_argument("-t", "--threads", type=_threads, default=None)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=_decompress)

    i = cs.add_parser(
        "inspect",
        help="per-tensor dtype, shape, sizes and ratio (of a file or a DCP checkpoint directory)",
    )
    i.add_argument("input")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_inspect)

    cv = cs.add_parser(
        "convert",
        help="convert a DCP checkpoint directory: Mithril <-> plain DCP, or to one "
        ".safetensors / .mithril file",
    )
    cv.add_argument("input", help="a Mithril or plain DCP checkpoint directory")
    cv.add_argument("output", help="a directory, or a .safetensors / .mithril file")
    cv.add_argument(
        "--to",
        choices=["mithril-dcp", "dcp", "safetensors", "mithril"],
        help="output kind (default: from OUTPUT's suffix, else the other directory kind)",
    )
    cv.add_argument("--base", help="an earlier Mithril DCP directory to store deltas against")
    cv.add_argument(
        "--skip-objects", action="store_true", help="leave non-tensor entries out of a file"
    )
    cv.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    cv.add_argument("-t", "--threads", type=_threads, default=None)
    cv.add_argument("-q", "--quiet", action="store_true")
    cv.set_defaults(func=_convert_dir)

    v = cs.add_parser("verify", help="decode everything and check every checksum")
    v.add_argument("input")
    v.add_argument("-t", "--threads", type=_threads, default=None)
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(func=_verify)

    for name, text in (
        ("squash", "write a delta (its chain resolved) as a self-contained full file"),
        ("rebase", "re-encode a file as a delta against another base (or full without --onto)"),
    ):
        r = cs.add_parser(name, help=text)
        r.add_argument("input")
        r.add_argument("-o", "--output", help="output path (default: INPUT with .full.mithril)")
        if name == "rebase":
            r.add_argument("--onto", help="the new base (.mithril); omit for a full file")
        r.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
        r.add_argument("-t", "--threads", type=_threads, default=None)
        r.add_argument("-q", "--quiet", action="store_true")
        r.set_defaults(func=_rewrite)
    _add_dedup(sub)
    _add_cache(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from mithril import __version__

        print(f"mithril {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (MithrilError, OSError) as e:
        print(f"mithril: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mithril: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
