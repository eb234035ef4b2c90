"""Decode speed of delta blobs against a full decode, through the Python API, one thread.

Run it with pairs of safetensors files of the same tensors at two training steps::

    .venv/bin/python benches/delta_decode_speed.py BASE1.safetensors NEW1.safetensors \\
        [BASE2.safetensors NEW2.safetensors ...]

Every tensor of each NEW file is compressed with ``compress_tensor`` against the
same-named tensor of its BASE file (``delta_coding="compact"`` and ``"fast"``) and on its
own (full). Each round decodes every blob with ``decompress_tensor`` (the delta blobs with
``base=``); the best of five rounds is printed as MB/s of raw tensor data, with each
delta coding's speed as a fraction of the full decode's. ``make bench-delta`` measures
the same thing per tensor inside its larger run; this script isolates it for A/B runs of
two builds.
"""

from __future__ import annotations

import gc
import sys
import time

import mithril.checkpoint as mc
from safetensors.torch import load_file


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    pairs = []
    for base_path, new_path in zip(argv[::2], argv[1::2], strict=True):
        base, new = load_file(base_path), load_file(new_path)
        pairs += [(new[k], base[k]) for k in new]
    raw = sum(t.numel() * t.element_size() for t, _ in pairs)
    blobs = {
        coding: [mc.compress_tensor(t, base=b, delta_coding=coding, threads=1) for t, b in pairs]
        for coding in ("compact", "fast")
    }
    full = [mc.compress_tensor(t, threads=1) for t, _ in pairs]
    best: dict[str, float] = {}
    gc.disable()
    for _ in range(5):
        for key in ("full", "compact", "fast"):
            start = time.perf_counter()
            if key == "full":
                for blob in full:
                    mc.decompress_tensor(blob, threads=1)
            else:
                for blob, (_, b) in zip(blobs[key], pairs, strict=True):
                    mc.decompress_tensor(blob, base=b, threads=1)
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
    for key, seconds in best.items():
        ratio = best["full"] / seconds
        print(f"{key:8s} {raw / seconds / 1e6:7.0f} MB/s  {ratio:.2f}x full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
