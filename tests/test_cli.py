"""``python -m mithril checkpoint ...``: compress, decompress, inspect, verify."""

from __future__ import annotations

import filecmp
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import mithril
import mithril.checkpoint as mc
import pytest
import safetensors.torch
import torch
from helpers import flip_bit, parse


@pytest.fixture
def small_st(tmp_path: Path, small_state_dict) -> Path:
    path = tmp_path / "small.safetensors"
    safetensors.torch.save_file(small_state_dict, str(path), metadata={"format": "pt"})
    return path


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "panicked" not in stderr


def test_compress_decompress_real_weights_byte_identical(
    tmp_path: Path, minilm_path: Path, run_cli
):
    packed = tmp_path / "minilm.mithril"
    back = tmp_path / "minilm.safetensors"
    rc, out, err = run_cli("checkpoint", "compress", minilm_path, "-o", packed)
    assert rc == 0, err
    assert packed.stat().st_size < minilm_path.stat().st_size
    assert str(packed) in out and "%" in out and "MB/s" in out
    assert "\r" not in err
    rc, out, err = run_cli("checkpoint", "decompress", packed, "-o", back, "-t", "1")
    assert rc == 0, err
    assert str(back) in out
    assert "\r" not in err
    assert filecmp.cmp(minilm_path, back, shallow=False)
    rc, out, err = run_cli("checkpoint", "verify", packed)
    assert rc == 0, err
    assert re.search(r": OK, \d+ chunks verified", out)


def test_default_output_names(tmp_path: Path, small_st: Path, run_cli):
    rc, _, err = run_cli("checkpoint", "compress", small_st.name, cwd=tmp_path)
    assert rc == 0, err
    packed = tmp_path / "small.mithril"
    assert packed.is_file()
    original = small_st.read_bytes()
    small_st.unlink()
    rc, _, err = run_cli("checkpoint", "decompress", packed.name, cwd=tmp_path)
    assert rc == 0, err
    assert small_st.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["small.mithril", "small.safetensors"]


def test_inspect_table(tmp_path: Path, small_st: Path, small_state_dict, run_cli):
    packed = tmp_path / "s.mithril"
    assert run_cli("checkpoint", "compress", small_st, "-o", packed, "-q")[0] == 0
    rc, out, err = run_cli("checkpoint", "inspect", packed)
    assert rc == 0, err
    lines = out.splitlines()
    header = lines[0].split()
    assert header == ["tensor", "dtype", "shape", "raw", "stored", "ratio", "encoding"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    for name, t in small_state_dict.items():
        assert name in rows, out
        row = rows[name]
        assert row[1] == {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        assert row[2] == "x".join(map(str, t.shape))
        assert row[-2].endswith("%")
    assert rows["attn.query.weight"][-1] == "float"
    assert rows["position_ids"][-1] == "zstd"
    info = mc.inspect(packed)
    total = next(line for line in lines if "tensors," in line)
    assert total.startswith(f"{len(small_state_dict)} tensors, ")
    assert f"({100 * info['ratio']:.2f}% of raw)" in total
    assert 'metadata: {"format": "pt"}' in out


def test_inspect_json(tmp_path: Path, small_state_dict, run_cli):
    packed = tmp_path / "s.mithril"
    mc.save_file(small_state_dict, packed, metadata={"step": "5"}, chunk_bytes=4096)
    rc, out, err = run_cli("checkpoint", "inspect", "--json", packed)
    assert rc == 0, err
    info = json.loads(out)
    assert info == json.loads(json.dumps(mc.inspect(packed)))
    assert list(info["tensors"]) == list(small_state_dict)
    assert info["metadata"] == {"step": "5"}
    assert info["file_size"] == packed.stat().st_size
    assert sum(t["stored_size"] for t in info["tensors"].values()) <= info["file_size"]


def test_inspect_scalar_and_empty_tensors(tmp_path: Path, run_cli):
    packed = tmp_path / "e.mithril"
    mc.save_file({"scalar": torch.tensor(1.0), "empty": torch.empty(0, 3)}, packed)
    rc, out, err = run_cli("checkpoint", "inspect", packed)
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["scalar"][2] == "()"
    assert rows["empty"][2] == "0x3"
    assert rows["empty"][-1] == "-"


def test_verify_ok(tmp_path: Path, small_state_dict, run_cli):
    packed = tmp_path / "v.mithril"
    mc.save_file(small_state_dict, packed, chunk_bytes=4096)
    n = mc.verify(packed)
    rc, out, err = run_cli("checkpoint", "verify", packed, "-t", "2")
    assert rc == 0, err
    assert f"OK, {n} chunks verified" in out
    assert err == ""
    rc, out, err = run_cli("checkpoint", "verify", "-q", packed)
    assert (rc, out, err) == (0, "", "")


def test_refuses_to_overwrite_without_force(tmp_path: Path, small_st: Path, run_cli):
    packed = tmp_path / "s.mithril"
    packed.write_bytes(b"precious")
    rc, _, err = run_cli("checkpoint", "compress", small_st, "-o", packed)
    assert rc == 1
    assert "--force" in err and str(packed) in err
    assert err.startswith("mithril: error:")
    _no_traceback(err)
    assert packed.read_bytes() == b"precious"

    rc, _, err = run_cli("checkpoint", "compress", small_st, "-o", packed, "-f")
    assert rc == 0, err
    assert mc.verify(packed) > 0

    back = tmp_path / "back.safetensors"
    back.write_bytes(b"also precious")
    rc, _, err = run_cli("checkpoint", "decompress", packed, "-o", back)
    assert rc == 1 and "--force" in err
    assert back.read_bytes() == b"also precious"
    rc, _, err = run_cli("checkpoint", "decompress", packed, "-o", back, "--force")
    assert rc == 0, err
    assert back.read_bytes() == small_st.read_bytes()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_output_equal_to_input_is_refused(tmp_path: Path, small_st: Path, run_cli):
    original = small_st.read_bytes()
    for out in [small_st, tmp_path / "." / small_st.name]:
        rc, _, err = run_cli("checkpoint", "compress", small_st, "-o", out, "-f")
        assert rc == 1
        assert "is the input file" in err
        _no_traceback(err)
    link = tmp_path / "link.safetensors"
    link.symlink_to(small_st)
    rc, _, err = run_cli("checkpoint", "compress", small_st, "-o", link, "-f")
    assert rc == 1 and "is the input file" in err
    assert small_st.read_bytes() == original

    packed = tmp_path / "s.mithril"
    assert run_cli("checkpoint", "compress", small_st, "-o", packed, "-q")[0] == 0
    before = packed.read_bytes()
    rc, _, err = run_cli("checkpoint", "decompress", packed, "-o", packed, "-f")
    assert rc == 1 and "is the input file" in err
    assert packed.read_bytes() == before


def test_corrupt_file_fails_verify(tmp_path: Path, small_state_dict, run_cli):
    packed = tmp_path / "c.mithril"
    mc.save_file(small_state_dict, packed, chunk_bytes=4096)
    blob = packed.read_bytes()
    c = parse(blob)
    name, i, entry = c.chunks()[3]
    packed.write_bytes(flip_bit(blob, c.data_offset + entry["offset"] + 1, 4))
    rc, out, err = run_cli("checkpoint", "verify", packed)
    assert rc == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mithril: error: corrupt data:")
    assert f'tensor "{name}" chunk {i}' in lines[0]
    _no_traceback(err)

    # Decompressing it fails the same way and writes nothing.
    out_path = tmp_path / "c.safetensors"
    rc, _, err = run_cli("checkpoint", "decompress", packed, "-o", out_path)
    assert rc == 1 and "corrupt data" in err
    assert not out_path.exists()
    assert sorted(os.listdir(tmp_path)) == ["c.mithril"]


def test_bad_files_give_one_error_line(tmp_path: Path, run_cli):
    missing = tmp_path / "missing.mithril"
    for cmd in ("verify", "inspect", "decompress", "compress"):
        rc, _, err = run_cli("checkpoint", cmd, missing)
        assert rc == 1, (cmd, err)
        assert err.startswith("mithril: error:") and "missing.mithril" in err
        assert len(err.strip().splitlines()) == 1
        _no_traceback(err)
    truncated = tmp_path / "t.mithril"
    truncated.write_bytes(mc.save({"a": torch.ones(100)})[:-5])
    rc, _, err = run_cli("checkpoint", "verify", truncated)
    assert rc == 1 and "format error" in err and "truncated" in err
    not_st = tmp_path / "junk.safetensors"
    not_st.write_bytes(b"\xff" * 64)
    rc, _, err = run_cli("checkpoint", "compress", not_st)
    assert rc == 1 and "not a valid safetensors file" in err
    assert not (tmp_path / "junk.mithril").exists()


def test_non_tty_runs_print_no_progress_bar(tmp_path: Path, small_st: Path, run_cli):
    packed = tmp_path / "p.mithril"
    rc, out, err = run_cli("checkpoint", "compress", small_st, "-o", packed)
    assert rc == 0 and err == ""
    assert "\r" not in out + err
    rc, out, err = run_cli("checkpoint", "decompress", packed, "-o", tmp_path / "p.safetensors")
    assert rc == 0 and err == ""
    assert "\r" not in out + err


def test_tty_runs_draw_a_progress_bar(tmp_path: Path, small_st: Path):
    """With stderr on a terminal the bar is drawn (and ends with a newline)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mithril", "checkpoint", "compress", small_st, "-q"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    assert "\r" in err and "compress small.safetensors [" in err and "100.0%" in err
    assert proc.stdout == b""


def test_usage(run_cli):
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.strip() == f"mithril {mithril.__version__}"
    rc, out, _ = run_cli()
    assert rc == 2 and "checkpoint" in out
    rc, _, err = run_cli("checkpoint")
    assert rc == 2 and "usage" in err
    rc, _, err = run_cli("checkpoint", "frobnicate")
    assert rc == 2 and "invalid choice" in err
    for bad in ("0", "-3", "two"):
        rc, _, err = run_cli("checkpoint", "verify", "x.mithril", "-t", bad)
        assert rc == 2 and "positive number of threads" in err, err
        _no_traceback(err)
    rc, out, _ = run_cli("checkpoint", "compress", "--help")
    assert rc == 0 and "--force" in out
