"""A shared store for a fleet on a Redis server, with the local store as its first level.

Every value is signed: ``b"MTH1" + HMAC-SHA256(secret, kind | name | payload) + payload``.
A reader refuses a value whose signature does not verify (wrong secret, unsigned, tampered
or garbage), and re-checks that a blob's content has the blake3 name it is stored under, so a
shared cache cannot be used to run code on its readers without the secret. Any server
failure (down, slow past ``timeout``, answering garbage) is a miss or a skipped upload within
bounded time: compiling never waits on the server or fails because of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from mithril import _native
from mithril.errors import ConfigError

log = logging.getLogger("mithril.cache")

MAGIC = b"MTH1"
_SIG = 32


class RedisStore:
    """Blobs and actions on a Redis server at ``url`` (``redis://host:port/db``), signed with
    ``secret`` (bytes shared by the fleet)."""

    def __init__(
        self, url: str, secret: bytes, *, timeout: float = 2.0, prefix: str = "mithril:"
    ) -> None:
        if not secret:
            raise ConfigError("a shared store needs a non-empty secret to sign its entries")
        try:
            import redis
        except ImportError as e:  # pragma: no cover - the cache extra installs it
            raise ConfigError("the Redis store needs the 'redis' package") from e
        self._secret = bytes(secret)
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.refused = 0
        self.failures = 0

    def _mac(self, kind: str, name: str, payload: bytes) -> bytes:
        msg = f"{kind}|{name}|".encode() + payload
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def _sign(self, kind: str, name: str, payload: bytes) -> bytes:
        return MAGIC + self._mac(kind, name, payload) + payload

    def _open(self, kind: str, name: str, value: Any) -> bytes | None:
        if not isinstance(value, bytes) or len(value) < len(MAGIC) + _SIG:
            self.refused += 1
            return None
        if value[: len(MAGIC)] != MAGIC:
            self.refused += 1
            return None
        sig, payload = value[len(MAGIC) : len(MAGIC) + _SIG], value[len(MAGIC) + _SIG :]
        if not hmac.compare_digest(sig, self._mac(kind, name, payload)):
            self.refused += 1
            return None
        return payload

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as e:
            self.failures += 1
            log.warning("shared cache: %s failed (%s); going on without it", what, e)
            return None

    def get_blob(self, name: str) -> bytes | None:
        raw = self._call("get", self._client.get, self._prefix + "blob:" + name)
        data = None if raw is None else self._open("blob", name, raw)
        if data is not None and _native.blob_name(data) != name:
            self.refused += 1
            return None
        return data

    def has_blob(self, name: str) -> bool:
        return bool(self._call("exists", self._client.exists, self._prefix + "blob:" + name))

    def put_blob(self, name: str, data: bytes) -> bool:
        value = self._sign("blob", name, data)
        return self._call("put", self._client.set, self._prefix + "blob:" + name, value) is not None

    def get_action(self, key: str) -> dict[str, Any] | None:
        raw = self._call("get", self._client.get, self._prefix + "action:" + key)
        payload = None if raw is None else self._open("action", key, raw)
        if payload is None:
            return None
        try:
            action = json.loads(payload)
        except ValueError:
            self.refused += 1
            return None
        if not isinstance(action, dict) or not isinstance(action.get("outputs"), dict):
            self.refused += 1
            return None
        return action

    def put_action(self, key: str, outputs: dict[str, str], meta: dict[str, str]) -> bool:
        payload = json.dumps({"outputs": outputs, "meta": meta}, sort_keys=True).encode()
        value = self._sign("action", key, payload)
        return (
            self._call("put", self._client.set, self._prefix + "action:" + key, value) is not None
        )


def push(store: Any, remote: RedisStore, key: str) -> dict[str, int]:
    """Upload the local action ``key`` and whichever of its blobs the server lacks."""
    action = store.get_action(key)
    report = {"uploaded": 0, "present": 0}
    if action is None:
        return report
    for blob in sorted(set(action["outputs"].values())):
        if remote.has_blob(blob):
            report["present"] += 1
            continue
        data = store.get(blob)
        if data is not None and remote.put_blob(blob, data):
            report["uploaded"] += 1
    remote.put_action(key, action["outputs"], action["meta"])
    return report


def pull(store: Any, remote: RedisStore, key: str) -> dict[str, int]:
    """Fetch the shared action ``key`` and its blobs into the local store; entries that fail
    their signature or content check are refused and left out."""
    report = {"fetched": 0, "present": 0, "missing": 0}
    action = remote.get_action(key)
    if action is None:
        return report
    outputs = {}
    for out, blob in action["outputs"].items():
        if not isinstance(out, str) or not isinstance(blob, str):
            continue
        if blob in store:
            report["present"] += 1
        else:
            data = remote.get_blob(blob)
            if data is None:
                report["missing"] += 1
                continue
            store.put(data)
            report["fetched"] += 1
        outputs[out] = blob
    if outputs:
        local = store.get_action(key)
        merged = {**(local["outputs"] if local else {}), **outputs}
        meta = action.get("meta") if isinstance(action.get("meta"), dict) else {}
        store.put_action(key, merged, {str(k): str(v) for k, v in meta.items()})
    return report
