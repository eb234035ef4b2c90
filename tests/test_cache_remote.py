"""The shared store on a real Redis server (Debian's redis-server, started here on loopback):
signed entries, refusal of anything unsigned, wrongly signed or mislabelled, and misses within
bounded time when the server is down, slow or answers garbage."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port
from mithril import ConfigError
from mithril.cache import Store, _torch, pull, push
from mithril.cache._remote import RedisStore

redis = pytest.importorskip("redis")
SECRET = b"fleet secret"


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots also carry Inductor's precompiled headers from the temp dir: keep this
    process's real ones out of these tests."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.setenv("TMPDIR", str(systmp))


@pytest.fixture
def url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


def fake_snapshot(store: Store) -> dict[str, bytes]:
    """Files in this environment's managed directory, recorded as a snapshot."""
    dirs = _torch.managed_dirs(store.root, _torch.environment_id())
    files = {"inductor/ab/kernel.so": os.urandom(5000), "inductor/fxgraph/x/entry": b"graph"}
    for rel, data in files.items():
        p = dirs["inductor"].parent / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def key() -> str:
    return _torch.ACTION_PREFIX + _torch.environment_id()


def test_push_then_pull_on_another_machine(tmp_path: Path, url: str) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    files = fake_snapshot(a)
    report = push(a, RedisStore(url, SECRET))
    assert report["uploaded"] == 2
    assert push(a, RedisStore(url, SECRET))["present"] == 2
    got = pull(b, RedisStore(url, SECRET))
    assert got["fetched"] == 2 and got["missing"] == 0
    base = _torch.managed_dirs(b.root, _torch.environment_id())["inductor"].parent
    for rel, data in files.items():
        assert (base / rel).read_bytes() == data


def test_wrong_secret_unsigned_and_tampered_entries_are_refused(tmp_path: Path, url: str) -> None:
    a = Store(tmp_path / "a")
    fake_snapshot(a)
    push(a, RedisStore(url, SECRET))
    # Another secret: nothing is accepted.
    other = RedisStore(url, b"not the fleet's")
    b = Store(tmp_path / "b")
    assert pull(b, other)["fetched"] == 0 and other.refused == 1
    assert b.get_action(key()) is None
    # Tampered blob values and an unsigned one: refused, the rest still arrives.
    client = redis.Redis.from_url(url)
    blobs = sorted(k for k in client.keys("mithril:blob:*"))
    value = bytearray(client.get(blobs[0]))
    value[-1] ^= 1
    client.set(blobs[0], bytes(value))
    client.set(blobs[1], b"plain bytes, no signature")
    remote = RedisStore(url, SECRET)
    got = pull(Store(tmp_path / "c"), remote)
    assert got["fetched"] == 0 and got["missing"] == 2 and remote.refused == 2
    # Garbage in the action itself.
    client.set(f"mithril:action:{key()}", b"MTH1" + b"\0" * 40)
    remote = RedisStore(url, SECRET)
    assert remote.get_action(key()) is None and remote.refused == 1


def test_signed_blob_under_another_name_is_refused(tmp_path: Path, url: str) -> None:
    remote = RedisStore(url, SECRET)
    name = "0" * 64  # a valid signature, but the content's blake3 is not this name
    remote.put_blob(name, b"code that claims another name")
    assert remote.get_blob(name) is None and remote.refused == 1


def test_server_down_is_a_quick_miss(tmp_path: Path) -> None:
    remote = RedisStore(f"redis://127.0.0.1:{free_port()}/0", SECRET, timeout=0.5)
    store = Store(tmp_path)
    fake_snapshot(store)
    t = time.perf_counter()
    assert pull(store, remote) == {"fetched": 0, "present": 0, "missing": 0}
    push(store, remote)
    assert time.perf_counter() - t < 5 and remote.failures >= 2


def test_slow_server_times_out_into_a_miss(tmp_path: Path, url: str) -> None:
    store = Store(tmp_path)
    fake_snapshot(store)
    push(store, RedisStore(url, SECRET))
    blocker = threading.Thread(
        target=lambda: redis.Redis.from_url(url).execute_command("DEBUG", "SLEEP", "3")
    )
    blocker.start()
    time.sleep(0.2)
    remote = RedisStore(url, SECRET, timeout=0.5)
    t = time.perf_counter()
    assert remote.get_action(key()) is None
    assert time.perf_counter() - t < 2 and remote.failures == 1
    blocker.join()


def test_env_command_pulls_from_the_configured_remote(
    tmp_path: Path, url: str, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    a = Store(tmp_path / "a")
    files = fake_snapshot(a)
    push(a, RedisStore(url, SECRET))
    monkeypatch.setenv("MITHRIL_CACHE_REMOTE", url)
    monkeypatch.setenv("MITHRIL_CACHE_SECRET", SECRET.decode())
    code, stdout, stderr = run_cli("cache", "env", "--dir", tmp_path / "b")
    assert code == 0, stderr
    base = _torch.managed_dirs(tmp_path / "b", _torch.environment_id())["inductor"].parent
    assert all((base / rel).read_bytes() == data for rel, data in files.items())
    assert "TORCHINDUCTOR_CACHE_DIR" in stdout
    monkeypatch.delenv("MITHRIL_CACHE_SECRET")
    code, _, stderr = run_cli("cache", "pull", "--dir", tmp_path / "c")
    assert code == 1 and "no secret" in stderr
    with pytest.raises(ConfigError, match="secret"):
        RedisStore(url, b"")
