"""Durable small-file writes shared by the checkpoint modules: a file is written to a temp
name, fsynced, renamed over the target, and the directory entry is fsynced too, so a crash
leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from typing_extensions import Buffer


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (best effort where directories can't be
    opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    write_atomic_chunks(path, [text.encode("utf-8")])


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` for a writer that wants a file name (a parquet or tar
    writer): once the block ends, the file is fsynced and renamed over ``path`` and the
    directory fsynced; if it raises, the temporary file is removed and ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic_chunks(path: Path, chunks: Iterable[Buffer]) -> None:
    """Replace ``path`` with the concatenation of ``chunks`` atomically and durably; the
    chunks are written one by one, so a large file need not be joined in memory first."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def link_into_place(source: Path, target: Path) -> bool:
    """Put a hard link to ``source`` at ``target``, replacing any file there atomically (a
    link under a temp name beside ``target``, then a rename). False, with nothing changed,
    where a link is impossible (another file system, a file system without hard links); the
    caller then writes a copy."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        return False
    os.replace(tmp, target)
    return True
