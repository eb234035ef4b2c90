"""Two-rank ``torch.distributed.checkpoint`` through Mithril, beside plain DCP.

all-MiniLM-L6-v2 is sharded over 2 CPU ranks with FSDP2 (gloo) and fine-tuned for two real
AdamW steps. After each step the whole training state (sharded weights and optimizer
moments) is saved with ``dcp.save`` twice: with DCP's own ``FileSystemWriter`` and with
``MithrilWriter`` (the second step as a delta against the first, encoded against the copy
of the first that the writer kept in memory, ``cache_base=True``). Both are loaded back with
``dcp.load`` into a freshly sharded model and checked bit-exact; rank 0 prints sizes and
seconds.

Run by ``make demo`` (``.venv/bin/python benches/demo_dcp.py``).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm_train
from bench_dcp import tensors_of
from mithril.checkpoint.torch import MithrilReader, MithrilWriter

WORLD = 2


def sharded(world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = minilm_train.load_pretrained()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    return model, opt


def state_of(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, object]:
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd}


def raw_bytes(state: object) -> int:
    """Bytes of the full (unsharded) tensors."""
    total = 0
    for t in tensors_of(state):
        total += t.numel() * t.element_size()
    out = torch.tensor([total], dtype=torch.int64)
    dist.all_reduce(out)
    return int(out.item())


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def timed(fn: object) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    dist.barrier()
    return time.perf_counter() - start


def bit_exact(a: object, b: object) -> bool:
    ta, tb = tensors_of(a), tensors_of(b)
    return len(ta) == len(tb) and all(
        x.dtype == y.dtype
        and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        for x, y in zip(ta, tb, strict=True)
    )


def rank_main(rank: int, world: int, store: str, out: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    model, opt = sharded(world)
    data = minilm_train.batches(8, 64)
    rows = []
    for step in (1, 2):
        anchors, positives = next(data)
        model(anchors, positives).backward()
        opt.step()
        opt.zero_grad()
        state = state_of(model, opt)
        raw = raw_bytes(state)
        plain, ours = Path(out, f"dcp-{step}"), Path(out, f"mithril-{step}")
        base = Path(out, f"mithril-{step - 1}") if step > 1 else None
        t_plain = timed(lambda s=state, p=plain: dcp.save(s, storage_writer=FileSystemWriter(p)))
        t_ours = timed(
            lambda s=state, p=ours, b=base: dcp.save(
                s, storage_writer=MithrilWriter(p, base=b, cache_base=True)
            )
        )
        loaded = {}
        for name, path, reader in (
            ("dcp", plain, FileSystemReader),
            ("mithril", ours, MithrilReader),
        ):
            fresh_model, fresh_opt = sharded(world)
            fresh_model(anchors[:2], positives[:2]).backward()
            fresh_opt.step()  # create the optimizer state to load into
            target = state_of(fresh_model, fresh_opt)
            seconds = timed(lambda t=target, p=path, r=reader: dcp.load(t, storage_reader=r(p)))
            if not bit_exact(target, state):
                raise RuntimeError(f"step {step}: the {name} load is not bit-exact")
            loaded[name] = seconds
        rows.append((step, raw, plain, ours, t_plain, t_ours, loaded, base is not None))
    if rank == 0:
        print(f"\nDCP on {world} ranks (FSDP2, gloo): all-MiniLM-L6-v2 weights + AdamW state")
        print(
            f"{'step':>4}  {'writer':<16}  {'size':>9}  {'% of raw':>8}  "
            f"{'save s':>6}  {'load s':>6}  loads bit-exact"
        )
        for step, raw, plain, ours, t_plain, t_ours, loaded, delta in rows:
            for label, path, t_save, t_load in (
                ("dcp", plain, t_plain, loaded["dcp"]),
                ("mithril delta" if delta else "mithril", ours, t_ours, loaded["mithril"]),
            ):
                size = dir_size(path)
                print(
                    f"{step:>4}  {label:<16}  {size / 1e6:7.1f}MB  {100 * size / raw:7.2f}%  "
                    f"{t_save:6.2f}  {t_load:6.2f}  yes"
                )
    Path(f"{store}.done.{rank}").touch()
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        try:
            mp.start_processes(
                rank_main, args=(WORLD, store, tmp), nprocs=WORLD, join=True, start_method="spawn"
            )
        except mp.ProcessExitedException as e:
            # torch's gloo teardown can abort a rank that has already finished its work
            # (pytorch/pytorch#190489); anything else is a real failure.
            done = all(Path(f"{store}.done.{r}").exists() for r in range(WORLD))
            if not (e.signal_name == "SIGABRT" and done):
                raise
            print("(a rank aborted in torch's process-group teardown after finishing its work)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
