"""torch.compile through the store: a real compile on one "machine", its bundle imported on
another (another store path, HOME, TMPDIR and working directory), and a warm start there that
compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import SMALL_COMPILE, machine, machine_env, run_json
from mithril import FormatError
from mithril.cache import Store, _torch, env, environment_id, import_bundle

COMPILE = (
    SMALL_COMPILE
    + """
print(json.dumps({"counters": dict(counters["inductor"]), "y": y.tolist()}))
"""
)


def cli_on(m: dict[str, Path], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``mithril ARGS`` run on "machine" ``m`` (its HOME, TMPDIR, USER, working directory)."""
    return subprocess.run(
        [sys.executable, "-m", "mithril", *map(str, args)],
        cwd=m["work"],
        env=machine_env(m),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def compile_on(m: dict[str, Path]) -> dict:
    """Run the compile in a fresh process on "machine" ``m`` with the store's exports."""
    variables = machine_env(m)
    variables.update(env(Store(m["store"])))
    return run_json(m, variables, COMPILE)


def so_files(store: Path) -> set[Path]:
    return {p.relative_to(store) for p in store.rglob("*.so")}


@pytest.fixture(scope="module")
def first_machine(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict, Path]:
    tmp = tmp_path_factory.mktemp("a")
    a = machine(tmp, "alice")
    cold = compile_on(a)
    bundle = tmp / "bundle.tar"
    done = cli_on(a, "cache", "export", bundle, "--dir", a["store"])
    assert done.returncode == 0, done.stderr
    assert environment_id() in done.stdout
    return a, cold, bundle


def headers(m: dict[str, Path]) -> dict[Path, float]:
    """Precompiled headers in the machine's temp dir, with their modification times."""
    return {p: p.stat().st_mtime for p in m["tmp"].rglob("*.gch")}


def test_env_points_at_the_environment_directory(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    code, stdout, _ = run_cli("cache", "env", "--dir", tmp_path)
    assert code == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in stdout.splitlines())
    base = tmp_path / "torch" / environment_id()
    assert exports["TORCHINDUCTOR_CACHE_DIR"] == str(base / "inductor")
    assert exports["TRITON_CACHE_DIR"] == str(base / "triton")
    assert exports["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert exports["MITHRIL_CACHE_TORCH_BACKEND"] == "1"
    assert exports["PYTHONPATH"].split(os.pathsep)[0] == str(_torch.AUTOLOAD_DIR)


def test_new_machine_warm_start_compiles_nothing(
    tmp_path: Path, first_machine: tuple[dict[str, Path], dict, Path]
) -> None:
    _, cold, bundle = first_machine
    assert cold["counters"].get("fxgraph_cache_miss") == 1
    a = first_machine[0]
    b = machine(tmp_path, "bob")
    done = cli_on(b, "cache", "import", bundle, "--dir", b["store"])
    assert done.returncode == 0, done.stderr
    before = so_files(b["store"])
    assert before  # the compiled kernels travelled
    pch = headers(b)
    assert len(pch) == len(headers(a)) > 0  # and the precompiled header, into bob's temp dir
    warm = compile_on(b)
    assert warm["counters"].get("fxgraph_cache_hit") == 1
    assert "fxgraph_cache_miss" not in warm["counters"]
    assert so_files(b["store"]) == before  # nothing was compiled
    assert headers(b) == pch  # nor the header rebuilt
    assert warm["y"] == cold["y"]


def test_damaged_bundle_blob_is_refused_and_the_compile_still_works(
    tmp_path: Path, first_machine: tuple[dict[str, Path], dict, Path]
) -> None:
    _, cold, bundle = first_machine
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(bundle) as src, tarfile.open(damaged, "w") as dst:
        flipped = None
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if flipped is None and member.name.startswith("blobs/") and len(data) > 100:
                data = data[:50] + bytes([data[50] ^ 0xFF]) + data[51:]
                flipped = member.name.removeprefix("blobs/")
            import io

            dst.addfile(member, io.BytesIO(data))
    c = machine(tmp_path, "carol")
    done = cli_on(c, "cache", "import", damaged, "--dir", c["store"])
    assert (
        done.returncode == 1
        and f"refused (content does not match its name): {flipped}" in done.stderr
    )
    result = compile_on(c)
    assert result["y"] == cold["y"]


def test_another_environment_is_a_miss_not_a_wrong_kernel(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_machine: tuple[dict[str, Path], dict, Path],
) -> None:
    _, _, bundle = first_machine
    here = _torch.fingerprint()
    other = {**here, "cpu_isa": "AVX512" if here["cpu_isa"] != "AVX512" else "AVX2"}
    assert _torch.environment_id(other) != _torch.environment_id(here)
    monkeypatch.setattr(_torch, "fingerprint", lambda: other)
    d = machine(tmp_path, "dave")
    import_bundle(bundle, Store(d["store"]))  # files land in the bundle's environment only
    mine = _torch.managed_dirs(d["store"], _torch.environment_id())
    assert not any(p.exists() and any(p.iterdir()) for p in mine.values())


def test_bad_bundles(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(FormatError, match="not a readable cache bundle"):
        import_bundle(junk, Store(tmp_path / "s"))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(FormatError, match="manifest"):
        import_bundle(empty, Store(tmp_path / "s"))
    e = machine(tmp_path, "eve")  # nothing compiled on this machine, no headers in its TMPDIR
    done = cli_on(e, "cache", "export", tmp_path / "out.tar", "--dir", e["store"])
    assert done.returncode == 1 and "nothing to export" in done.stderr
    assert not (tmp_path / "out.tar").exists()


def test_another_torch_version_is_a_clean_miss(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_machine: tuple[dict[str, Path], dict, Path],
) -> None:
    """A bundle made under another torch lands in that torch's directory: this torch starts
    cold there and compiles correctly."""
    _, cold, bundle = first_machine
    here = _torch.fingerprint()
    monkeypatch.setattr(_torch, "fingerprint", lambda: {**here, "torch": "0.0.0-other"})
    f = machine(tmp_path, "frank")
    report = import_bundle(bundle, Store(f["store"]))
    assert report["environments"] == [_torch.environment_id(here)]
    mine = _torch.managed_dirs(f["store"], _torch.environment_id())
    assert not any(p.exists() for p in mine.values())
    monkeypatch.undo()
    # The real torch, with an empty directory of its own, compiles from scratch and agrees.
    g = machine(tmp_path, "grace")
    result = compile_on(g)
    assert result["counters"].get("fxgraph_cache_miss") == 1 and result["y"] == cold["y"]


def test_two_processes_compiling_into_one_store_at_once(tmp_path: Path) -> None:
    h = machine(tmp_path, "heidi")
    variables = machine_env(h)
    variables.update(env(Store(h["store"])))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COMPILE],
            cwd=h["work"],
            env=variables,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0]["y"] == results[1]["y"]
    # Whatever both wrote is whole: a third process hits and agrees.
    third = compile_on(h)
    assert third["counters"].get("fxgraph_cache_hit") == 1 and third["y"] == results[0]["y"]
    assert Store(h["store"]).verify()["corrupt"] == []
