"""Demo: torch.compile twice through Mithril's store, in two fresh processes started from two
different directories with different HOMEs, printing cold and warm times and hit counts.

    python benches/demo_cache.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
from torch import nn
from torch._dynamo.utils import counters

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.LayerNorm(512), nn.Linear(512, 10))
step = torch.compile(lambda x, y: nn.functional.cross_entropy(model(x), y))
loss = step(torch.randn(32, 256), torch.randint(0, 10, (32,)))
loss.backward()
print(json.dumps({"seconds": time.perf_counter() - t0, "loss": loss.item(),
                  "counters": dict(counters["inductor"])}))
"""


def main() -> None:
    print("\n== torch.compile through Mithril's store: two fresh processes, two directories ==")
    with tempfile.TemporaryDirectory(prefix="mithril_demo_cache_") as tmp:
        root = Path(tmp)
        store = root / "store"
        env_out = subprocess.run(
            [sys.executable, "-m", "mithril", "cache", "env", "--dir", str(store)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env_out.splitlines())
        inductor_dir = exports["TORCHINDUCTOR_CACHE_DIR"]
        print(f'eval "$(mithril cache env)" -> TORCHINDUCTOR_CACHE_DIR={inductor_dir}')
        rows = []
        for label in ("cold (first directory)", "warm (second directory, other HOME)"):
            work = root / label.split()[0]
            (work / "home").mkdir(parents=True)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))
            }
            env.update({k: v.strip("'") for k, v in exports.items()}, HOME=str(work / "home"))
            out = subprocess.run(
                [sys.executable, "-c", CHILD],
                cwd=work,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            c = r["counters"]
            rows.append(
                (
                    label,
                    r["seconds"],
                    c.get("fxgraph_cache_hit", 0),
                    c.get("fxgraph_cache_miss", 0),
                    r["loss"],
                )
            )
        print(f"{'start':<40}{'seconds':>9}{'hits':>6}{'misses':>8}")
        for label, s, h, m, _ in rows:
            print(f"{label:<40}{s:>9.1f}{h:>6}{m:>8}")
        same = rows[0][4] == rows[1][4]
        print(f"same loss both times: {same}; speed-up {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
