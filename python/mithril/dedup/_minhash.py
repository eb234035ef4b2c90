"""MinHash signatures of texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mithril import _native
from mithril.dedup._texts import text_chunks


class MinHasher:
    """Shingles texts and computes MinHash signatures, in Rust, on all cores.

    ``tokens="word"`` takes words as maximal runs of Unicode letters, digits and ``_`` (the
    ``\\w+`` of Python's ``re``), lowercased when ``lowercase``; a shingle is ``ngram``
    consecutive words, and a text shorter than that has its whole word sequence as its one
    shingle. ``tokens="char"`` takes characters after folding whitespace runs to one space.
    ``nfc`` composes Unicode first so accents written two ways agree. Texts without tokens
    (empty, null, punctuation only) have no shingles; their signature is all ``2**32 - 1``.

    The permutations are ``a·x + b mod 2**32`` bijections of the folded 64-bit xxh3 shingle
    hashes, seeded by ``seed``; signatures are deterministic for a given configuration.
    """

    def __init__(
        self,
        num_perm: int = 128,
        ngram: int = 5,
        seed: int = 1,
        *,
        tokens: Literal["word", "char"] = "word",
        lowercase: bool = True,
        nfc: bool = True,
    ) -> None:
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self.tokens = tokens
        self.lowercase = lowercase
        self.nfc = nfc
        self._native = _native.MinHasher(num_perm, ngram, seed, tokens, lowercase, nfc)

    def __repr__(self) -> str:
        return (
            f"MinHasher(num_perm={self.num_perm}, ngram={self.ngram}, seed={self.seed}, "
            f"tokens={self.tokens!r}, lowercase={self.lowercase}, nfc={self.nfc})"
        )

    def signatures(
        self, texts: Sequence[str | bytes | None] | Any, threads: int | None = None
    ) -> np.ndarray:
        """Signatures of ``texts`` as a ``uint64`` array of shape ``(len(texts), num_perm)``.

        ``texts`` is a list of ``str``/``bytes``/``None`` or an Arrow string or binary array
        (pyarrow ``Array`` or ``ChunkedArray``, or anything with ``__arrow_c_array__``), which
        is read in place. ``threads=None`` uses all cores."""
        return self.signatures_and_counts(texts, threads)[0]

    def signatures_and_counts(
        self, texts: Sequence[str | bytes | None] | Any, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``signatures`` plus the number of shingles of each text (``uint64``)."""
        sigs, counts = [], []
        for chunk in text_chunks(texts):
            s, c = self._native.signatures(chunk, threads)
            sigs.append(s)
            counts.append(c)
        if not sigs:
            return np.zeros((0, self.num_perm), np.uint64), np.zeros(0, np.uint64)
        if len(sigs) == 1:
            return sigs[0], counts[0]
        return np.concatenate(sigs), np.concatenate(counts)

    def shingles(self, text: str | bytes) -> np.ndarray:
        """The sorted, distinct 64-bit shingle hashes of one text (the set that exact
        verification compares)."""
        return self._native.shingles(text)

    def jaccard(self, a: str | bytes, b: str | bytes) -> float:
        """Exact Jaccard similarity of two texts' shingle sets (0 when both have none)."""
        sa, sb = self.shingles(a), self.shingles(b)
        union = len(sa) + len(sb)
        if union == 0:
            return 0.0
        inter = len(np.intersect1d(sa, sb, assume_unique=True))
        return inter / (union - inter)
