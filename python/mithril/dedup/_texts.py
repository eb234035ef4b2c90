"""Hand texts to Rust without copying: Arrow arrays pass through the PyCapsule interface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mithril.errors import ConfigError


def text_chunks(texts: Any) -> Iterator[Any]:
    """Yield objects the native code reads directly: Arrow string/binary arrays (one per chunk
    of a ChunkedArray), or the list itself. Arrow types the native reader does not take
    (string views, dictionaries) are cast to ``large_string`` first."""
    if hasattr(texts, "__arrow_c_stream__") and hasattr(texts, "chunks"):
        for chunk in texts.chunks:
            yield _plain_arrow(chunk)
        return
    if hasattr(texts, "__arrow_c_array__"):
        yield _plain_arrow(texts)
        return
    if isinstance(texts, str | bytes):
        raise ConfigError("texts must be a sequence of texts, not a single str or bytes")
    yield texts if isinstance(texts, list) else list(texts)


def _plain_arrow(arr: Any) -> Any:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - any Arrow producer without pyarrow is passed as is
        return arr
    if not isinstance(arr, pa.Array):
        return arr
    t = arr.type
    if pa.types.is_dictionary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        target = (
            pa.large_binary()
            if pa.types.is_binary_view(t)
            or (pa.types.is_dictionary(t) and pa.types.is_binary(t.value_type))
            else pa.large_string()
        )
        return arr.cast(target)
    return arr
