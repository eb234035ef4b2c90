"""Delta checkpoints: files that store tensors against an earlier checkpoint, their chains of
bases, and every way a base can go missing or wrong."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mithril
import mithril.checkpoint as mc
import numpy as np
import pytest
import torch
from helpers import assert_same_tensor


def adam_like_step(state: dict[str, torch.Tensor], lr: float, seed: int) -> dict[str, torch.Tensor]:
    """Every float moved by about ``lr`` in value (sign from a seeded draw), as one AdamW step
    moves every weight; integers kept."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            step = torch.where(torch.rand(v.shape, generator=g) < 0.5, -lr, lr)
            out[k] = (v.float() - step).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


# The float delta encodings each coding writes: fast packs fp32 and quads 16-bit floats.
FLOAT_DELTA = {"compact": {"sub-ctx"}, "fast": {"sub-pack", "sub-quad"}}
DELTA_ENCODINGS = {"xor", "sub", "sub-ctx", "sub-quad", "sub-pack"}


def float_delta(coding: str, dtype: torch.dtype) -> str:
    """The encoding ``coding`` writes for float deltas of ``dtype``."""
    if coding == "compact":
        return "sub-ctx"
    return "sub-pack" if dtype == torch.float32 else "sub-quad"


@pytest.fixture(params=["compact", "fast"])
def coding(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def run(tmp_path: Path, small_state_dict: dict[str, torch.Tensor], coding: str):
    """Three consecutive checkpoints: full base, delta 1 on base, delta 2 on delta 1, in
    each delta coding (every test of the chain and its faults runs on both)."""
    s0 = dict(small_state_dict)
    s1 = adam_like_step(s0, 1e-4, 1)
    s2 = adam_like_step(s1, 1e-4, 2)
    p0, p1, p2 = tmp_path / "s0.mithril", tmp_path / "s1.mithril", tmp_path / "s2.mithril"
    mc.save_file(s0, p0)
    mc.save_file(s1, p1, base=p0, delta_coding=coding)  # type: ignore[arg-type]
    mc.save_file(s2, p2, base=p1, delta_coding=coding)  # type: ignore[arg-type]
    return (s0, s1, s2), (p0, p1, p2)


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert_same_tensor(got[k], want[k])


def test_chain_loads_bit_exact(run) -> None:
    (s0, s1, s2), (p0, p1, p2) = run
    assert_same_state(mc.load_file(p0), s0)
    assert_same_state(mc.load_file(p1), s1)
    assert_same_state(mc.load_file(p2), s2)
    with mc.safe_open(p2, "pt") as f:
        assert_same_tensor(f.get_tensor("ffn.weight"), s2["ffn.weight"])


def test_delta_is_smaller_and_says_so(run, coding: str) -> None:
    _, (p0, p1, p2) = run
    assert p1.stat().st_size < p0.stat().st_size * 0.6
    info = mc.inspect(p2)
    assert info["base"]["path"] == "s1.mithril"
    assert [Path(link["path"]).name for link in info["chain"]] == [
        "s2.mithril",
        "s1.mithril",
        "s0.mithril",
    ]
    assert info["chain"][1]["content_id"] == info["base"]["id"]
    used = set().union(*(set(t["encodings"]) for t in info["tensors"].values()))
    # The state holds fp32 and bf16 tensors: each encoding of the coding is used.
    assert FLOAT_DELTA[coding] <= used, used
    assert not used & DELTA_ENCODINGS - FLOAT_DELTA[coding] - {"xor", "sub"}, used
    assert mc.inspect(p0)["base"] is None
    assert mc.verify(p2) > 0


def test_real_adamw_step_deltas(
    tmp_path: Path, minilm_tensors: dict[str, torch.Tensor], coding: str
) -> None:
    """One real AdamW step on real weights: every float tensor round-trips bit-exact from a
    delta much smaller than the full file, in fp32 and bf16, in each coding."""
    params = {
        k: torch.nn.Parameter(v.clone()) for k, v in minilm_tensors.items() if v.is_floating_point()
    }
    opt = torch.optim.AdamW(params.values(), lr=1e-4)
    before = {k: p.detach().clone() for k, p in params.items()}
    g = torch.Generator().manual_seed(0)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt.step()
    after = {k: p.detach().clone() for k, p in params.items()}
    for dtype in (torch.float32, torch.bfloat16):
        b = {k: v.to(dtype) for k, v in before.items()}
        a = {k: v.to(dtype) for k, v in after.items()}
        mc.save_file(b, tmp_path / "b.mithril")
        mc.save_file(a, tmp_path / "full.mithril")
        mc.save_file(a, tmp_path / "d.mithril", base=tmp_path / "b.mithril", delta_coding=coding)  # type: ignore[arg-type]
        assert_same_state(mc.load_file(tmp_path / "d.mithril"), a)
        used = {
            e
            for t in mc.inspect(tmp_path / "d.mithril")["tensors"].values()
            for e in t["encodings"]
        }
        assert float_delta(coding, dtype) in used, (dtype, used)
        full, delta = (
            (tmp_path / "full.mithril").stat().st_size,
            (tmp_path / "d.mithril").stat().st_size,
        )
        assert delta < 0.75 * full, (dtype, delta, full)


def test_new_reshaped_retyped_and_dropped_tensors(tmp_path: Path, small_state_dict) -> None:
    s0 = dict(small_state_dict)
    s1 = adam_like_step(s0, 1e-4, 3)
    s1["new.weight"] = torch.randn(7, 5)
    s1["ffn.weight"] = s1["ffn.weight"].reshape(-1)  # reshaped: stored whole
    s1["attn.query.bias"] = s1["attn.query.bias"].to(torch.float16)  # retyped: stored whole
    del s1["ln.weight"]
    mc.save_file(s0, tmp_path / "a.mithril")
    mc.save_file(s1, tmp_path / "b.mithril", base=tmp_path / "a.mithril")
    assert_same_state(mc.load_file(tmp_path / "b.mithril"), s1)
    enc = {k: set(t["encodings"]) for k, t in mc.inspect(tmp_path / "b.mithril")["tensors"].items()}
    for whole in ("new.weight", "ffn.weight", "attn.query.bias"):
        assert not enc[whole] & DELTA_ENCODINGS, (whole, enc[whole])


def test_base_hint_is_relative_so_the_directory_can_move(tmp_path: Path, run) -> None:
    (_, _, s2), (p0, _, _) = run
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(p0.parent, moved)
    assert_same_state(mc.load_file(moved / "s2.mithril"), s2)
    shutil.rmtree(moved)


def test_missing_base(run) -> None:
    _, (p0, p1, _) = run
    p0.unlink()
    with pytest.raises(mithril.BaseCheckpointError, match=r"s0\.mithril.*missing"):
        mc.load_file(p1)
    info = mc.inspect(p1)  # inspection of the delta itself still works, and says why
    assert "missing" in info["chain"][-1]["error"]


def test_base_replaced_by_another_file_with_the_same_name(run, small_state_dict) -> None:
    (s0, _, _), (p0, p1, _) = run
    other = adam_like_step(s0, 1e-3, 99)
    mc.save_file(other, p0)  # same name, different content
    with pytest.raises(mithril.BaseCheckpointError, match="replaced or altered"):
        mc.load_file(p1)
    # Identical tensors written again give the same content id: still a valid base.
    mc.save_file(s0, p0)
    mc.load_file(p1)


def test_base_with_altered_data_is_caught_by_checksums(run) -> None:
    _, (p0, p1, _) = run
    blob = bytearray(p0.read_bytes())
    blob[-10] ^= 0x40  # inside the last chunk's stored bytes: index untouched
    p0.write_bytes(bytes(blob))
    with pytest.raises(mithril.CorruptDataError, match=r"s0\.mithril"):
        mc.load_file(p1)


def test_explicit_base_overrides_the_hint(run, tmp_path: Path) -> None:
    (_, s1, _), (p0, p1, _) = run
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    moved = elsewhere / "renamed.mithril"
    os.replace(p0, moved)
    with pytest.raises(mithril.BaseCheckpointError):
        mc.load_file(p1)
    assert_same_state(mc.load_file(p1, base=moved), s1)
    with pytest.raises(mithril.BaseCheckpointError, match="loops back"):
        mc.load_file(p1, base=p1)
    other = tmp_path / "other.mithril"
    mc.save_file({"w": torch.zeros(3)}, other)
    with pytest.raises(mithril.BaseCheckpointError, match="replaced or altered"):
        mc.load_file(p1, base=other)


def test_chain_with_a_cycle(run, tmp_path: Path) -> None:
    """Content ids make a true cycle impossible to write, but a path can alias back into the
    chain (here a symlink standing where s0 was): the reader must stop, not loop."""
    _, (p0, _, p2) = run
    p0.unlink()
    os.symlink(p2, p0)
    with pytest.raises(mithril.BaseCheckpointError, match="loops back"):
        mc.load_file(p2)


def test_self_referencing_hint(tmp_path: Path, small_state_dict) -> None:
    a = tmp_path / "a.mithril"
    mc.save_file(small_state_dict, a)
    mc.save_file(adam_like_step(small_state_dict, 1e-4, 5), tmp_path / "b.mithril", base=a)
    os.replace(tmp_path / "b.mithril", a)  # a now names itself as its base
    with pytest.raises(mithril.BaseCheckpointError, match="loops back"):
        mc.load_file(a)


@pytest.mark.parametrize("keep", [0, 48, 100, 1000, -1])
def test_truncated_delta(run, keep: int) -> None:
    _, (_, p1, _) = run
    blob = p1.read_bytes()
    p1.write_bytes(blob[: keep if keep >= 0 else len(blob) - 1])
    with pytest.raises(mithril.MithrilError):
        mc.load_file(p1)


def test_delta_chunk_in_a_file_without_base_is_refused(run) -> None:
    from helpers import parse, rebuild

    _, (_, p1, _) = run
    c = parse(p1.read_bytes())
    c.index.pop("base")
    p1.write_bytes(rebuild(c))
    with pytest.raises(mithril.FormatError, match="names no base"):
        mc.load_file(p1)


def test_squash_and_rebase(run, tmp_path: Path) -> None:
    (_s0, _s1, s2), (p0, p1, p2) = run
    full = tmp_path / "s2.full.mithril"
    mc.squash(p2, full)
    assert mc.inspect(full)["base"] is None
    assert_same_state(mc.load_file(full), s2)
    # s2 re-expressed against s0 directly: one link instead of two.
    onto = tmp_path / "s2.on0.mithril"
    mc.rebase(p2, onto, p0)
    assert len(mc.inspect(onto)["chain"]) == 2
    assert_same_state(mc.load_file(onto), s2)
    # Both survive losing the intermediate delta.
    p1.unlink()
    assert_same_state(mc.load_file(full), s2)
    assert_same_state(mc.load_file(onto), s2)


def test_compress_tensor_with_base(small_state_dict, coding: str) -> None:
    x = small_state_dict["ffn.weight"]
    y = adam_like_step({"w": x}, 1e-4, 7)["w"]
    blob = mc.compress_tensor(y, base=x, delta_coding=coding)  # type: ignore[arg-type]
    # The same step in value everywhere is the hard case for fp32 packed blocks (fast),
    # which pay for each block's largest move in ulps: that of its value nearest zero.
    assert len(blob) < len(mc.compress_tensor(y)) * (0.7 if coding == "compact" else 0.76)
    assert_same_tensor(mc.decompress_tensor(blob, base=x), y)
    with pytest.raises(mithril.BaseCheckpointError, match="pass the base"):
        mc.decompress_tensor(blob)
    with pytest.raises(mithril.BaseCheckpointError, match="not the one"):
        mc.decompress_tensor(blob, base=y)
    with pytest.raises(mithril.BaseCheckpointError):
        mc.decompress_tensor(blob, base=x.to(torch.bfloat16))


def test_compress_tensor_stores_whole_what_the_base_does_not_help(coding: str) -> None:
    """Against a base of zeros (the optimizer moments' first base) no chunk gains from a
    delta: the blob records no base, holds what the plain one holds (its index has room
    for a base reference) and decodes without a base, or with any."""
    from mithril import _native

    g = torch.Generator().manual_seed(5)
    moment = torch.randn(300, 200, generator=g).abs() * 1e-3
    zeros = torch.zeros_like(moment)
    blob = mc.compress_tensor(moment, base=zeros, delta_coding=coding)  # type: ignore[arg-type]
    plain = mc.compress_tensor(moment)
    assert _native.Reader.from_bytes(blob).lone_tensor() == ("F32", [300, 200], False)
    assert len(plain) <= len(blob) <= len(plain) + 128
    assert blob.endswith(plain[-100_000:])
    assert_same_tensor(mc.decompress_tensor(blob), moment)
    assert_same_tensor(mc.decompress_tensor(blob, base=zeros), moment)
    assert_same_tensor(mc.decompress_tensor(blob, base=moment + 1), moment)
    # The base given is not read at all, so not even its size matters.
    assert_same_tensor(mc.decompress_tensor(blob, base=torch.zeros(3)), moment)
    # One step on, the base helps, and the blob needs it.
    step = moment * 0.999
    delta = mc.compress_tensor(step, base=moment, delta_coding=coding)  # type: ignore[arg-type]
    with pytest.raises(mithril.BaseCheckpointError, match="pass the base"):
        mc.decompress_tensor(delta)
    assert_same_tensor(mc.decompress_tensor(delta, base=moment), step)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool]
)
def test_every_dtype_and_extreme_bit_patterns(dtype: torch.dtype, coding: str) -> None:
    g = torch.Generator().manual_seed(11)
    n = 5000
    a = torch.randint(0, 256, (n * 8,), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (n * 8,), generator=g, dtype=torch.uint8)
    if dtype == torch.bool:
        x, y = a[:n] % 2 == 0, b[:n] % 2 == 0
    else:
        size = torch.empty(0, dtype=dtype).element_size()
        x, y = a[: n * size].view(dtype), b[: n * size].view(dtype)

    def through(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        blob = mc.compress_tensor(t, base=base, delta_coding=coding)  # type: ignore[arg-type]
        return mc.decompress_tensor(blob, base=base)

    assert_same_tensor(through(y, x), y)
    assert_same_tensor(through(x, x), x)
    # Every element one ulp or so away, with extreme bit patterns among them.
    near = (x.view(torch.uint8).view(-1) ^ (a[: x.numel() * x.element_size()] % 2)).view(x.dtype)
    assert_same_tensor(through(near.reshape(x.shape), x), near.reshape(x.shape))
    for n in range(1, 10):  # chunks that end in a short quad
        assert_same_tensor(through(y[:n], x[:n]), y[:n])
    empty = torch.empty(0, dtype=dtype)
    assert_same_tensor(through(empty, empty), empty)


def test_numpy_state_delta(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = {"w": rng.standard_normal((300, 40)).astype(np.float32)}
    b = {"w": a["w"] + np.float32(1e-4)}
    mc.save_file(a, tmp_path / "a.mithril")
    mc.save_file(b, tmp_path / "b.mithril", base=tmp_path / "a.mithril")
    got = mc.load_file(tmp_path / "b.mithril", framework="np")["w"]
    assert got.tobytes() == b["w"].tobytes()


def test_cli_compress_with_base_inspect_squash_rebase(
    tmp_path: Path, run_cli, small_state_dict
) -> None:
    from safetensors.torch import load_file, save_file

    s0 = small_state_dict
    s1 = adam_like_step(s0, 1e-4, 8)
    save_file(s0, tmp_path / "s0.safetensors")
    save_file(s1, tmp_path / "s1.safetensors")
    assert run_cli("checkpoint", "compress", tmp_path / "s0.safetensors", "-q")[0] == 0
    rc, out, err = run_cli(
        "checkpoint", "compress", tmp_path / "s1.safetensors", "--base", tmp_path / "s0.mithril"
    )
    assert rc == 0, err
    assert "delta against" in out
    rc, out, _ = run_cli("checkpoint", "inspect", tmp_path / "s1.mithril")
    assert rc == 0 and "chain (newest first)" in out and "s0.mithril" in out
    rc, _, err = run_cli(
        "checkpoint", "decompress", tmp_path / "s1.mithril", "-o", tmp_path / "back.safetensors"
    )
    assert rc == 0, err
    assert (tmp_path / "back.safetensors").read_bytes() == (
        tmp_path / "s1.safetensors"
    ).read_bytes()
    rc, _, err = run_cli(
        "checkpoint", "squash", tmp_path / "s1.mithril", "-o", tmp_path / "sq.mithril"
    )
    assert rc == 0, err
    rc, _, err = run_cli(
        "checkpoint",
        "rebase",
        tmp_path / "sq.mithril",
        "--onto",
        tmp_path / "s0.mithril",
        "-o",
        tmp_path / "rb.mithril",
    )
    assert rc == 0, err
    (tmp_path / "s0.mithril").rename(tmp_path / "gone.mithril")
    for name in ("sq.mithril",):
        got = mc.load_file(tmp_path / name)
        want = load_file(tmp_path / "s1.safetensors")
        assert_same_state(got, {k: want[k] for k in got})
    rc, _, err = run_cli(
        "checkpoint", "decompress", tmp_path / "rb.mithril", "-o", tmp_path / "x.safetensors"
    )
    assert rc == 1 and "missing" in err and "Traceback" not in err


def test_cli_fast_delta_coding(tmp_path: Path, run_cli, small_state_dict) -> None:
    from safetensors.torch import save_file

    s1 = adam_like_step(small_state_dict, 1e-4, 8)
    save_file(small_state_dict, tmp_path / "s0.safetensors")
    save_file(s1, tmp_path / "s1.safetensors")
    assert run_cli("checkpoint", "compress", tmp_path / "s0.safetensors", "-q")[0] == 0
    rc, _, err = run_cli(
        "checkpoint",
        "compress",
        tmp_path / "s1.safetensors",
        "--base",
        tmp_path / "s0.mithril",
        "--delta-coding",
        "fast",
    )
    assert rc == 0, err
    used = {
        e for t in mc.inspect(tmp_path / "s1.mithril")["tensors"].values() for e in t["encodings"]
    }
    assert {"sub-pack", "sub-quad"} <= used, used
    got = mc.load_file(tmp_path / "s1.mithril")
    assert_same_state(got, {k: s1[k] for k in got})
    rc, _, err = run_cli(
        "checkpoint", "compress", tmp_path / "s1.safetensors", "-f", "--delta-coding", "quick"
    )
    assert rc == 2 and "invalid choice" in err


def test_delta_coding_is_checked(tmp_path: Path, small_state_dict) -> None:
    x = small_state_dict["ffn.weight"]
    with pytest.raises(mithril.ConfigError, match="delta_coding"):
        mc.compress_tensor(x, base=x, delta_coding="small")  # type: ignore[arg-type]
    with pytest.raises(mithril.ConfigError, match="delta_coding"):
        mc.save_file({"x": x}, tmp_path / "x.mithril", delta_coding=None)  # type: ignore[arg-type]
    with pytest.raises(mithril.ConfigError, match="coding"):
        mc.DeltaPolicy(coding="fastest")  # type: ignore[arg-type]
    assert not (tmp_path / "x.mithril").exists()


def test_a_corrupt_delta_chunk_is_caught(run, coding: str) -> None:
    """A flipped byte inside the stored chunks of either coding is a CorruptDataError
    naming the tensor, never a wrong tensor."""
    from helpers import parse

    _, (_, p1, _) = run
    c = parse(p1.read_bytes())
    coded = [ch for ch in c.chunks() if ch[2]["encoding"] in FLOAT_DELTA[coding]]
    name, _, chunk = max(coded, key=lambda ch: ch[2]["length"])
    blob = bytearray(p1.read_bytes())
    blob[c.data_offset + chunk["offset"] + chunk["length"] // 2] ^= 0x40
    p1.write_bytes(bytes(blob))
    with pytest.raises(mithril.CorruptDataError, match=name):
        mc.load_file(p1)


def test_a_delta_cannot_replace_its_own_base(run, tmp_path: Path) -> None:
    (s0, s1, _), (p0, _, _) = run
    before = p0.read_bytes()
    with pytest.raises(mithril.ConfigError, match="its own base"):
        mc.save_file(s1, p0, base=p0)
    alias = tmp_path / "alias.mithril"
    os.symlink(p0, alias)
    with pytest.raises(mithril.ConfigError, match="its own base"):
        mc.save_file(s1, p0, base=alias)
    with pytest.raises(mithril.ConfigError, match="its own base"):
        mc.rebase(tmp_path / "s2.mithril", p0, p0)
    assert p0.read_bytes() == before
    assert_same_state(mc.load_file(p0), s0)


def test_delta_blob_decodes_into_a_caller_buffer_only_apart_from_its_base() -> None:
    """The native call behind ``decompress_tensor(base=...)`` copies base bytes only into
    the chunks stored as deltas, in place in the output: an output that overlaps the base,
    or is not the tensor's size, is refused before anything is written."""
    from mithril import _native

    x = torch.linspace(-1, 1, 70_000)
    y = x + 1e-4
    blob = mc.compress_tensor(y, base=x)
    reader = _native.Reader.from_bytes(blob)
    assert DELTA_ENCODINGS & set(reader.info("")[4]), "no chunk is a delta"
    base = x.numpy().view(np.uint8)
    out = np.zeros(base.size, np.uint8)
    reader.read_with_base_into("", base, out, 1)
    assert out.tobytes() == y.numpy().tobytes()
    with pytest.raises(ValueError, match="overlaps the base"):
        reader.read_with_base_into("", base, base, 1)
    before = base.tobytes()
    with pytest.raises(mithril.MithrilError, match="output buffer"):
        reader.read_with_base_into("", base, np.zeros(base.size - 4, np.uint8), 1)
    assert base.tobytes() == before


def test_fast_is_the_default_coding(small_state_dict) -> None:
    """Without ``delta_coding``, float deltas are coded fast (fp32 packed, bf16 in quads):
    the coding whose deltas code faster than a full checkpoint."""
    from mithril import _native

    assert mc.DeltaPolicy().coding == "fast"
    for name, want in (("ffn.weight", "sub-pack"), ("attn.query.weight", "sub-quad")):
        x = small_state_dict[name]
        y = adam_like_step({"w": x}, 1e-4, 5)["w"]
        used = set(_native.Reader.from_bytes(mc.compress_tensor(y, base=x)).info("")[4])
        assert want in used, (name, used)
