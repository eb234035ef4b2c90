"""The shared store on real servers started here on loopback: Redis (Debian's redis-server)
and an HTTP/WebDAV endpoint (Debian's nginx). Signed entries, refusal of anything unsigned,
wrongly signed or mislabelled, and misses within bounded time when the server is down, slow
or answers garbage: every case runs against both."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from mithril import ConfigError
from mithril.cache import Store, _native, _torch, pull, push
from mithril.cache._remote import HttpStore, RedisStore, SignedStore, open_remote

redis = pytest.importorskip("redis")
SECRET = b"fleet secret"


# Snapshots carry Inductor's precompiled headers from the temp dir: keep the real ones out.
pytestmark = pytest.mark.usefixtures("own_temp_dir")


class Server:
    """One emptied shared server, with raw access to its values for tampering."""

    def __init__(self, kind: str, url: str, data: Path | None = None) -> None:
        self.kind, self.url, self._data = kind, url, data
        if kind == "redis":
            self._client = redis.Redis.from_url(url)
            self._client.flushdb()
        else:
            assert data is not None
            for child in data.iterdir():
                shutil.rmtree(child)

    def store(self, secret: bytes = SECRET, timeout: float = 2.0) -> SignedStore:
        return open_remote(self.url, secret, timeout=timeout)

    def _path(self, kind: str, name: str) -> Path:
        assert self._data is not None
        leaf = name if kind == "blob" else _native.blob_name(name.encode())
        return self._data / kind / leaf

    def blob_names(self) -> list[str]:
        if self.kind == "redis":
            return sorted(
                k.decode().removeprefix("mithril:blob:")
                for k in self._client.keys("mithril:blob:*")
            )
        return sorted(p.name for p in (self._data / "blob").iterdir())  # type: ignore[operator]

    def get_raw(self, kind: str, name: str) -> bytes:
        if self.kind == "redis":
            return bytes(self._client.get(f"mithril:{kind}:{name}"))
        return self._path(kind, name).read_bytes()

    def set_raw(self, kind: str, name: str, value: bytes) -> None:
        if self.kind == "redis":
            self._client.set(f"mithril:{kind}:{name}", value)
        else:
            path = self._path(kind, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value)


@pytest.fixture(params=["redis", "http"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "redis":
        return Server("redis", request.getfixturevalue("redis_server"))
    url, data = request.getfixturevalue("http_server")
    return Server("http", url, data)


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


def test_push_then_pull_on_another_machine(tmp_path: Path, server: Server) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    files = fake_snapshot(a)
    report = push(a, server.store())
    assert report["uploaded"] == 2
    assert push(a, server.store())["present"] == 2
    got = pull(b, server.store())
    assert got["fetched"] == 2 and got["missing"] == 0
    base = _torch.managed_dirs(b.root, _torch.environment_id())["inductor"].parent
    for rel, data in files.items():
        assert (base / rel).read_bytes() == data


def test_wrong_secret_unsigned_and_tampered_entries_are_refused(
    tmp_path: Path, server: Server
) -> None:
    a = Store(tmp_path / "a")
    fake_snapshot(a)
    push(a, server.store())
    # Another secret: nothing is accepted.
    other = server.store(b"not the fleet's")
    b = Store(tmp_path / "b")
    assert pull(b, other)["fetched"] == 0 and other.refused == 1
    assert b.get_action(key()) is None
    # Tampered blob values and an unsigned one: refused, the rest still arrives.
    blobs = server.blob_names()
    value = bytearray(server.get_raw("blob", blobs[0]))
    value[-1] ^= 1
    server.set_raw("blob", blobs[0], bytes(value))
    server.set_raw("blob", blobs[1], b"plain bytes, no signature")
    remote = server.store()
    got = pull(Store(tmp_path / "c"), remote)
    assert got["fetched"] == 0 and got["missing"] == 2 and remote.refused == 2
    # Garbage in the action itself.
    server.set_raw("action", key(), b"MTH1" + b"\0" * 40)
    remote = server.store()
    assert remote.get_action(key()) is None and remote.refused == 1


def test_signed_blob_under_another_name_is_refused(server: Server) -> None:
    remote = server.store()
    name = "0" * 64  # a valid signature, but the content's blake3 is not this name
    remote.put_blob(name, b"code that claims another name")
    assert remote.get_blob(name) is None and remote.refused == 1


@pytest.mark.parametrize("scheme", ["redis", "http"])
def test_server_down_is_a_quick_miss(tmp_path: Path, scheme: str) -> None:
    suffix = "/0" if scheme == "redis" else ""
    remote = open_remote(f"{scheme}://127.0.0.1:{free_port()}{suffix}", SECRET, timeout=0.5)
    store = Store(tmp_path)
    fake_snapshot(store)
    t = time.perf_counter()
    assert pull(store, remote) == {"fetched": 0, "present": 0, "missing": 0}
    push(store, remote)
    assert time.perf_counter() - t < 5 and remote.failures >= 2


def test_slow_redis_times_out_into_a_miss(tmp_path: Path, redis_server: str) -> None:
    server = Server("redis", redis_server)
    store = Store(tmp_path)
    fake_snapshot(store)
    push(store, server.store())
    blocker = threading.Thread(
        target=lambda: redis.Redis.from_url(redis_server).execute_command("DEBUG", "SLEEP", "3")
    )
    blocker.start()
    time.sleep(0.2)
    remote = server.store(timeout=0.5)
    t = time.perf_counter()
    assert remote.get_action(key()) is None
    assert time.perf_counter() - t < 2 and remote.failures == 1
    blocker.join()


@pytest.fixture
def silent_http() -> Iterator[str]:
    """A listener that accepts connections and never answers: an HTTP server stuck past
    any timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_slow_http_server_times_out_into_a_miss(tmp_path: Path, silent_http: str) -> None:
    remote = open_remote(silent_http, SECRET, timeout=0.5)
    assert isinstance(remote, HttpStore)
    t = time.perf_counter()
    assert remote.get_action(key()) is None
    assert remote.get_blob("0" * 64) is None
    assert time.perf_counter() - t < 3 and remote.failures == 2


def test_http_server_errors_and_garbage_are_misses(tmp_path: Path, http_server: tuple) -> None:
    server = Server("http", *http_server)
    remote = server.store()
    # A directory where a value should be: nginx answers with an error page, not a value.
    (http_server[1] / "blob" / ("1" * 64)).mkdir(parents=True)
    assert remote.get_blob("1" * 64) is None
    server.set_raw("action", key(), os.urandom(300))
    assert remote.get_action(key()) is None
    assert remote.refused + remote.failures == 2


def test_remote_urls(tmp_path: Path) -> None:
    assert isinstance(open_remote("redis://127.0.0.1:1/0", SECRET), RedisStore)
    assert isinstance(open_remote("https://cache.example/mithril", SECRET), HttpStore)
    with pytest.raises(ConfigError, match="expected a redis"):
        open_remote("ftp://cache.example/", SECRET)
    with pytest.raises(ConfigError, match="secret"):
        open_remote("http://cache.example/", b"")


def test_env_command_pulls_from_the_configured_remote(
    tmp_path: Path, server: Server, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    a = Store(tmp_path / "a")
    files = fake_snapshot(a)
    push(a, server.store())
    monkeypatch.setenv("MITHRIL_CACHE_REMOTE", server.url)
    monkeypatch.setenv("MITHRIL_CACHE_SECRET", SECRET.decode())
    code, stdout, stderr = run_cli("cache", "env", "--dir", tmp_path / "b")
    assert code == 0, stderr
    base = _torch.managed_dirs(tmp_path / "b", _torch.environment_id())["inductor"].parent
    assert all((base / rel).read_bytes() == data for rel, data in files.items())
    assert "TORCHINDUCTOR_CACHE_DIR" in stdout
    monkeypatch.delenv("MITHRIL_CACHE_SECRET")
    code, _, stderr = run_cli("cache", "pull", "--dir", tmp_path / "c")
    assert code == 1 and "no secret" in stderr
