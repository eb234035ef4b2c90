"""mithril.cache.Store: content addressing, verification on read, atomic concurrent writes,
the size cap and the CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from mithril import ConfigError
from mithril.cache import Store, default_dir

BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def blob_path(store: Store, name: str) -> Path:
    return store.root / "v1" / "blobs" / name[:2] / name[2:]


def test_layout_names_and_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    assert (
        (tmp_path / "c" / "CACHEDIR.TAG")
        .read_text()
        .startswith("Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert store.put(b"") == BLAKE3_EMPTY
    name = store.put(bytearray(b"kernel bytes"))
    assert store.put(memoryview(b"kernel bytes")) == name and len(name) == 64
    assert store.get(name) == b"kernel bytes" and name in store
    assert store.get("0" * 64) is None and "0" * 64 not in store
    with pytest.raises(ConfigError, match="not a blob name"):
        store.get("../../etc/passwd")


def test_default_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MITHRIL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "mithril"
    monkeypatch.setenv("MITHRIL_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_dir() == tmp_path / "explicit"
    assert Store().root == tmp_path / "explicit"


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other-content"])
def test_damaged_blobs_are_misses_and_quarantined(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path)
    name = store.put(os.urandom(4096))
    other = store.put(b"a different blob")
    path = blob_path(store, name)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[1234] ^= 0x01
    elif damage == "truncate":
        data = data[:1000]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"a different blob")  # valid content, wrong address
    path.write_bytes(bytes(data))
    assert store.get(name) is None
    assert not path.exists()
    assert store.stats()["quarantined"] == 1 and store.stats()["corrupt"] == 1
    assert store.get(other) == b"a different blob"
    assert store.put(b"a different blob") == other


def test_verify_catches_every_damaged_blob(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path)
    names = [store.put(os.urandom(100 + i)) for i in range(20)]
    for n in names[::3]:
        p = blob_path(store, n)
        data = p.read_bytes()
        # Flip the last byte: setting it to a fixed value leaves a blob whose last byte
        # already had that value undamaged (one random blob in 256).
        p.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    code, stdout, _ = run_cli("cache", "verify", "--dir", tmp_path, "--json")
    report = json.loads(stdout)
    assert code == 1 and sorted(report["corrupt"]) == sorted(names[::3])
    assert report["blobs"] == 20
    code, _, _ = run_cli("cache", "verify", "--dir", tmp_path)
    assert code == 0  # the damaged ones were quarantined
    assert all(store.get(n) is not None for i, n in enumerate(names) if i % 3)


def test_actions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    so, src = store.put(b"\x7fELF..."), store.put(b"int main() {}")
    store.put_action("fx-graph-key", {"kernel.so": so, "kernel.cpp": src}, {"torch": "2.15"})
    got = store.get_action("fx-graph-key")
    assert got == {
        "key": "fx-graph-key",
        "outputs": {"kernel.so": so, "kernel.cpp": src},
        "meta": {"torch": "2.15"},
    }
    assert store.get_action("unknown") is None
    with pytest.raises(ConfigError, match="not in the store"):
        store.put_action("k", {"x": "f" * 64})
    with pytest.raises(ConfigError, match="empty"):
        store.put_action("", {"x": so})
    # An action whose blob is damaged or gone is a miss.
    blob_path(store, so).write_bytes(b"garbage")
    assert store.get(so) is None
    assert store.get_action("fx-graph-key") is None
    assert store.gc()["removed_actions"] == 1


def test_size_cap_evicts_least_recently_used(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path, max_bytes=10_000)
    names = []
    for i in range(8):
        names.append(store.put(bytes([i]) * 2000))
        time.sleep(0.01)
        store.get(names[0])  # the first stays the most recently used
        time.sleep(0.01)
    stats = store.stats()
    assert stats["blob_bytes"] <= 10_000 and stats["evicted"] > 0
    assert names[0] in store and names[-1] in store and names[1] not in store
    code, stdout, _ = run_cli("cache", "gc", "--dir", tmp_path, "--max-bytes", "4K", "--json")
    assert code == 0 and json.loads(stdout)["remaining_bytes"] <= 4096
    with pytest.raises(ConfigError):
        Store(tmp_path, max_bytes=0)


def _writer(root: str, seed: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    store = Store(root)
    names = []
    for i in range(200):
        data = f"shared blob {i}".encode() * 50  # the same 200 blobs from every process
        names.append(store.put(data))
        store.put_action(f"key-{i}", {"out": names[-1]}, {"writer": str(seed)})
        store.put(os.urandom(64))  # and some of its own
    out.put(names)


def test_processes_writing_one_store_at_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, q)) for s in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r == results[0] for r in results)
    store = Store(tmp_path)
    report = store.verify()
    assert report["corrupt"] == [] and report["blobs"] == 200 + 4 * 200
    for i, name in enumerate(results[0]):
        action = store.get_action(f"key-{i}")
        assert action is not None and action["outputs"] == {"out": name}
        assert store.get(name) == f"shared blob {i}".encode() * 50
    assert not list((tmp_path / "v1" / "tmp").iterdir())


def test_cli_stats(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    Store(tmp_path).put(b"x" * 100)
    code, stdout, _ = run_cli("cache", "stats", "--dir", tmp_path)
    assert code == 0 and "blobs        1 (100 B" in stdout
    code, _, stderr = run_cli("cache", "gc", "--dir", tmp_path, "--max-bytes", "lots")
    assert code == 2 and "expected a size" in stderr
