"""mithril.checkpoint.torch: DCP save/load through Mithril on one process and on real
multi-process gloo groups (2 and 4 ranks), resharding, deltas, faults and conversions."""

from __future__ import annotations

import io
import json
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import dcp_workers
import mithril
import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp
from mithril import _native
from mithril.checkpoint.torch import (
    MithrilReader,
    MithrilWriter,
    convert,
    detect,
    inspect_dir,
    load_flat,
)
from mithril.checkpoint.torch import _writer as writer_module
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _store(fn: Any, world: int, tmp_path: Path) -> str:
    """A fresh file for the group's rendezvous (and the ranks' done markers beside it)."""
    return str(tmp_path / f"store-{fn.__name__}-{world}-{time.monotonic_ns()}")


def _launch(fn: Any, world: int, store: str, *args: Any) -> Any:
    return tmp.start_processes(
        fn, args=(world, store, *args), nprocs=world, join=False, start_method="spawn"
    )


def run_ranks(fn: Any, world: int, tmp_path: Path, *args: Any, timeout: float = 240) -> None:
    """Run ``fn(rank, world, store, *args)`` on ``world`` spawned ranks; fail on any rank's
    exception (with its traceback) or when the group does not finish in time.

    A rank that aborts after every rank has recorded its work as done (see
    ``dcp_workers.shutdown``) hit torch's gloo teardown race, not a failure of the test."""
    store = _store(fn, world, tmp_path)
    ctx = _launch(fn, world, store, *args)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ctx.join(timeout=2):
                return
        except tmp.ProcessExitedException as e:
            finished = all(Path(f"{store}.done.{r}").exists() for r in range(world))
            if e.signal_name == "SIGABRT" and finished:
                return
            raise
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} on {world} ranks did not finish in {timeout} s")


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    emb = torch.randn(40, 16, dtype=torch.bfloat16)
    return {
        "model": {
            "emb.weight": emb,
            "head.weight": emb,  # tied
            "proj.weight": torch.randn(16, 24),
            "proj.bias": torch.randn(24).half(),
            "ids": torch.arange(7, dtype=torch.int64),
            "mask": torch.tensor([True, False, True]),
            "scalar": torch.tensor(3.5, dtype=torch.float64),
            "empty": torch.empty(0, 4),
            "phase": torch.randn(5, dtype=torch.complex64),  # not a codec dtype: stored as bytes
            "strided": torch.randn(8, 6)[:, ::2],
        },
        "step": 12,
        "blob": io.BytesIO(b"\x00arbitrary bytes\xff"),
    }


def _blank_like(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {k: torch.zeros_like(v) for k, v in state["model"].items()},
        "step": 0,
        "blob": None,
    }


def test_round_trip_every_kind_of_entry(tmp_path: Path) -> None:
    state = _state()
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "ck"))
    got = _blank_like(state)
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "ck"))
    for k, want in state["model"].items():
        assert _equal(got["model"][k], want.contiguous()), k
    assert got["step"] == 12
    assert got["blob"].getvalue() == b"\x00arbitrary bytes\xff"
    files = [p.name for p in (tmp_path / "ck").iterdir()]
    assert len(files) == 2 and "mithril-dcp.json" in files
    commit = json.loads((tmp_path / "ck" / "mithril-dcp.json").read_text())
    assert commit["format"] == "mithril-dcp"
    tied = {
        e["name"] for e in commit["storage"] if e["fqn"].endswith(("emb.weight", "head.weight"))
    }
    assert len(tied) == 1, "tied weights are stored once"


class NegatingSavePlanner(DefaultSavePlanner):
    """A save planner that stores every float tensor negated: the writer must ask it for
    each item's data rather than read the state dict itself."""

    def transform_object(self, write_item: Any, object: Any) -> Any:
        if isinstance(object, torch.Tensor) and object.is_floating_point():
            return -object
        return super().transform_object(write_item, object)


def test_a_save_planner_that_transforms_data_is_honoured(tmp_path: Path) -> None:
    state = {"w": torch.randn(6, 5), "b": torch.randn(5).bfloat16(), "n": torch.arange(4)}
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "ck"), planner=NegatingSavePlanner())
    got = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "ck"))
    assert _equal(got["w"], -state["w"]) and _equal(got["b"], -state["b"])
    assert _equal(got["n"], state["n"])


def test_parameters_and_plain_tensors_round_trip_through_the_default_planner(
    tmp_path: Path,
) -> None:
    torch.manual_seed(1)
    layer = torch.nn.Linear(12, 7).to(torch.bfloat16)
    state = {"layer": layer.state_dict(keep_vars=True), "buf": torch.randn(3, 3)}
    assert isinstance(state["layer"]["weight"], torch.nn.Parameter)
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "ck"))
    got = {
        "layer": {k: torch.zeros_like(v.detach()) for k, v in state["layer"].items()},
        "buf": torch.zeros(3, 3),
    }
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "ck"))
    for k, v in state["layer"].items():
        assert _equal(got["layer"][k], v.detach()), k
    assert _equal(got["buf"], state["buf"])


class StagingPlanner(DefaultLoadPlanner):
    """A planner that resolves every tensor into one shared staging buffer and copies it out
    on commit: the reader must commit each request before it resolves the next."""

    def __init__(self) -> None:
        super().__init__()
        self.staging: dict[tuple[int, ...], torch.Tensor] = {}
        self.commits = 0

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        dest = super().resolve_tensor(read_item)
        buf = self.staging.setdefault(tuple(dest.shape), torch.empty_like(dest))
        return buf

    def commit_tensor(self, read_item: Any, tensor: torch.Tensor) -> None:
        super().resolve_tensor(read_item).copy_(tensor)
        self.commits += 1


def test_default_planner_loads_in_one_batch_and_custom_planners_one_by_one(
    tmp_path: Path,
) -> None:
    state = {f"w{i}": torch.randn(8, 16) for i in range(6)}
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "ck"))
    got = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "ck"))
    assert all(torch.equal(got[k], v) for k, v in state.items())
    # Same shapes share the staging buffer: resolving them all first would load one value
    # into every tensor.
    staged = {k: torch.zeros_like(v) for k, v in state.items()}
    planner = StagingPlanner()
    dcp.load(staged, storage_reader=MithrilReader(tmp_path / "ck"), planner=planner)
    assert planner.commits == len(state)
    assert all(torch.equal(staged[k], v) for k, v in state.items())


def test_load_converts_dtype_and_reads_into_noncontiguous_targets(tmp_path: Path) -> None:
    w = torch.randn(6, 10)
    dcp.save({"w": w, "v": w.clone()}, storage_writer=MithrilWriter(tmp_path / "ck"))
    as_bf16 = torch.zeros(6, 10, dtype=torch.bfloat16)
    transposed = torch.zeros(10, 6).t()
    dcp.load({"w": as_bf16, "v": transposed}, storage_reader=MithrilReader(tmp_path / "ck"))
    assert torch.equal(as_bf16, w.to(torch.bfloat16))
    assert torch.equal(transposed, w)


def test_real_weights_and_optimizer_compress(tmp_path: Path, minilm_tensors: Any) -> None:
    model = {k: v.to(torch.bfloat16) for k, v in list(minilm_tensors.items())[:40]}
    dcp.save({"model": model}, storage_writer=MithrilWriter(tmp_path / "m"))
    dcp.save({"model": model}, checkpoint_id=tmp_path / "plain")
    info = inspect_dir(tmp_path / "m")
    assert info["complete"] and info["ratio"] < 0.72, info["ratio"]
    plain = sum(p.stat().st_size for p in (tmp_path / "plain").iterdir())
    assert info["stored_size"] < 0.75 * plain
    got = {"model": {k: torch.empty_like(v) for k, v in model.items()}}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "m"))
    assert all(_equal(got["model"][k], v) for k, v in model.items())


@pytest.mark.parametrize("coding", ["compact", "fast"])
def test_delta_against_previous_step(tmp_path: Path, minilm_tensors: Any, coding: str) -> None:
    model = {k: v.clone() for k, v in list(minilm_tensors.items())[:30] if v.is_floating_point()}
    dcp.save({"model": model}, storage_writer=MithrilWriter(tmp_path / "s1"))
    nxt = {k: v + 1e-4 * torch.randn_like(v) * v.abs() for k, v in model.items()}
    writer = MithrilWriter(tmp_path / "s2", base=tmp_path / "s1", delta_coding=coding)  # type: ignore[arg-type]
    dcp.save({"model": nxt}, storage_writer=writer)
    dcp.save({"model": nxt}, storage_writer=MithrilWriter(tmp_path / "full2"))
    delta, full = inspect_dir(tmp_path / "s2"), inspect_dir(tmp_path / "full2")
    assert delta["base"] == "../s1"
    assert delta["files"][0]["base"].startswith("../s1/__0_")
    assert delta["stored_size"] < 0.8 * full["stored_size"]
    (rank_file,) = (tmp_path / "s2").glob("*.mithril")
    used = {
        e for t in mithril.checkpoint.inspect(rank_file)["tensors"].values() for e in t["encodings"]
    }
    assert {"compact": "sub-ctx", "fast": "sub-pack"}[coding] in used, used
    got = {"model": {k: torch.empty_like(v) for k, v in nxt.items()}}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "s2"))
    assert all(_equal(got["model"][k], v) for k, v in nxt.items())
    # The base is needed: without it the delta is refused, never decoded against nothing.
    for p in (tmp_path / "s1").iterdir():
        if p.suffix == ".mithril":
            p.unlink()
    with pytest.raises(CheckpointException, match="BaseCheckpointError"):
        dcp.load(got, storage_reader=MithrilReader(tmp_path / "s2"))


def test_delta_against_a_cached_base_writes_the_same_file(
    tmp_path: Path, minilm_tensors: Any
) -> None:
    model = {k: v.clone() for k, v in list(minilm_tensors.items())[:20] if v.is_floating_point()}
    nxt = {k: v + 1e-4 * torch.randn_like(v) * v.abs() for k, v in model.items()}
    for cached in (False, True):
        root = tmp_path / str(cached)
        dcp.save({"model": model}, storage_writer=MithrilWriter(root / "s1", cache_base=cached))
        kept = writer_module._LAST_WRITTEN.get(0)
        assert (kept is not None and kept[0].parent == (root / "s1").resolve()) == cached
        before = {k: v.clone() for k, v in model.items()}
        for v in model.values():  # training moves on in place; the cache must hold a copy
            v.add_(1.0)
        dcp.save({"model": nxt}, storage_writer=MithrilWriter(root / "s2", base=root / "s1"))
        model.update(before)
    files = [next((tmp_path / str(c) / "s2").glob("*.mithril")) for c in (False, True)]
    plain, cached_file = (_native.Reader(f, False) for f in files)
    assert [plain.info(n) for n in plain.names()] == [
        cached_file.info(n) for n in cached_file.names()
    ]
    got = {"model": {k: torch.empty_like(v) for k, v in nxt.items()}}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "True" / "s2"))
    assert all(_equal(got["model"][k], v) for k, v in nxt.items())


def test_delta_cannot_be_its_own_base(tmp_path: Path) -> None:
    dcp.save({"w": torch.ones(3)}, storage_writer=MithrilWriter(tmp_path / "a"))
    with pytest.raises(CheckpointException, match="delta against itself"):
        dcp.save(
            {"w": torch.ones(3)}, storage_writer=MithrilWriter(tmp_path / "a", base=tmp_path / "a")
        )
    got = {"w": torch.zeros(3)}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "a"))
    assert torch.equal(got["w"], torch.ones(3))


def test_overwrite_in_place_replaces_files_and_overwrite_false_refuses(tmp_path: Path) -> None:
    dcp.save({"w": torch.ones(4)}, storage_writer=MithrilWriter(tmp_path / "c"))
    dcp.save({"w": torch.full((4,), 2.0)}, storage_writer=MithrilWriter(tmp_path / "c"))
    data_files = [p for p in (tmp_path / "c").iterdir() if p.suffix == ".mithril"]
    assert len(data_files) == 1, "the replaced checkpoint's files are removed after the commit"
    with pytest.raises(CheckpointException, match="overwrite=False"):
        dcp.save(
            {"w": torch.zeros(4)}, storage_writer=MithrilWriter(tmp_path / "c", overwrite=False)
        )
    got = {"w": torch.zeros(4)}
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "c"))
    assert torch.equal(got["w"], torch.full((4,), 2.0))


def _original(e: CheckpointException) -> BaseException:
    (failure,) = e.failures.values()
    return failure[0] if isinstance(failure, tuple) else failure


def _load_error(path: Path, state: dict[str, Any]) -> BaseException:
    with pytest.raises(CheckpointException) as info:
        dcp.load(state, storage_reader=MithrilReader(path))
    return _original(info.value)


def _saved(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    state = {"alpha": torch.randn(300, 200), "beta": torch.randn(50).bfloat16()}
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "ck"))
    (rank_file,) = (tmp_path / "ck").glob("__0_*.mithril")
    return tmp_path / "ck", rank_file, {k: torch.zeros_like(v) for k, v in state.items()}


def test_corrupted_shard_names_file_and_tensor(tmp_path: Path) -> None:
    ck, rank_file, blank = _saved(tmp_path)
    reader = _native.Reader(rank_file, False)
    blob = bytearray(rank_file.read_bytes())
    # Flip one byte in the middle of the data of the big tensor.
    blob[len(blob) // 3] ^= 0x40
    rank_file.write_bytes(bytes(blob))
    assert reader.content_id() == _native.Reader(rank_file, False).content_id()
    err = _load_error(ck, blank)
    assert isinstance(err, mithril.CorruptDataError)
    assert rank_file.name in str(err) and "'alpha'" in str(err)


def test_truncated_shard_names_file(tmp_path: Path) -> None:
    ck, rank_file, blank = _saved(tmp_path)
    blob = rank_file.read_bytes()
    rank_file.write_bytes(blob[: len(blob) // 2])
    err = _load_error(ck, blank)
    assert isinstance(err, mithril.FormatError | mithril.CorruptDataError)
    assert rank_file.name in str(err) and "alpha" in str(err)


def test_replaced_or_missing_rank_file_is_refused(tmp_path: Path) -> None:
    ck, rank_file, blank = _saved(tmp_path)
    original = rank_file.read_bytes()
    other = tmp_path / "other"
    dcp.save(
        {"alpha": torch.zeros(300, 200), "beta": torch.zeros(50).bfloat16()},
        storage_writer=MithrilWriter(other),
    )
    (other_file,) = other.glob("__0_*.mithril")
    rank_file.write_bytes(other_file.read_bytes())
    err = _load_error(ck, blank)
    assert isinstance(err, mithril.CorruptDataError) and "replaced" in str(err)
    rank_file.unlink()
    err = _load_error(ck, blank)
    assert isinstance(err, mithril.CorruptDataError) and "missing" in str(err)
    rank_file.write_bytes(original)
    dcp.load(blank, storage_reader=MithrilReader(ck))


def test_damaged_commit_record_is_a_format_error(tmp_path: Path) -> None:
    ck, _, blank = _saved(tmp_path)
    commit = ck / "mithril-dcp.json"
    text = commit.read_text()
    cases = {
        text[: len(text) // 2]: "malformed JSON",
        json.dumps({"format": "mithril-dcp", "version": 99}): "version 99 is not supported",
        "[]": "not a Mithril DCP commit record",
        text.replace('"bfloat16"', '"bfloat17"'): "unknown torch dtype 'bfloat17'",
        text.replace('"shape"', '"shap"'): "malformed storage entry",
    }
    for bad, why in cases.items():
        commit.write_text(bad)
        # DCP reports a metadata failure inside its own exception, with Mithril's message.
        with pytest.raises(CheckpointException, match=why):
            dcp.load(blank, storage_reader=MithrilReader(ck))
        with pytest.raises(mithril.FormatError, match=why):
            MithrilReader(ck).read_metadata()


def test_incomplete_and_foreign_directories_are_refused(tmp_path: Path) -> None:
    ck, rank_file, blank = _saved(tmp_path)
    (ck / "mithril-dcp.json").unlink()
    with pytest.raises(CheckpointException, match="did not finish"):
        dcp.load(blank, storage_reader=MithrilReader(ck))
    with pytest.raises(mithril.IncompleteCheckpointError, match="did not finish"):
        detect(ck)
    info = inspect_dir(ck)
    assert info["complete"] is False and info["partial_files"] == [rank_file.name]
    dcp.save(blank, checkpoint_id=tmp_path / "plain")
    with pytest.raises(CheckpointException, match="plain DCP checkpoint"):
        dcp.load(blank, storage_reader=MithrilReader(tmp_path / "plain"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointException, match="not a Mithril checkpoint"):
        dcp.load(blank, storage_reader=MithrilReader(tmp_path / "empty"))


def test_stock_reader_refuses_a_mithril_directory(tmp_path: Path) -> None:
    ck, _, blank = _saved(tmp_path)
    before = {k: v.clone() for k, v in blank.items()}
    with pytest.raises(CheckpointException, match=r"\.metadata"):
        dcp.load(blank, storage_reader=FileSystemReader(ck))
    with pytest.raises(CheckpointException, match=r"\.metadata"):
        dcp.load(blank, checkpoint_id=ck)
    assert all(torch.equal(blank[k], before[k]) for k in blank), "nothing was loaded"


def test_use_collectives_false_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="use_collectives=True"):
        dcp.save(
            {"w": torch.ones(2)},
            storage_writer=MithrilWriter(tmp_path / "x"),
            use_collectives=False,
        )
    assert not (tmp_path / "x" / "mithril-dcp.json").exists()


def test_convert_round_trips_and_to_files(tmp_path: Path) -> None:
    state = _state()
    dcp.save(state, storage_writer=MithrilWriter(tmp_path / "m"))
    assert convert(tmp_path / "m", tmp_path / "plain") == "dcp"
    assert detect(tmp_path / "plain") == "dcp"
    assert convert(tmp_path / "plain", tmp_path / "back") == "mithril-dcp"
    got = _blank_like(state)
    dcp.load(got, storage_reader=MithrilReader(tmp_path / "back"))
    assert all(_equal(got["model"][k], v.contiguous()) for k, v in state["model"].items())
    assert got["step"] == 12 and got["blob"].getvalue() == state["blob"].getvalue()
    stock = _blank_like(state)
    dcp.load(stock, checkpoint_id=tmp_path / "plain")
    assert all(_equal(stock["model"][k], v.contiguous()) for k, v in state["model"].items())

    with pytest.raises(mithril.ConfigError, match="non-tensor entries"):
        convert(tmp_path / "m", tmp_path / "one.safetensors")
    with pytest.raises(mithril.ConfigError, match="safetensors equivalent"):
        convert(tmp_path / "m", tmp_path / "one.safetensors", skip_objects=True)
    small = {k: v for k, v in state["model"].items() if k != "phase"}
    dcp.save({"model": small}, storage_writer=MithrilWriter(tmp_path / "s"))
    assert convert(tmp_path / "s", tmp_path / "one.safetensors") == "safetensors"
    from safetensors.torch import load_file

    flat = load_file(str(tmp_path / "one.safetensors"))
    assert sorted(flat) == sorted(f"model.{k}" for k in small)
    assert all(_equal(flat[f"model.{k}"], v.contiguous()) for k, v in small.items())
    assert convert(tmp_path / "s", tmp_path / "one.mithril") == "mithril"
    loaded = mithril.checkpoint.load_file(tmp_path / "one.mithril")
    assert all(_equal(loaded[f"model.{k}"], v.contiguous()) for k, v in small.items())


def test_cli_inspect_and_convert(tmp_path: Path, run_cli: Any) -> None:
    dcp.save(_state(), storage_writer=MithrilWriter(tmp_path / "m"))
    code, out, err = run_cli("checkpoint", "inspect", tmp_path / "m")
    assert code == 0, err
    assert "model.proj.weight" in out and "rank 0" in out
    assert "objects: blob, step" in out
    code, out, err = run_cli("checkpoint", "inspect", "--json", tmp_path / "m")
    js = json.loads(out)
    assert js["kind"] == "mithril-dcp" and js["complete"]
    code, out, err = run_cli("checkpoint", "convert", tmp_path / "m", tmp_path / "p")
    assert code == 0, err
    assert detect(tmp_path / "p") == "dcp"
    code, out, err = run_cli("checkpoint", "convert", tmp_path / "m", tmp_path / "p")
    assert code == 1 and "exists" in err
    code, out, err = run_cli("checkpoint", "convert", tmp_path / "m", tmp_path / "m.safetensors")
    assert code == 1 and "--skip-objects" in err
    (tmp_path / "m" / "mithril-dcp.json").unlink()
    code, out, err = run_cli("checkpoint", "inspect", tmp_path / "m")
    assert code == 1 and "incomplete" in out


# -- real process groups ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    run_ranks(dcp_workers.save_run, 2, out, str(out))
    return out


def test_fsdp2_two_ranks_save_with_async_and_delta(fsdp_run: Path) -> None:
    step1, step2 = inspect_dir(fsdp_run / "step1"), inspect_dir(fsdp_run / "step2")
    assert [f["rank"] for f in step2["files"]] == [0, 1]
    assert all(f["base"] is None for f in step1["files"])
    assert all(f["base"] and f["base"].startswith("../step1/") for f in step2["files"])
    assert {"meta.step", "meta.note", "optim.param_groups.0.lr"} <= set(step2["objects"])
    # DCP's planner stores the replicated tensor once, not once per rank.
    assert step2["tensors"]["replicated"]["chunks"] == 1
    flat = load_flat(fsdp_run / "step2")  # one process: resharded 2 -> 1
    ref = torch.load(fsdp_run / "ref2.pt", weights_only=True)
    assert sorted(flat) == sorted(ref)
    for key, want in ref.items():
        if isinstance(want, torch.Tensor):
            assert _equal(flat[key], want), key
        else:
            assert flat[key] == want, key
    plain = load_flat(fsdp_run / "plain2")
    assert all(_equal(plain[k], v) for k, v in ref.items() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp2_load_reshards(fsdp_run: Path, tmp_path: Path, world: int) -> None:
    run_ranks(dcp_workers.load_run, world, tmp_path, str(fsdp_run))


def test_rank_failure_in_each_phase_commits_nothing(tmp_path: Path) -> None:
    run_ranks(dcp_workers.fail_phases, 2, tmp_path, str(tmp_path))
    for phase in ("plan", "write", "finish"):
        with pytest.raises(mithril.IncompleteCheckpointError):
            detect(tmp_path / phase)


@pytest.mark.parametrize("target", ["partial", "inplace"])
def test_sigkill_of_one_rank_mid_save(tmp_path: Path, target: str) -> None:
    store = _store(dcp_workers.kill_mid_save, 2, tmp_path)
    ctx = _launch(dcp_workers.kill_mid_save, 2, store, str(tmp_path), target)
    victim, survivor = ctx.processes[1], ctx.processes[0]
    victim.join(timeout=180)
    assert victim.exitcode == -signal.SIGKILL
    survivor.join(timeout=30)  # it fails in the next collective, or we stop it
    if survivor.is_alive():
        survivor.kill()
        survivor.join()
    want = {
        "w0": torch.arange(64, dtype=torch.float32).reshape(8, 8),
        "w1": torch.arange(64, dtype=torch.float32).reshape(8, 8) + 1,
        "r": torch.ones(5),
    }
    for name in ("good", "inplace"):  # the previous checkpoint still loads, unchanged
        got = load_flat(tmp_path / name)
        assert sorted(got) == sorted(want) and all(_equal(got[k], v) for k, v in want.items())
    if target == "partial":
        with pytest.raises(mithril.IncompleteCheckpointError, match="did not finish"):
            MithrilReader(tmp_path / "partial").read_metadata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A later save to the same place succeeds and cleans up the dead writer's files.
        dcp.save({"w0": want["w0"]}, storage_writer=MithrilWriter(tmp_path / target))
    leftovers = [p.name for p in (tmp_path / target).iterdir() if p.name.startswith(".")]
    assert leftovers == []
