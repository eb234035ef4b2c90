"""Rank functions for the multi-process DCP tests. They run in spawned processes (gloo on the
CPU), so they live in an importable module rather than in the test file."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from mithril.checkpoint.torch import MithrilReader, MithrilWriter
from mithril.checkpoint.torch import _writer as writer_module
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def init(rank: int, world: int, store: str, timeout_s: float = 60) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown(store: str) -> None:
    """Record that this rank's work is done, then leave the group once every rank is.
    Without the barrier a rank may exit while a peer's gloo worker still holds the last
    collective, and torch aborts the process at teardown (pytorch/pytorch#190489); the
    barrier makes that rare, and the marker lets the launcher tell such an abort, after
    the work, from a real failure."""
    Path(f"{store}.done.{dist.get_rank()}").touch()
    dist.barrier()
    dist.destroy_process_group()


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 48)
        self.hidden = torch.nn.Linear(48, 96)
        self.out = torch.nn.Linear(96, 48, dtype=torch.bfloat16)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 48))


def sharded_model(world: int, seed: int) -> tuple[Net, torch.optim.Optimizer]:
    """The same full model on every rank (seeded), FSDP2-sharded over ``world`` CPU ranks."""
    torch.manual_seed(seed)
    model = Net()
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model.embed, model.hidden, model.out):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: Net, opt: torch.optim.Optimizer, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, 64, (8,), generator=g)
    h = torch.relu(model.hidden(model.embed(ids) * model.scale))
    loss = model.out(h.to(torch.bfloat16)).float().pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def full_state(model: Net, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    msd, osd = get_state_dict(model, opt)
    return {
        "model": msd,
        "optim": osd,
        "meta": {"step": step, "note": f"after step {step}"},
        "replicated": torch.arange(10, dtype=torch.int64) * step,
    }


def flat_full(state: Any) -> dict[str, Any]:
    """Flatten with DCP's own rule, gathering DTensors to full tensors."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(state)
    return {
        k: v.full_tensor()
        if isinstance(v, DTensor)
        else v.clone()
        if isinstance(v, torch.Tensor)
        else v
        for k, v in flat.items()
    }


def save_run(rank: int, world: int, store: str, out: str) -> None:
    """Two checkpoints of an FSDP2 run: step 1 through ``dcp.async_save``, step 2 as a delta
    against step 1; rank 0 keeps the full tensors of step 2 as the reference."""
    init(rank, world, store)
    model, opt = sharded_model(world, seed=0)
    train_step(model, opt, 1)
    fut = dcp.async_save(full_state(model, opt, 1), storage_writer=MithrilWriter(f"{out}/step1"))
    fut.result()
    train_step(model, opt, 2)
    state = full_state(model, opt, 2)
    dcp.save(state, storage_writer=MithrilWriter(f"{out}/step2", base=f"{out}/step1"))
    dcp.save(state, checkpoint_id=f"{out}/plain2")  # stock DCP, for comparison
    ref = flat_full(state)
    if rank == 0:
        torch.save(ref, f"{out}/ref2.pt")
    shutdown(store)


def load_run(rank: int, world: int, store: str, out: str) -> None:
    """Load step 2 into a differently seeded model sharded over ``world`` ranks, through DCP
    and ``set_state_dict``, and compare every tensor with the reference bit for bit."""
    init(rank, world, store)
    model, opt = sharded_model(world, seed=123)
    train_step(model, opt, 1)  # create optimizer state to load into
    state = full_state(model, opt, 0)
    dcp.load(state, storage_reader=MithrilReader(f"{out}/step2"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    got = flat_full(full_state(model, opt, 0))
    got["meta.step"], got["meta.note"] = state["meta"]["step"], state["meta"]["note"]
    got["replicated"] = state["replicated"]
    ref = torch.load(f"{out}/ref2.pt", weights_only=True)
    assert sorted(got) == sorted(ref), (sorted(got), sorted(ref))
    for key, want in ref.items():
        have = got[key]
        if isinstance(want, torch.Tensor):
            assert have.dtype == want.dtype, key
            assert torch.equal(have.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8)), (
                key
            )
        else:
            assert have == want, (key, have, want)
    shutdown(store)


class FailingWriter(MithrilWriter):
    """A MithrilWriter whose rank ``fail_rank`` raises in ``phase``."""

    def __init__(self, path: str, phase: str, fail_rank: int) -> None:
        super().__init__(path)
        self.phase, self.fail_rank = phase, fail_rank

    def _maybe_fail(self, phase: str) -> None:
        if phase == self.phase and self.rank == self.fail_rank:
            raise OSError(f"injected failure in {phase} on rank {self.rank}")

    def prepare_local_plan(self, plan: Any) -> Any:
        self._maybe_fail("plan")
        return super().prepare_local_plan(plan)

    def write_data(self, plan: Any, planner: Any) -> Any:
        self._maybe_fail("write")
        return super().write_data(plan, planner)

    def finish(self, metadata: Any, results: Any) -> None:
        self._maybe_fail("finish")
        super().finish(metadata, results)


def fail_phases(rank: int, world: int, store: str, out: str) -> None:
    """A rank failing in plan, write or finish: every rank gets a CheckpointException naming
    the failed rank, and no commit record is written."""
    from torch.distributed.checkpoint.api import CheckpointException

    init(rank, world, store)
    state = {"w": torch.full((4, 4), float(rank)), "shared": torch.ones(3)}
    for phase, fail_rank in (("plan", 1), ("write", 1), ("finish", 0)):
        path = f"{out}/{phase}"
        try:
            dcp.save(state, storage_writer=FailingWriter(path, phase, fail_rank))
        except CheckpointException as e:
            assert set(e.failures) == {fail_rank}, (phase, e.failures)
            assert f"injected failure in {phase}" in str(e), str(e)
        else:
            raise AssertionError(f"{phase}: the save did not fail")
        dist.barrier()
        assert not Path(path, "mithril-dcp.json").exists(), phase
    shutdown(store)


def kill_mid_save(rank: int, world: int, store: str, out: str, target: str) -> None:
    """Save a good checkpoint to ``good`` and ``inplace``, then save new values to ``target``
    (a new directory, or ``inplace`` over the old checkpoint); rank 1 is SIGKILLed while it
    writes its file."""
    init(rank, world, store, timeout_s=20)
    good = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8) + rank, "r": torch.ones(5)}
    for name in ("good", "inplace"):
        dcp.save(
            {f"w{rank}": good["w"], "r": good["r"]}, storage_writer=MithrilWriter(f"{out}/{name}")
        )
    dist.barrier()
    newer = {f"w{rank}": good["w"] * 100, "r": good["r"] * 100}
    if rank == 1:
        real_write = writer_module._native.write_file

        def write_then_die(path: Any, *args: Any, **kwargs: Any) -> Any:
            tmp = Path(path).parent / f".{Path(path).name}.{os.getpid()}.0.tmp"
            tmp.write_bytes(b"MITH partial")
            os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, *args, **kwargs)

        writer_module._native.write_file = write_then_die  # type: ignore[attr-defined]
    dcp.save(newer, storage_writer=MithrilWriter(f"{out}/{target}"))
