"""An insert/query LSH index over MinHash signatures, in the style of datasketch's MinHashLSH."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from mithril import _native
from mithril.errors import ConfigError

#: Weights of (false positives, false negatives) when choosing bands. With exact verification
#: a false positive costs one set comparison and a false negative a missed duplicate, so recall
#: is favoured; without it, both count alike (datasketch's default).
VERIFIED_WEIGHTS = (0.05, 0.95)
UNVERIFIED_WEIGHTS = (0.5, 0.5)


def optimal_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = UNVERIFIED_WEIGHTS
) -> tuple[int, int]:
    """``(bands, rows)`` minimising ``weights[0]·FP + weights[1]·FN``, where FP and FN are the
    areas under the band-collision curve below and above ``threshold``."""
    return _native.optimal_params(float(threshold), int(num_perm), *map(float, weights))


def bloom_params(threshold: float, num_perm: int) -> tuple[int, int, int]:
    """``(bands, rows, votes)`` for LSHBloom at ``threshold``.

    Rows are chosen so that a pair at the threshold shares a given band with probability
    about 1/3 (``t**r ≈ 1/3``), bands use up the permutations, and a document is flagged when
    its band hits exceed the mean plus one standard deviation expected for a pair at the
    threshold. Short bands make the hit count a fine-grained similarity measure; the margin
    absorbs hits that come from several different earlier documents."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be strictly between 0 and 1, got {threshold}")
    if num_perm < 1:
        raise ConfigError(f"num_perm must be at least 1, got {num_perm}")
    rows = max(1, min(num_perm, round(math.log(1 / 3) / math.log(threshold))))
    bands = num_perm // rows
    p = threshold**rows
    votes = math.ceil(bands * p) + math.ceil(math.sqrt(bands * p * (1 - p)))
    return bands, rows, max(1, min(bands, votes))


def _as_signature(sig: Any, num_perm: int) -> np.ndarray:
    """A contiguous uint32 copy/view of one signature (accepts MinHasher rows, datasketch
    ``MinHash.hashvalues`` and anything with a ``hashvalues`` attribute)."""
    values = getattr(sig, "hashvalues", sig)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != num_perm:
        raise ConfigError(f"expected a signature of {num_perm} values, got shape {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise ConfigError(f"signature values must be integers, not {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
        raise ConfigError("signature values must fit in 32 bits")
    return np.ascontiguousarray(arr, dtype=np.uint32)


class LSHIndex:
    """Band-table LSH index: ``insert(key, signature)``, ``query(signature) -> [keys]``.

    ``bands=(b, r)`` fixes the banding; otherwise it is chosen from ``threshold`` by
    minimising weighted false positives and negatives (``weights``). Keys are any hashable
    values, as in datasketch's ``MinHashLSH``; signatures are :class:`MinHasher` rows (or any
    ``num_perm`` 32-bit values, e.g. a datasketch ``MinHash``).

    ``bloom=True`` builds an LSHBloom index instead: one Bloom filter per band sized for
    ``capacity`` signatures at a false-positive rate ``fp_rate`` per query. It stores no keys,
    so it answers ``contains(signature)`` ("seen a near-duplicate before?") rather than
    ``query``, in a fixed amount of memory. A signature counts as seen when ``votes`` of its
    bands were (default 1, the classic rule; :func:`bloom_params` gives a sharper choice).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        *,
        weights: tuple[float, float] = UNVERIFIED_WEIGHTS,
        bands: tuple[int, int] | None = None,
        bloom: bool = False,
        capacity: int = 1_000_000,
        fp_rate: float = 1e-3,
        votes: int = 1,
    ) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        b, r = bands if bands is not None else optimal_params(threshold, num_perm, weights)
        if b < 1 or r < 1 or b * r > num_perm:
            raise ConfigError(
                f"bands x rows must be between 1 and num_perm ({num_perm}), got {b} x {r}"
            )
        self.bands, self.rows = b, r
        self.bloom = bloom
        self._tables: Any = None
        self._bloom: Any = None
        if bloom:
            self._bloom = _native.BandBloom(b, r, int(capacity), float(fp_rate), int(votes))
        else:
            self._tables = _native.LshTables(b, r)
        self._ids: dict[Hashable, int] = {}
        self._keys: dict[int, Hashable] = {}
        self._next = 0
        self._count = 0

    def __repr__(self) -> str:
        kind = "bloom" if self.bloom else "tables"
        return (
            f"LSHIndex(threshold={self.threshold}, bands={self.bands}x{self.rows}, {kind}, "
            f"{len(self)} entries)"
        )

    def __len__(self) -> int:
        return self._count if self.bloom else len(self._ids)

    def __contains__(self, key: Hashable) -> bool:
        self._need_tables("membership of a key")
        return key in self._ids

    @property
    def index_bytes(self) -> int:
        """Approximate memory of the band tables or Bloom filters."""
        return int((self._bloom or self._tables).index_bytes)

    def _need_tables(self, what: str) -> None:
        if self.bloom:
            raise ConfigError(
                f"a bloom index stores no keys, so it cannot answer {what}; use contains()"
            )

    def insert(self, key: Hashable, signature: Any) -> None:
        """Add ``signature`` under ``key`` (keys must be new; a bloom index ignores the key)."""
        sig = _as_signature(signature, self.num_perm)
        if self.bloom:
            self._bloom.insert(sig)
            self._count += 1
            return
        if key in self._ids:
            raise ConfigError(f"key {key!r} is already in the index")
        ident = self._next
        self._tables.insert(ident, sig)
        self._next += 1
        self._ids[key] = ident
        self._keys[ident] = key

    def insert_many(self, keys: Iterable[Hashable], signatures: np.ndarray) -> None:
        """Insert each row of a ``(n, num_perm)`` signature array under the matching key."""
        keys = list(keys)
        sigs = np.asarray(signatures)
        if sigs.ndim != 2 or sigs.shape != (len(keys), self.num_perm):
            raise ConfigError(
                f"expected signatures of shape ({len(keys)}, {self.num_perm}), got {sigs.shape}"
            )
        for key, row in zip(keys, sigs, strict=True):
            self.insert(key, row)

    def query(self, signature: Any) -> list[Hashable]:
        """Keys sharing at least one band with ``signature`` (candidates, not verified)."""
        self._need_tables("query()")
        ids = self._tables.query(_as_signature(signature, self.num_perm))
        return [self._keys[i] for i in ids]

    def remove(self, key: Hashable) -> None:
        """Remove ``key``; ``KeyError`` if it is not in the index."""
        self._need_tables("remove()")
        ident = self._ids.pop(key)
        del self._keys[ident]
        self._tables.remove(ident)

    def contains(self, signature: Any) -> bool:
        """Whether a near-duplicate candidate of ``signature`` was inserted before."""
        sig = _as_signature(signature, self.num_perm)
        if self.bloom:
            return bool(self._bloom.contains(sig))
        return bool(self._tables.query(sig))

    def check_and_insert(self, key: Hashable, signature: Any) -> bool:
        """``contains`` then ``insert``: the streaming "seen before?" step."""
        sig = _as_signature(signature, self.num_perm)
        if self.bloom:
            self._count += 1
            return bool(self._bloom.check_and_insert(sig))
        seen = bool(self._tables.query(sig))
        self.insert(key, sig)
        return seen
