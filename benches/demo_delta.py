"""Delta checkpoints in a real training loop: fine-tune all-MiniLM-L6-v2 for a few AdamW steps,
save the whole training state (model + optimizer) after each through ``CheckpointManager``,
print each file's size, then load the latest back and check it bit-exact.

Run by ``make demo`` (``.venv/bin/python benches/demo_delta.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm_train
import mithril.checkpoint as mc


def raw_size(state: object) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(raw_size(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(raw_size(v) for v in state)
    return 0


def same(a: object, b: object) -> bool:
    if isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(
                a.reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
            )
        )
    if isinstance(b, dict):
        return isinstance(a, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"\nDelta checkpoints: {args.steps} AdamW steps of all-MiniLM-L6-v2, whole training state"
    )
    print(f"{'step':>4}  {'loss':>6}  {'kind':<29}  {'file':>9}  {'% of raw':>8}  {'save s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        # Deltas of the whole state (moments included) are ~60 % of a full file, so the default
        # size rule would start a new full file every other step; count-based chains here.
        policy = mc.DeltaPolicy(full_every=10, max_chain_ratio=None)
        mgr = mc.CheckpointManager(tmp, keep=3, policy=policy)
        state = None
        for step, model, opt, loss in minilm_train.train(list(range(1, args.steps + 1)), 1e-4):
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
            start = time.perf_counter()
            path = mgr.save(step, state)
            elapsed = time.perf_counter() - start
            info = mc.inspect(path)
            kind = "full" if info["base"] is None else f"delta on {info['base']['path']}"
            kind = kind.replace(".mithril", "")
            size = path.stat().st_size
            loss_text = "-" if step == 0 else f"{loss:.3f}"
            print(
                f"{step:>4}  {loss_text:>6}  {kind:<29}  {size / 1e6:>7.1f}MB  "
                f"{100 * size / raw_size(state):>7.2f}%  {elapsed:>6.2f}"
            )
        back = mgr.load("latest")
        if not same(back, state):
            print("FAIL: the latest checkpoint does not load back bit-exact", file=sys.stderr)
            return 1
        print(f"latest = step {mgr.latest_step()}, loaded back bit-exact; kept {mgr.steps()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
