"""CheckpointManager: a training loop's checkpoints as full files and deltas, retention,
the ``latest`` pointer, and what survives a crash or a full disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mithril
import mithril.checkpoint as mc
import pytest
import torch
from helpers import assert_same_tensor


def tiny_training(steps: int, seed: int = 0):
    """A real model and AdamW optimiser, trained ``steps`` steps on a fixed regression task;
    yields (step, model, optimiser) after each step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(256, 32), torch.randn(256, 8)
    for step in range(1, steps + 1):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        yield step, model, opt


def state_of(model, opt) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "note": "run-a"}


def assert_same_structure(got, want) -> None:
    if isinstance(want, torch.Tensor):
        assert_same_tensor(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_same_structure(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want, strict=False):
            assert_same_structure(a, b)
    else:
        assert got == want and type(got) is type(want)


def snapshot(state):
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, list):
        return [snapshot(v) for v in state]
    if isinstance(state, tuple):
        return tuple(snapshot(v) for v in state)
    return state


def test_save_load_round_trip_and_resume(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(tmp_path, policy=mc.DeltaPolicy(full_every=4, max_chain_ratio=None))
    saved = {}
    for step, model, opt in tiny_training(6):
        mgr.save(step, state_of(model, opt))
        saved[step] = snapshot(state_of(model, opt))
    assert mgr.steps() == [1, 2, 3, 4, 5, 6]
    assert mgr.latest_step() == 6
    for step, want in saved.items():
        assert_same_structure(mgr.load(step), want)
    assert_same_structure(mgr.load("latest"), saved[6])
    # Chains: 1 full, 2..4 deltas, 5 full (4 files per chain), 6 delta on 5.
    bases = {s: mc.inspect(mgr.path_for(s))["base"] for s in mgr.steps()}
    assert bases[1] is None and bases[5] is None
    assert all(bases[s] is not None for s in (2, 3, 4, 6))
    # A restored optimiser continues exactly as the original did.
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state = mgr.load(3)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    assert_same_structure(
        state_of(model, opt)["optimizer"]["state"], saved[3]["optimizer"]["state"]
    )


def test_deltas_are_smaller_than_full_files(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, policy=mc.DeltaPolicy(full_every=None, max_chain_ratio=None)
    )
    for step, model, _opt in tiny_training(3):
        mgr.save(step, {"model": model.state_dict()})
    full = mgr.path_for(1).stat().st_size
    assert mgr.path_for(2).stat().st_size < 0.8 * full


def test_fast_coding_policy_writes_fast_deltas(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, policy=mc.DeltaPolicy(full_every=None, max_chain_ratio=None, coding="fast")
    )
    saved = {}
    for step, model, opt in tiny_training(3):
        mgr.save(step, state_of(model, opt))
        saved[step] = state_of(model, opt)
    used = {e for t in mc.inspect(mgr.path_for(3))["tensors"].values() for e in t["encodings"]}
    assert "sub-pack" in used and "sub-ctx" not in used, used
    state = mgr.load("latest")
    assert_same_structure(state["model"], saved[3]["model"])


def test_size_rule_starts_a_new_full_checkpoint(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, policy=mc.DeltaPolicy(full_every=None, max_chain_ratio=0.3)
    )
    for step, model, opt in tiny_training(8):
        mgr.save(step, state_of(model, opt))
    fulls = [s for s in mgr.steps() if mc.inspect(mgr.path_for(s))["base"] is None]
    assert len(fulls) >= 2, fulls
    for s in mgr.steps():
        chain = mc.inspect(mgr.path_for(s))["chain"]
        deltas = sum(link["file_size"] for link in chain[:-1])
        # The rule keeps every chain's deltas near the ratio (plus at most one delta of slack).
        assert deltas <= 0.3 * chain[-1]["file_size"] + max(
            (link["file_size"] for link in chain[:-1]), default=0
        )


def test_base_full_policy_makes_star_chains(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, policy=mc.DeltaPolicy(full_every=None, max_chain_ratio=None, base="full")
    )
    for step, model, opt in tiny_training(4):
        mgr.save(step, state_of(model, opt))
    for s in (2, 3, 4):
        assert len(mc.inspect(mgr.path_for(s))["chain"]) == 2


def test_retention_never_strands_a_delta(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, keep=2, policy=mc.DeltaPolicy(full_every=5, max_chain_ratio=None)
    )
    saved = {}
    for step, model, opt in tiny_training(8):
        mgr.save(step, state_of(model, opt))
        saved[step] = snapshot(state_of(model, opt))
        for s in mgr.steps():  # every kept file still loads
            assert_same_structure(mgr.load(s), saved[s])
    # Steps 7 and 8 are kept; they are deltas on 6 -> full 6, so 6 stays; 1..5 are gone.
    assert mgr.steps() == [6, 7, 8]


def test_saving_the_same_step_again(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(tmp_path)
    runs = list(tiny_training(2))
    mgr.save(1, {"model": runs[0][1].state_dict()})
    mgr.save(2, {"model": runs[1][1].state_dict()})
    mgr.save(2, {"model": runs[1][1].state_dict(), "extra": 1})  # last step: allowed
    assert mgr.load(2)["extra"] == 1
    with pytest.raises(mithril.ConfigError, match="base of checkpoint"):
        mgr.save(1, {"model": runs[0][1].state_dict()})


def test_bad_state_and_arguments(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(tmp_path)
    with pytest.raises(mithril.ConfigError, match="model/fn"):
        mgr.save(1, {"model": {"fn": object()}})
    with pytest.raises(mithril.ConfigError):
        mgr.save(-1, {})
    with pytest.raises(mithril.ConfigError):
        mc.CheckpointManager(tmp_path, keep=0)
    with pytest.raises(mithril.ConfigError):
        mc.DeltaPolicy(full_every=0)
    with pytest.raises(mithril.MithrilError, match="no checkpoint"):
        mgr.load()
    with pytest.raises(FileNotFoundError):
        mgr.load(5)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_numpy_state(tmp_path: Path) -> None:
    import numpy as np

    mgr = mc.CheckpointManager(tmp_path)
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "meta": (1, "x", None, 2.5)}
    mgr.save(0, state)
    got = mgr.load(0, framework="np")
    assert got["w"].tobytes() == state["w"].tobytes() and got["meta"] == state["meta"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    import mithril.checkpoint as mc

    def state(step):
        g = torch.Generator().manual_seed(step)
        base = torch.Generator().manual_seed(0)
        w = torch.randn(512, 256, generator=base) + step * 1e-3 * torch.randn(512, 256, generator=g)
        return {"w": w, "b": torch.full((64,), float(step)), "step": step}

    mgr = mc.CheckpointManager(sys.argv[1], keep=3, policy=mc.DeltaPolicy(full_every=4))
    start = int(sys.argv[2])
    print("ready", flush=True)
    for step in range(start, start + 1000):
        mgr.save(step, state(step))
    """
)


def expected_state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    base = torch.Generator().manual_seed(0)
    w = torch.randn(512, 256, generator=base) + step * 1e-3 * torch.randn(512, 256, generator=g)
    return {"w": w, "b": torch.full((64,), float(step)), "step": step}


def test_sigkill_during_save_never_leaves_a_partial_latest(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ckpt = tmp_path / "ckpt"
    rng = random.Random(1234)
    start = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mgr = mc.CheckpointManager(ckpt, keep=3, policy=mc.DeltaPolicy(full_every=4))
        leftovers = [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == [], leftovers  # the dead writer's temp files are cleaned up
        latest = mgr.latest_step()
        if latest is None:
            continue
        assert_same_structure(mgr.load("latest"), expected_state(latest))
        for s in mgr.steps():
            assert_same_structure(mgr.load(s), expected_state(s))
        # Saving the step after latest (possibly the one that was cut off) works.
        mgr.save(latest + 1, expected_state(latest + 1))
        assert_same_structure(mgr.load("latest"), expected_state(latest + 1))
        start = latest + 2


DISK_FULL = textwrap.dedent(
    """
    import resource, signal, sys, torch
    import mithril.checkpoint as mc

    mgr = mc.CheckpointManager(sys.argv[1], policy=mc.DeltaPolicy(full_every=1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    try:
        mgr.save(2, {"w": torch.randn(1024, 1024)})
    except OSError as e:
        print("OSError", e.errno)
        sys.exit(0)
    print("saved")
    """
)


def test_disk_full_leaves_nothing_behind_and_older_untouched(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    mgr = mc.CheckpointManager(ckpt)
    first = {"w": torch.randn(64, 64)}
    mgr.save(1, first)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    out = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.startswith("OSError"), out.stdout + out.stderr
    after = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert after == before  # no temp file, no partial step 2, latest and step 1 untouched
    assert mgr.latest_step() == 1
    assert_same_structure(mgr.load(), first)


def test_missing_base_of_a_managed_delta_is_a_clear_error(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(tmp_path)
    for step, model, _ in tiny_training(2):
        mgr.save(step, {"model": model.state_dict()})
    os.unlink(mgr.path_for(1))
    with pytest.raises(mithril.BaseCheckpointError, match="missing"):
        mgr.load(2)


def test_a_chain_broken_by_hand_starts_a_new_full_checkpoint(tmp_path: Path) -> None:
    mgr = mc.CheckpointManager(
        tmp_path, keep=2, policy=mc.DeltaPolicy(full_every=None, max_chain_ratio=None)
    )
    runs = list(tiny_training(4))
    for step, model, _ in runs[:3]:
        mgr.save(step, {"model": model.state_dict()})
    os.unlink(mgr.path_for(1))  # the full file under 2 and 3
    step, model, _ = runs[3]
    path = mgr.save(step, {"model": model.state_dict()})
    assert mc.inspect(path)["base"] is None  # not a delta on the broken chain
    assert_same_structure(mgr.load(step), {"model": model.state_dict()})
