"""Exceptions raised by Mithril.

Every error Mithril detects in its input is a :class:`MithrilError` subclass whose message
says what is wrong and where (file, tensor, chunk). Operating-system failures stay the
standard ``FileNotFoundError`` / ``PermissionError`` / ``OSError``.
"""

from __future__ import annotations

__all__ = [
    "MithrilError",
    "CorruptDataError",
    "FormatError",
    "ConfigError",
    "TensorNotFoundError",
    "CancelledError",
    "BaseCheckpointError",
    "IncompleteCheckpointError",
]


class MithrilError(Exception):
    """Base class of every error Mithril raises about data or arguments."""


class CorruptDataError(MithrilError):
    """Stored bytes fail a checksum or decode to something impossible."""


class FormatError(MithrilError):
    """A file does not follow the format it claims (bad magic, version, index, layout)."""


class ConfigError(MithrilError, ValueError):
    """An argument or option cannot be honoured (bad dtype, shape, size, option)."""


class TensorNotFoundError(MithrilError, KeyError):
    """A tensor name is not in the file."""

    def __str__(self) -> str:  # KeyError would quote the message again
        return str(self.args[0]) if self.args else ""


class CancelledError(MithrilError):
    """Work stopped by the progress callback; nothing was written."""


class BaseCheckpointError(MithrilError):
    """A delta checkpoint's base is missing, was replaced or altered, does not match the
    delta, or the chain of bases loops. The delta is never applied to the wrong base."""


class IncompleteCheckpointError(MithrilError):
    """A checkpoint directory has no commit record: its save never finished (a rank failed or
    was killed), or it is not a Mithril checkpoint. It is never loaded."""
