"""``torch.distributed.checkpoint`` through Mithril, beside DCP's own writers, same run.

Run it with::

    make bench-dcp

which calls ``.venv/bin/python benches/bench_dcp.py --markdown``.

Writers, each through ``dcp.save`` / ``dcp.load`` in one process (``no_dist``), files on
disk, fsync included (every writer syncs its data files):

* ``dcp``            ``FileSystemWriter`` / ``FileSystemReader`` (uncompressed)
* ``dcp+zstd``       ``FileSystemWriter(_extensions=[ZStandard()])``: DCP's built-in
  ZStandard stream extension (zstandard's default level)
* ``mithril``        ``MithrilWriter`` / ``MithrilReader``

DCP's writers get ``thread_count`` = the number of cores (Mithril's codec uses every core by
default), so no writer is held to one core.

State dicts:

* ``minilm bf16``     the real all-MiniLM-L6-v2 weights after 3 real AdamW fine-tuning steps
  (see ``minilm_train.py``), cast to bf16
* ``minilm fp32``     the same weights in fp32
* ``minilm +adamw``   the fp32 weights and the AdamW state (moments, step counters, param
  groups): ``{"model": model.state_dict(), "optim": opt.state_dict()}``
* ``rand-335m bf16`` / ``fp32``  a randomly initialised 24-layer transformer encoder (d 1024,
  FFN 4096, vocabulary 32000; 335M parameters), for throughput

A second table puts the save bar beside what no writer avoids: writing and fsyncing
Mithril's bytes with no encoding ("disk floor") and ``dcp.save``'s own time with a writer
that stores nothing.

Size is the whole directory (data files and metadata) as % of the raw tensor bytes. Save and
load are the best of ``--repeat`` runs; GB/s is raw bytes per second. The ratio columns
divide Mithril's speed by each peer's (≥ 1: Mithril is faster). Every load is checked
bit-exact against the saved state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.distributed.tensor import DTensor
from torch.futures import Future

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mithril.checkpoint.torch import MithrilReader, MithrilWriter

warnings.filterwarnings("ignore", message="torch.distributed is disabled")
warnings.filterwarnings("ignore", message="Detected an existing checkpoint")


@dataclass
class Method:
    name: str
    writer: Callable[[Path], Any]
    reader: Callable[[Path], Any]


def methods() -> list[Method]:
    threads = os.cpu_count() or 1
    return [
        Method("dcp", lambda p: FileSystemWriter(p, thread_count=threads), FileSystemReader),
        Method(
            "dcp+zstd",
            lambda p: FileSystemWriter(p, thread_count=threads, _extensions=[ZStandard()]),
            FileSystemReader,
        ),
        Method("mithril", MithrilWriter, MithrilReader),
    ]


def tensors_of(state: Any) -> list[torch.Tensor]:
    """Every tensor in a nested state dict, in order; a DTensor gives this rank's shard."""
    if isinstance(state, DTensor):
        return [state.to_local()]
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors_of(v)]
    if isinstance(state, list | tuple):
        return [t for v in state for t in tensors_of(v)]
    return []


def blank_like(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: blank_like(v) for k, v in state.items()}
    if isinstance(state, list):
        return [blank_like(v) for v in state]
    return state


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    )


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@dataclass
class Row:
    state: str
    method: str
    raw: int
    size: int
    save_s: float
    load_s: float


def bench(name: str, state: dict[str, Any], method: Method, root: Path, repeat: int) -> Row:
    raw = sum(t.numel() * t.element_size() for t in tensors_of(state))
    path = root / f"{name}-{method.name}".replace(" ", "_")
    save_s = load_s = float("inf")
    for _ in range(repeat):
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        dcp.save(state, storage_writer=method.writer(path), no_dist=True)
        save_s = min(save_s, time.perf_counter() - start)
    size = dir_size(path)
    target = blank_like(state)
    for _ in range(repeat):
        start = time.perf_counter()
        dcp.load(target, storage_reader=method.reader(path), no_dist=True)
        load_s = min(load_s, time.perf_counter() - start)
    for got, want in zip(tensors_of(target), tensors_of(state), strict=True):
        if not same(got, want):
            raise RuntimeError(f"{name} / {method.name}: the load is not bit-exact")
    shutil.rmtree(path, ignore_errors=True)
    return Row(name, method.name, raw, size, save_s, load_s)


def disk_floor(root: Path, size: int, repeat: int) -> float:
    """Seconds to write ``size`` bytes of random data to a new file and fsync it, best of
    ``repeat``: what storing Mithril's output costs on this disk with no encoding at all, a
    lower bound for any writer that produces that many bytes."""
    data = memoryview(np.random.default_rng(0).bytes(size))
    best = float("inf")
    for i in range(repeat):
        path = root / f"floor-{i}"
        start = time.perf_counter()
        with open(path, "wb") as f:
            for at in range(0, size, 64 << 20):
                f.write(data[at : at + (64 << 20)])
            f.flush()
            os.fsync(f.fileno())
        best = min(best, time.perf_counter() - start)
        path.unlink()
    return best


def minilm_states() -> list[tuple[str, dict[str, Any]]]:
    from minilm_train import train

    steps = list(train([3], lr=1e-4))
    _, model, opt, _ = steps[-1]
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return [
        (
            "minilm bf16",
            {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
        ),
        ("minilm fp32", weights),
        ("minilm +adamw", {"model": weights, "optim": opt.state_dict()}),
    ]


def random_transformer() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(1024, 16, 4096, batch_first=True)
    model = torch.nn.ModuleDict(
        {
            "embed": torch.nn.Embedding(32000, 1024),
            "encoder": torch.nn.TransformerEncoder(layer, 24, enable_nested_tensor=False),
        }
    )
    return {k: v.detach() for k, v in model.state_dict().items()}


class DiscardingWriter(StorageWriter):
    """A storage writer that stores nothing: ``dcp.save`` through it times DCP's own work
    (planning, metadata), which every writer pays on top of its own."""

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
        return plans

    def write_data(self, plan: Any, planner: Any) -> Future[list[WriteResult]]:
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(
            [WriteResult(index=i.index, size_in_bytes=0, storage_data=None) for i in plan.items]
        )
        return fut

    def finish(self, metadata: Any, results: Any) -> None:
        pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True


def dcp_own_cost(state: dict[str, Any], repeat: int) -> float:
    """Seconds ``dcp.save`` takes with :class:`DiscardingWriter`, best of ``repeat``."""
    best = float("inf")
    for _ in range(max(repeat, 5)):
        start = time.perf_counter()
        dcp.save(state, storage_writer=DiscardingWriter(), no_dist=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--no-large", action="store_true", help="skip the 335M-parameter model")
    ap.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = ap.parse_args()

    states = minilm_states()
    if not args.no_large:
        big = random_transformer()
        states.append(("rand-335m bf16", {k: v.to(torch.bfloat16) for k, v in big.items()}))
        states.append(("rand-335m fp32", big))
    rows: list[Row] = []
    floors: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, state in states:
            for method in methods():
                rows.append(bench(name, state, method, Path(tmp), args.repeat))
                r = rows[-1]
                print(
                    f"  {name:15s} {method.name:9s} {100 * r.size / r.raw:6.2f}%  "
                    f"save {r.save_s:.3f} s  load {r.load_s:.3f} s",
                    file=sys.stderr,
                )
            floors[name] = (
                disk_floor(Path(tmp), rows[-1].size, args.repeat),
                dcp_own_cost(state, args.repeat),
            )
    print_table(rows, args.markdown)
    print()
    print_floor_table(rows, floors, args.markdown)
    return 0


def print_rows(head: list[str], lines: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for cells in lines:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))


def print_table(rows: list[Row], markdown: bool) -> None:
    head = [
        "state",
        "writer",
        "raw MB",
        "size %",
        "save s",
        "save GB/s",
        "load s",
        "load GB/s",
        "save vs dcp+zstd",
        "load vs dcp+zstd",
        "save vs dcp",
        "load vs dcp",
    ]
    by = {(r.state, r.method): r for r in rows}
    lines = []
    for r in rows:
        cells = [
            r.state,
            r.method,
            f"{r.raw / 1e6:.1f}",
            f"{100 * r.size / r.raw:.2f}",
            f"{r.save_s:.3f}",
            f"{r.raw / r.save_s / 1e9:.2f}",
            f"{r.load_s:.3f}",
            f"{r.raw / r.load_s / 1e9:.2f}",
        ]
        for peer in ("dcp+zstd", "dcp"):
            p = by.get((r.state, peer))
            if r.method == "mithril" and p is not None:
                cells += [f"{p.save_s / r.save_s:.2f}x", f"{p.load_s / r.load_s:.2f}x"]
            else:
                cells += ["", ""]
        lines.append(cells)
    print_rows(head, lines, markdown)


def print_floor_table(
    rows: list[Row], floors: dict[str, tuple[float, float]], markdown: bool
) -> None:
    """The save bar beside what no writer can avoid: half of DCP+ZStandard's save time; the
    time to write and fsync as many bytes as Mithril stores, with no encoding; and the time
    ``dcp.save`` spends on its own with a writer that stores nothing. Their sum is a lower
    bound for a Mithril save that does not overlap DCP's planning with the disk."""
    by = {(r.state, r.method): r for r in rows}
    head = [
        "state",
        "mithril save s",
        "bar: dcp+zstd save / 2",
        "disk floor s",
        "dcp's own s",
        "floor + dcp's own / bar",
    ]
    lines = []
    for state, (floor, own) in floors.items():
        mithril, zstd = by.get((state, "mithril")), by.get((state, "dcp+zstd"))
        if mithril is None or zstd is None:
            continue
        bar = zstd.save_s / 2
        cells = [
            f"{mithril.save_s:.3f}",
            f"{bar:.3f}",
            f"{floor:.3f}",
            f"{own:.3f}",
            f"{(floor + own) / bar:.2f}",
        ]
        lines.append([state, *cells])
    print_rows(head, lines, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
