"""How fast could any delta decoder be here, against Mithril's full decode?

A delta decoder must at least read the base and write the decoded tensor, whatever it
does with the (small) delta payload. This script times exactly that, a copy of each base
tensor into an output buffer allocated once (so no page faults), beside Mithril's full
decode and its ``fast`` delta decode of the same tensors, one thread, passes interleaved,
best of ``ROUNDS``. ``base copy / full`` above 1 leaves a delta decoder room to match a
full decode; near or below 1, even a decoder that did nothing but that copy would be no
faster than the full decode. Run it with pairs of safetensors files of the same tensors
at two training steps::

    .venv/bin/python benches/delta_floor.py [--rounds N] BASE1 NEW1 [BASE2 NEW2 ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import mithril.checkpoint as mc
import numpy as np
import torch
from decode_floor import best_speeds
from safetensors.torch import load_file


def raw_view(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(-1).view(torch.uint8).numpy()


def passes(base_path: str, new_path: str, rounds: int) -> dict[str, float]:
    base, new = load_file(base_path), load_file(new_path)
    names = [n for n, t in new.items() if t.is_floating_point() and n in base]
    targets = [new[n].contiguous() for n in names]
    bases = [base[n].contiguous() for n in names]
    full = [mc.compress_tensor(t, threads=1) for t in targets]
    fast = [
        mc.compress_tensor(t, base=b, delta_coding="fast", threads=1)
        for t, b in zip(targets, bases, strict=True)
    ]
    outs = [np.empty(t.numel() * t.element_size(), np.uint8) for t in targets]
    base_bytes = [raw_view(b) for b in bases]

    def base_copy() -> None:
        for out, b in zip(outs, base_bytes, strict=True):
            np.copyto(out, b)

    def full_decode() -> None:
        for blob in full:
            mc.decompress_tensor(blob, threads=1)

    def fast_decode() -> None:
        for blob, b in zip(fast, bases, strict=True):
            mc.decompress_tensor(blob, base=b, threads=1)

    runs: dict[str, Callable[[], None]] = {
        "base copy": base_copy,
        "full": full_decode,
        "fast": fast_decode,
    }
    return best_speeds(runs, rounds, sum(len(o) for o in outs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("files", nargs="+", help="BASE NEW pairs of safetensors files")
    args = parser.parse_args(argv)
    if len(args.files) % 2:
        parser.error("files come in BASE NEW pairs")
    torch.set_num_threads(1)
    print(f"decode, one thread, best of {args.rounds} interleaved passes, MB/s of raw data")
    print("| base | new | base copy | full | fast | base copy / full | fast / full |")
    print("|---|---|---:|---:|---:|---:|---:|")
    pairs = zip(args.files[::2], args.files[1::2], strict=True)
    for base_path, new_path in pairs:
        r = passes(base_path, new_path, args.rounds)
        print(
            f"| {base_path} | {new_path} | {r['base copy']:.0f} | {r['full']:.0f} | "
            f"{r['fast']:.0f} | {r['base copy'] / r['full']:.2f}x | {r['fast'] / r['full']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
