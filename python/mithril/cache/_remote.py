"""A shared store for a fleet on a Redis server or an HTTP/WebDAV endpoint, with the local
store as its first level.

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
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mithril import _native
from mithril.errors import ConfigError

log = logging.getLogger("mithril.cache")

MAGIC = b"MTH1"
_SIG = 32


class SignedStore:
    """Blobs and actions on a shared server, every value signed with ``secret`` (bytes shared
    by the fleet). A transport supplies ``_read``, ``_write`` and ``_exists`` on its own keys;
    this class signs, checks and counts. ``refused`` counts values that failed their checks,
    ``failures`` server errors (down, slow past the timeout, an unexpected answer)."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ConfigError("a shared store needs a non-empty secret to sign its entries")
        self._secret = bytes(secret)
        self.refused = 0
        self.failures = 0

    # The transport: `kind` is "blob" or "action", `name` a blob name or an action key.
    def _read(self, kind: str, name: str) -> bytes | None:
        raise NotImplementedError

    def _write(self, kind: str, name: str, value: bytes) -> None:
        raise NotImplementedError

    def _exists(self, kind: str, name: str) -> bool:
        raise NotImplementedError

    _errors: tuple[type[BaseException], ...] = (OSError,)

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

    def _get(self, kind: str, name: str) -> bytes | None:
        raw = self._call("get", self._read, kind, name)
        return None if raw is None else self._open(kind, name, raw)

    def _put(self, kind: str, name: str, payload: bytes) -> bool:
        value = self._sign(kind, name, payload)

        def write() -> bool:
            self._write(kind, name, value)
            return True

        return self._call("put", write) is True

    def get_blob(self, name: str) -> bytes | None:
        data = self._get("blob", name)
        if data is not None and _native.blob_name(data) != name:
            self.refused += 1
            return None
        return data

    def has_blob(self, name: str) -> bool:
        return bool(self._call("exists", self._exists, "blob", name))

    def put_blob(self, name: str, data: bytes) -> bool:
        return self._put("blob", name, data)

    def get_action(self, key: str) -> dict[str, Any] | None:
        payload = self._get("action", key)
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
        return self._put("action", key, payload)


class RedisStore(SignedStore):
    """The shared store on a Redis server at ``url`` (``redis://host:port/db``): keys
    ``<prefix>blob:<name>`` and ``<prefix>action:<key>``."""

    def __init__(
        self, url: str, secret: bytes, *, timeout: float = 2.0, prefix: str = "mithril:"
    ) -> None:
        super().__init__(secret)
        try:
            import redis
        except ImportError as e:  # pragma: no cover - the cache extra installs it
            raise ConfigError("the Redis store needs the 'redis' package") from e
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._errors = (redis.RedisError, OSError)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _read(self, kind: str, name: str) -> bytes | None:
        value = self._client.get(self._key(kind, name))
        return value if value is None or isinstance(value, bytes) else b""

    def _write(self, kind: str, name: str, value: bytes) -> None:
        self._client.set(self._key(kind, name), value)

    def _exists(self, kind: str, name: str) -> bool:
        return bool(self._client.exists(self._key(kind, name)))


class HttpStore(SignedStore):
    """The shared store on an HTTP server that takes ``PUT`` and serves ``GET``/``HEAD``
    (WebDAV, nginx's ``dav_methods PUT``, most object stores behind a plain URL) under
    ``url``: ``<url>/blob/<name>`` and ``<url>/action/<blake3 of the key>`` (an action key
    holds characters a path should not). Only the standard library is used."""

    def __init__(self, url: str, secret: bytes, *, timeout: float = 2.0) -> None:
        super().__init__(secret)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) URL for the shared store: {url!r}")
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._errors = (OSError, http.client.HTTPException, ValueError)

    def _url(self, kind: str, name: str) -> str:
        leaf = name if kind == "blob" else _native.blob_name(name.encode())
        return f"{self._base}/{kind}/{urllib.parse.quote(leaf, safe='')}"

    def _request(self, method: str, url: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        return urllib.request.urlopen(req, timeout=self._timeout)

    def _read(self, kind: str, name: str) -> bytes | None:
        try:
            with self._request("GET", self._url(kind, name)) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def _write(self, kind: str, name: str, value: bytes) -> None:
        with self._request("PUT", self._url(kind, name), value):
            pass

    def _exists(self, kind: str, name: str) -> bool:
        try:
            with self._request("HEAD", self._url(kind, name)):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise


def open_remote(url: str, secret: bytes, timeout: float = 2.0) -> SignedStore:
    """The shared store at ``url``: ``redis://`` or ``rediss://`` for Redis, ``http://`` or
    ``https://`` for an HTTP/WebDAV endpoint."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, secret, timeout=timeout)
    if scheme in ("http", "https"):
        return HttpStore(url, secret, timeout=timeout)
    raise ConfigError(
        f"MITHRIL_CACHE_REMOTE={url!r}: expected a redis://, rediss://, http:// or https:// URL"
    )


def push(store: Any, remote: SignedStore, key: str) -> dict[str, int]:
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


def pull(store: Any, remote: SignedStore, key: str) -> dict[str, int]:
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
