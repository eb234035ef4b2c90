"""Mithril as torch's own remote-cache backend, entry by entry: a real compile on one
"machine" puts its FX graph and AOTAutograd entries, with their kernels, into a signed shared
store on a real Redis server; a fresh machine that shares nothing else hits them and compiles
nothing; a wrong secret or a server that is down is a clean miss and the compile still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    PLAIN_REPORT,
    SMALL_COMPILE,
    free_port,
    machine,
    machine_env,
    run_json,
    under_mithril_env,
)
from mithril.cache import Store, _entries, _torch
from mithril.cache._remote import RedisStore

redis = pytest.importorskip("redis")
SECRET = "fleet secret"

# The script switches the backend on itself, before compiling.
COMPILE = (
    """
import os
import mithril.cache as mc
mc.enable(mc.Store(os.environ["STORE"]))
"""
    + SMALL_COMPILE
    + """
print(json.dumps({
    "inductor": dict(counters["inductor"]),
    "aot": dict(counters["aot_autograd"]),
    "entries": mc.entry_stats(),
    "y": y.tolist(),
}))
"""
)


def shared_env(m: dict[str, Path], remote: str, secret: str = SECRET) -> dict[str, str]:
    """Machine ``m``'s environment with the shared store at ``remote`` configured."""
    variables = machine_env(m)
    variables.update(
        MITHRIL_CACHE_REMOTE=remote, MITHRIL_CACHE_SECRET=secret, MITHRIL_CACHE_REMOTE_TIMEOUT="0.5"
    )
    return variables


def compile_on(m: dict[str, Path], remote: str, secret: str = SECRET) -> dict:
    """The compile in a fresh process on "machine" ``m`` (its own HOME, USER, TMPDIR, working
    directory and store), sharing only the server at ``remote``."""
    return run_json(m, {**shared_env(m, remote, secret), "STORE": str(m["store"])}, COMPILE)


def plain_compile_under_env(m: dict[str, Path], remote: str) -> dict:
    """``eval "$(mithril cache env)"`` on machine ``m``, then an unchanged script: only the
    environment switches the backend on."""
    return under_mithril_env(m, shared_env(m, remote), PLAIN_REPORT)


def kernels(m: dict[str, Path]) -> list[Path]:
    return sorted(m["store"].rglob("*.so"))


@pytest.fixture(scope="module")
def shared(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A server holding what one cold compile on machine alice put there."""
    redis.Redis.from_url(redis_server).flushdb()
    alice = machine(tmp_path_factory.mktemp("entries"), "alice")
    cold = compile_on(alice, redis_server)
    return redis_server, cold


def test_cold_compile_puts_signed_entries_with_their_kernels(shared: tuple[str, dict]) -> None:
    url, cold = shared
    assert cold["inductor"].get("fxgraph_cache_miss") == 1
    assert cold["entries"]["puts"] >= 2  # the FX graph and the AOTAutograd entry
    assert cold["entries"]["errors"] == 0
    client = redis.Redis.from_url(url)
    actions = client.keys("mithril:action:torch-entry/*")
    assert len(actions) >= 2
    remote = RedisStore(url, SECRET.encode())
    fx = [k.decode().removeprefix("mithril:action:") for k in actions if b"fx-graph" in k]
    assert fx
    outputs = remote.get_action(fx[0])["outputs"]  # type: ignore[index]
    assert _entries.ENTRY in outputs
    assert any(name.endswith(".so") for name in outputs)  # the compiled kernels travel
    assert any(name.startswith("pch/") for name in outputs)  # and the precompiled header


def test_new_machine_hits_through_the_backend_and_compiles_nothing(
    shared: tuple[str, dict], tmp_path: Path
) -> None:
    url, cold = shared
    bob = machine(tmp_path, "bob")
    warm = compile_on(bob, url)
    assert warm["inductor"].get("fxgraph_cache_hit") == 1
    assert "fxgraph_cache_miss" not in warm["inductor"]
    assert warm["entries"]["hits"] >= 1 and warm["entries"]["restored"] > 0
    restored = kernels(bob)
    assert restored
    # Every kernel is a hard link to a verified blob: none was compiled on this machine.
    assert all(p.stat().st_nlink >= 2 for p in restored)
    headers = list(bob["tmp"].rglob("*.gch"))
    assert headers and all(p.stat().st_nlink >= 2 for p in headers)
    assert warm["y"] == cold["y"]


def test_wrong_secret_is_a_clean_miss_and_the_compile_still_works(
    shared: tuple[str, dict], tmp_path: Path
) -> None:
    url, cold = shared
    carol = machine(tmp_path, "carol")
    got = compile_on(carol, url, secret="not the fleet's")
    assert got["inductor"].get("fxgraph_cache_miss") == 1
    assert got["entries"]["hits"] == 0 and got["entries"]["remote_refused"] >= 1
    assert got["y"] == cold["y"]


def test_server_down_is_a_clean_miss_and_the_compile_still_works(
    shared: tuple[str, dict], tmp_path: Path
) -> None:
    _, cold = shared
    dave = machine(tmp_path, "dave")
    got = compile_on(dave, f"redis://127.0.0.1:{free_port()}/0")
    assert got["inductor"].get("fxgraph_cache_miss") == 1
    assert got["entries"]["remote_failures"] >= 1 and got["entries"]["errors"] == 0
    assert got["y"] == cold["y"]


def test_entries_travel_over_an_http_endpoint_too(
    http_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, data = http_server
    erin, frank = machine(tmp_path, "erin"), machine(tmp_path, "frank")
    cold = compile_on(erin, url + "/entries")
    assert cold["inductor"].get("fxgraph_cache_miss") == 1 and cold["entries"]["puts"] >= 2
    assert list((data / "entries" / "action").iterdir())
    warm = compile_on(frank, url + "/entries")
    assert warm["inductor"].get("fxgraph_cache_hit") == 1 and warm["entries"]["restored"] > 0
    assert all(p.stat().st_nlink >= 2 for p in kernels(frank))
    assert warm["y"] == cold["y"]


def test_environment_alone_switches_the_backend_on(
    http_server: tuple[str, Path], tmp_path: Path
) -> None:
    url = http_server[0] + "/env-only"
    gina, hugo = machine(tmp_path, "gina"), machine(tmp_path, "hugo")
    cold = plain_compile_under_env(gina, url)
    assert cold["entries"]["puts"] >= 2 and cold["inductor"].get("fxgraph_cache_miss") == 1
    warm = plain_compile_under_env(hugo, url)
    assert warm["entries"]["hits"] >= 1 and warm["inductor"].get("fxgraph_cache_hit") == 1
    assert all(p.stat().st_nlink >= 2 for p in kernels(hugo))
    assert warm["y"] == cold["y"]


def test_startup_hook_runs_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = '1'\n")
    variables = dict(os.environ)
    variables["PYTHONPATH"] = os.pathsep.join([str(_torch.AUTOLOAD_DIR), str(other)])
    variables["MITHRIL_CACHE_TORCH_BACKEND"] = "1"
    code = "import os, sys; print(os.environ.get('SHADOWED_RAN'), 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=variables, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "False"]  # chained, and torch not imported at start-up


# The entry cache itself, without a compile.


def compiled_file(store: Store, rel: str, data: bytes) -> Path:
    path = _torch.managed_dirs(store.root, _torch.environment_id())["inductor"] / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_entry_round_trip_restores_the_files_compiled_with_it(
    tmp_path: Path, own_temp_dir: Path
) -> None:
    a = Store(tmp_path / "a")
    cache = _entries.EntryCache(a, since=0)
    kernel = os.urandom(3000)
    compiled_file(a, "ab/cab.main.so", kernel)
    compiled_file(a, "fxgraph/xy/entry", b"torch's own copy, not carried")
    cache.put("pt2:fx-graph-v1::k1:c1", b'{"data": "graph"}', with_files=True)
    cache.put("pt2:autotune::k2:c1", b'{"best": 3}', with_files=False)
    action = a.get_action(cache.action_key("pt2:fx-graph-v1::k1:c1"))
    assert action is not None
    assert set(action["outputs"]) == {_entries.ENTRY, "inductor/ab/cab.main.so"}
    assert set(a.get_action(cache.action_key("pt2:autotune::k2:c1"))["outputs"]) == {  # type: ignore[index]
        _entries.ENTRY
    }
    # Same store, kernel gone from the cache directory: a hit puts it back.
    (a.root / "torch").joinpath(_torch.environment_id(), "inductor", "ab", "cab.main.so").unlink()
    assert cache.get("pt2:fx-graph-v1::k1:c1") == b'{"data": "graph"}'
    restored = _torch.managed_dirs(a.root, _torch.environment_id())["inductor"] / "ab/cab.main.so"
    assert restored.read_bytes() == kernel
    assert cache.get("pt2:fx-graph-v1::unknown:c1") is None
    assert cache.counts == {"hits": 1, "misses": 1, "puts": 2, "restored": 1, "errors": 0}


def test_files_older_than_the_process_are_not_attached(tmp_path: Path, own_temp_dir: Path) -> None:
    a = Store(tmp_path / "a")
    old = compiled_file(a, "cd/old.main.so", b"compiled by an earlier process")
    os.utime(old, (1_000_000, 1_000_000))
    compiled_file(a, "ef/new.main.so", b"compiled now")
    cache = _entries.EntryCache(a, since=2_000_000)
    cache.put("k", b"{}", with_files=True)
    outputs = a.get_action(cache.action_key("k"))["outputs"]  # type: ignore[index]
    assert set(outputs) == {_entries.ENTRY, "inductor/ef/new.main.so"}


def test_damaged_entry_is_a_miss(tmp_path: Path, own_temp_dir: Path) -> None:
    a = Store(tmp_path / "a")
    cache = _entries.EntryCache(a, since=0)
    cache.put("k", b'{"data": "graph"}', with_files=False)
    blob = a.get_action(cache.action_key("k"))["outputs"][_entries.ENTRY]  # type: ignore[index]
    path = _torch.blob_path(a, blob)
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(damaged))
    assert cache.get("k") is None
    assert a.stats()["corrupt"] >= 1
