"""Delta checkpoints of a real fine-tuning run, beside zstd and zipnn's delta mode.

Run it with::

    make bench-delta

which calls ``.venv/bin/python benches/bench_delta.py --markdown``.

The pretrained all-MiniLM-L6-v2 model is fine-tuned with AdamW (weight decay 0.01) on real
text with its own contrastive objective (see ``minilm_train.py``) for 1, 10 and 100 steps,
at lr 1e-4 and 1e-5. The base is
the state at step 0: the pretrained weights and the zero moments AdamW starts from. Each
later state is compressed against that base, tensor by tensor, and sizes are summed per
category:

* ``bf16 weights``   every float tensor of the model cast to bf16 (base cast the same way)
* ``fp32 masters``   the model's fp32 parameters
* ``exp_avg`` / ``exp_avg_sq``  AdamW's moments (fp32)
* ``whole state``    model ``state_dict()`` + optimizer ``state_dict()`` tensors (moments and
  step counters); the size is that of a real file written by ``CheckpointManager``
  (index and structure included) for Mithril, and the per-tensor sum for the peers.

Codecs, same run, same tensors:

* ``mithril delta``  ``compress_tensor(t, base=b)`` (per chunk: XOR or zigzag integer
  difference of the bit patterns, or the plain codec, whichever is smaller; floats take the
  grouped ``sub-ctx`` coding, ``delta_coding="compact"``)
* ``mithril fast``   the same with ``delta_coding="fast"``, the default (fp32 takes
                     ``sub-pack``, bf16 ``sub-quad``)
* ``mithril full``   ``compress_tensor(t)``: no delta, for reference
* ``zstd-3 xor``     zstandard level 3 on the raw XOR of target and base bytes
* ``zipnn delta``    ``ZipNN(..., delta_compressed_type="byte").compress(t, delta_second_data=b)``
  (zipnn's own delta mode: XOR, then its byte grouping + Huffman); non-float tensors go
  through zstd-3 in this row

Sizes are % of the raw bytes. Speed, codec only (one thread, the whole state at each step):
encode and decode MB/s of both Mithril deltas (base held in memory, as ``CheckpointManager``
does) and of ``mithril full``, each tensor's codings taking turns three times and the best
time of each summed; the ``/full`` columns are their ratios (≥ 1 means the delta is no
slower). Speed, end to end (all cores, files on disk, fsync included): seconds to save
the whole state as a full file (``save_file``) and as each delta (``save_file`` with
``base=``, base tensors held in memory as ``CheckpointManager`` does), and to load each back
(``load_file``; a delta decodes its base too). Every Mithril delta is decoded and checked
bit-exact.

A last table takes the base a training run's chain of checkpoints has: the previous
checkpoint (step 1 for step 10, step 10 for step 100), whose moments are not zeros. It gives
the whole state's sizes and codec-only speeds against that base.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm_train
import mithril.checkpoint as mc

CATEGORIES = ["bf16 weights", "fp32 masters", "exp_avg", "exp_avg_sq", "whole state"]
CODECS = ["mithril delta", "mithril fast", "mithril full", "zstd-3 xor", "zipnn delta"]
# Timing key -> delta coding; each has the size column "mithril <key>".
DELTA_CODINGS = {"delta": "compact", "fast": "fast"}
MITHRIL_DELTAS = {f"mithril {key}": coding for key, coding in DELTA_CODINGS.items()}
TIMED = [*DELTA_CODINGS, "full"]
# Timed encodes and decodes per tensor and coding; the best of them counts.
TIMING_ROUNDS = 3
ZIPNN_DTYPE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def snapshot(
    model: torch.nn.Module, opt: torch.optim.Optimizer
) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the tensors of each category, keyed by a stable name."""
    names = {id(p): n for n, p in model.named_parameters()}
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}, "step": {}}
    for p, st in opt.state.items():
        for key in moments:
            moments[key][names[id(p)]] = st[key].detach().clone()
    params = {n: sd[n] for n in names.values()}
    whole = {f"model/{k}": v for k, v in sd.items()}
    for key, d in moments.items():
        whole.update({f"optimizer/{key}/{k}": v for k, v in d.items()})
    return {
        "bf16 weights": {k: v.to(torch.bfloat16) for k, v in sd.items() if v.is_floating_point()},
        "fp32 masters": params,
        "exp_avg": moments["exp_avg"],
        "exp_avg_sq": moments["exp_avg_sq"],
        "whole state": whole,
    }


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


class Zipnn:
    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from zipnn import ZipNN
        self._cls = ZipNN
        self._made: dict[str, Any] = {}

    def size(self, t: torch.Tensor, b: torch.Tensor) -> int:
        if t.dtype not in ZIPNN_DTYPE:
            return len(zstandard.ZstdCompressor(level=3).compress(xor(t, b)))
        name = ZIPNN_DTYPE[t.dtype]
        if name not in self._made:
            self._made[name] = self._cls(
                input_format="byte", bytearray_dtype=name, threads=1, delta_compressed_type="byte"
            )
        # zipnn may group bytes in place: hand it fresh copies.
        return len(
            self._made[name].compress(
                bytearray(raw_bytes(t)), delta_second_data=bytearray(raw_bytes(b))
            )
        )


def xor(t: torch.Tensor, b: torch.Tensor) -> bytes:
    a = np.frombuffer(raw_bytes(t), np.uint8)
    return np.bitwise_xor(a, np.frombuffer(raw_bytes(b), np.uint8)).tobytes()


@dataclass
class Measure:
    raw: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CODECS, 0))
    enc: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))
    dec: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))


def measure(
    target: dict[str, torch.Tensor], base: dict[str, torch.Tensor], zipnn: Zipnn, timed: bool
) -> Measure:
    m = Measure()
    zstd = zstandard.ZstdCompressor(level=3)
    for name, t in target.items():
        b = base[name]
        m.raw += t.numel() * t.element_size()
        rounds = TIMING_ROUNDS if timed else 1
        best_enc = dict.fromkeys(TIMED, math.inf)
        best_dec = dict.fromkeys(TIMED, math.inf)
        # Each tensor's codings take turns, `rounds` times, and the best time of each is
        # kept: load from elsewhere on this shared machine then falls on all of them.
        for r in range(rounds):
            for key, coding in DELTA_CODINGS.items():
                t0 = time.perf_counter()
                delta = mc.compress_tensor(t, base=b, delta_coding=coding, threads=1)  # type: ignore[arg-type]
                t1 = time.perf_counter()
                back = mc.decompress_tensor(delta, base=b, threads=1)
                t2 = time.perf_counter()
                if not torch.equal(
                    back.view(-1).view(torch.uint8), t.contiguous().view(-1).view(torch.uint8)
                ):
                    raise SystemExit(
                        f"FAIL: {coding} delta of {name} does not round-trip bit-exact"
                    )
                if r == 0:
                    m.sizes[f"mithril {key}"] += len(delta)
                best_enc[key] = min(best_enc[key], t1 - t0)
                best_dec[key] = min(best_dec[key], t2 - t1)
            t0 = time.perf_counter()
            full = mc.compress_tensor(t, threads=1)
            t1 = time.perf_counter()
            mc.decompress_tensor(full, threads=1)
            t2 = time.perf_counter()
            best_enc["full"] = min(best_enc["full"], t1 - t0)
            best_dec["full"] = min(best_dec["full"], t2 - t1)
        m.sizes["mithril full"] += len(full)
        m.sizes["zstd-3 xor"] += len(zstd.compress(xor(t, b)))
        m.sizes["zipnn delta"] += zipnn.size(t, b)
        if timed:
            for key in TIMED:
                m.enc[key] += best_enc[key]
                m.dec[key] += best_dec[key]
    return m


def manager_file_size(
    model: torch.nn.Module, opt: torch.optim.Optimizer, base_dir: Path, step: int, coding: str
) -> int:
    """Size of a real CheckpointManager delta file of the whole training state."""
    policy = mc.DeltaPolicy(full_every=None, max_chain_ratio=None, base="full", coding=coding)  # type: ignore[arg-type]
    mgr = mc.CheckpointManager(base_dir / coding, policy=policy)
    path = mgr.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    return path.stat().st_size


@dataclass
class EndToEnd:
    lr: float
    step: int
    save: dict[str, float]
    load: dict[str, float]


def end_to_end(
    target: dict[str, torch.Tensor], base_path: Path, base_raw: list[Any], tmp: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds to save and to load one state as a full file and as each delta
    (keys of ``TIMED``)."""
    from mithril.checkpoint import _sources, _write_file

    save: dict[str, float] = {}
    load: dict[str, float] = {}
    for key in TIMED:
        path = tmp / f"e2e-{key}.mithril"
        t0 = time.perf_counter()
        if key == "full":
            mc.save_file(target, path)
        else:
            coding = DELTA_CODINGS[key]
            _write_file(
                _sources(target),
                path,
                None,
                base=base_path,
                delta_coding=coding,  # type: ignore[arg-type]
                base_raw=base_raw,
            )
        t1 = time.perf_counter()
        back = mc.load_file(path)
        t2 = time.perf_counter()
        save[key], load[key] = t1 - t0, t2 - t1
        for name, t in target.items():
            if not torch.equal(
                back[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)
            ):
                raise SystemExit(f"FAIL: {name} does not load back bit-exact from {path.name}")
    return save, load


@dataclass
class Row:
    lr: float
    step: int
    loss: float
    category: str
    raw: int
    sizes: dict[str, int]


@dataclass
class Chained:
    """The whole state at ``step`` measured against the state at ``base_step``."""

    lr: float
    base_step: int
    step: int
    m: Measure


def run(
    steps: list[int], lrs: list[float], batch: int, seq: int
) -> tuple[list[Row], list[tuple[float, int, Measure]], list[EndToEnd], list[Chained]]:
    from mithril.checkpoint._convert import to_raw

    rows: list[Row] = []
    speeds: list[tuple[float, int, Measure]] = []
    e2e: list[EndToEnd] = []
    chained: list[Chained] = []
    zipnn = Zipnn()
    for lr in lrs:
        base: dict[str, dict[str, torch.Tensor]] = {}
        previous: tuple[int, dict[str, torch.Tensor]] | None = None
        with tempfile.TemporaryDirectory() as tmp:
            for step, model, opt, loss in minilm_train.train(
                steps, lr, batch_size=batch, seq_len=seq
            ):
                state = snapshot(model, opt)
                manager_size = {
                    codec: manager_file_size(model, opt, Path(tmp), step, coding)
                    for codec, coding in MITHRIL_DELTAS.items()
                }
                if step == 0:
                    base = state
                    base_path = Path(tmp) / "e2e-base.mithril"
                    mc.save_file(state["whole state"], base_path)
                    base_raw = [to_raw(k, v) for k, v in state["whole state"].items()]
                    continue
                e2e.append(
                    EndToEnd(
                        lr, step, *end_to_end(state["whole state"], base_path, base_raw, Path(tmp))
                    )
                )
                for cat in CATEGORIES:
                    m = measure(state[cat], base[cat], zipnn, timed=cat == "whole state")
                    sizes = dict(m.sizes)
                    if cat == "whole state":
                        sizes.update(manager_size)
                        speeds.append((lr, step, m))
                    rows.append(Row(lr, step, loss, cat, m.raw, sizes))
                if previous is not None:
                    prev_step, prev_state = previous
                    m = measure(state["whole state"], prev_state, zipnn, timed=True)
                    chained.append(Chained(lr, prev_step, step, m))
                previous = (step, state["whole state"])
                print(f"  lr {lr:g} step {step}: loss {loss:.3f}", file=sys.stderr, flush=True)
    return rows, speeds, e2e, chained


def table(header: Sequence[str], lines: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*line) for line in lines)])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="1,10,100", help="comma-separated step counts")
    ap.add_argument("--lrs", default="1e-4,1e-5", help="comma-separated learning rates")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(s) for s in args.lrs.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"training all-MiniLM-L6-v2 (AdamW, batch {args.batch}x{args.seq}) ...", file=sys.stderr)
    rows, speeds, e2e, chained = run(steps, lrs, args.batch, args.seq)

    header = ["lr", "steps", "category", "raw MB", *CODECS]
    lines = []
    for r in rows:
        best_peer = min(r.sizes["zstd-3 xor"], r.sizes["zipnn delta"])
        cells = [f"{100 * r.sizes[c] / r.raw:.2f} %" for c in CODECS]
        for i, c in enumerate(CODECS):
            if c in MITHRIL_DELTAS and r.sizes[c] <= best_peer:
                cells[i] = f"**{cells[i]}**"
        lines.append([f"{r.lr:g}", str(r.step), r.category, f"{r.raw / 1e6:.1f}", *cells])
    print(table(header, lines, args.markdown))
    print()
    header = ["lr", "steps"]
    for way in ("enc", "dec"):
        header += [f"{way} {k} MB/s" for k in TIMED]
        header += [f"{way} delta/full", f"{way} fast/full"]
    lines = []
    for lr, step, m in speeds:
        line = [f"{lr:g}", str(step)]
        for times in (m.enc, m.dec):
            line += [f"{m.raw / times[k] / 1e6:.0f}" for k in TIMED]
            line += [f"{times['full'] / times[k]:.2f}" for k in ("delta", "fast")]
        lines.append(line)
    print(table(header, lines, args.markdown))
    print()
    header = ["lr", "steps"]
    for way in ("save", "load"):
        header += [f"{way} {k} s" for k in TIMED]
        header += [f"{way} full/delta", f"{way} full/fast"]
    lines = []
    for r in e2e:
        line = [f"{r.lr:g}", str(r.step)]
        for times in (r.save, r.load):
            line += [f"{times[k]:.2f}" for k in TIMED]
            line += [f"{times['full'] / times[k]:.2f}" for k in ("delta", "fast")]
        lines.append(line)
    print(table(header, lines, args.markdown))
    print()
    sized = [c for c in CODECS if c != "mithril full"]
    header = ["lr", "base step", "step", *[f"{c} %" for c in ["mithril full", *sized]]]
    for way in ("enc", "dec"):
        header += [f"{way} delta/full", f"{way} fast/full"]
    lines = []
    for c in chained:
        m = c.m
        line = [f"{c.lr:g}", str(c.base_step), str(c.step)]
        line += [f"{100 * m.sizes[k] / m.raw:.2f}" for k in ["mithril full", *sized]]
        for times in (m.enc, m.dec):
            line += [f"{times['full'] / times[k]:.2f}" for k in ("delta", "fast")]
        lines.append(line)
    print("Whole state against the previous checkpoint (codec only, one thread):")
    print(table(header, lines, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
