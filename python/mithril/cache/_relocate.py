"""Kernel keys that do not change with where Python and torch are installed.

Inductor names a C++ kernel by a hash of its source *and of the compiler command line*
(``torch/_inductor/codecache.py``: ``CppCodeCache.load_async`` passes the command line to
``write`` as ``extra``). That command line holds absolute paths: ``-I`` of the interpreter's
headers (under ``$HOME/.pyenv/...`` for a pyenv user) and of torch's headers (inside the
virtual environment). The same kernel built from the same source with the same compiler
therefore gets another key on a machine whose venv or Python lives elsewhere, and every
kernel compiles again there although its ``.so`` was restored. The ``.so`` itself holds no
such path: it needs only system libraries and resolves torch's symbols from the process.

:func:`install` wraps ``codecache.write`` so that the ``extra`` of a hashed write has those
roots replaced by tokens that keep what matters to the binary (the torch version, the
Python version and ABI flags) and drop what does not (where they are installed). The kernel
source is hashed unchanged, and the compiler still receives the real paths: only the key
moves. The environment fingerprint (``_torch.fingerprint``) already separates torch,
Python, compiler and CPU, so a token never joins two environments that differ.

The precompiled header needs one more step. Its key also hashes the preprocessed header,
whose ``__FILE__`` expansions are absolute paths, so it cannot be made path-free by tokens.
Each header written through the wrapper gets a small sidecar file naming its
*relocatable identity* (the header, the normalised command line and compiler, without the
preprocessed hash). When a machine asks for a header that is not built yet and a header
restored from another machine has the same identity, the restored one is linked under the
new name instead of being rebuilt (about 150 MB and several seconds of compiling). A header
this machine builds itself keeps torch's own key and checks.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Marks a ``write`` that is already wrapped, so that installing twice wraps once.
_MARK = "__mithril_relocatable__"
#: Suffix of the sidecar that holds a precompiled header's relocatable identity.
SIDECAR = ".mithril-identity"
#: Output suffixes of a precompiled header (GCC, clang).
_PCH_SUFFIXES = (".gch", ".pch")
#: The hex digest torch puts in a header's ``extra``: the sha512 of the preprocessed header
#: (128 hex digits). The whole run of hex digits goes, with any that the command line ends in
#: or the compiler banner starts with: those are the same on every machine of one identity.
_PREPROCESSED_HASH = re.compile(r"[0-9a-f]{128,}")


def machine_roots() -> list[tuple[str, str]]:
    """``(absolute path, token)`` for every installation root that can appear in an
    Inductor command line, longest path first so that nested roots are replaced inside
    out. Both the path as Python reports it and its resolved form are listed."""
    import torch

    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    python = f"python{sys.version_info.major}.{sys.version_info.minor}{sys.abiflags}"
    paths = sysconfig.get_paths()
    named = [
        (torch_dir, f"<torch {torch.__version__}>"),
        (os.path.dirname(torch_dir), "<torch site-packages>"),
        (paths.get("include", ""), f"<{python} include>"),
        (paths.get("platinclude", ""), f"<{python} include>"),
        (sys.prefix, "<prefix>"),
        (sys.exec_prefix, "<prefix>"),
        (sys.base_prefix, "<base prefix>"),
        (sys.base_exec_prefix, "<base prefix>"),
    ]
    roots: dict[str, str] = {}
    for path, token in named:
        if not path or path == os.sep:
            continue
        for form in (os.path.abspath(path), os.path.realpath(path)):
            roots.setdefault(form.rstrip(os.sep), token)
    return sorted(roots.items(), key=lambda r: len(r[0]), reverse=True)


def normaliser(roots: list[tuple[str, str]]) -> Callable[[str], str]:
    """A function that replaces each root in a text by its token, only where the root is a
    whole path prefix (followed by a separator, a quote, white space or the end)."""
    if not roots:
        return lambda text: text
    pattern = re.compile(
        "(" + "|".join(re.escape(path) for path, _ in roots) + r")(?=[/\\\s\"':;]|$)"
    )
    tokens = dict(roots)
    return lambda text: pattern.sub(lambda m: tokens[m.group(1)], text)


def header_identity(content: str, normalised_extra: str) -> str:
    """What a precompiled header is built from, without where it was built: the header
    line, the normalised command line and compiler version, and not the preprocessed hash."""
    text = content.strip() + "\0" + _PREPROCESSED_HASH.sub("<preprocessed>", normalised_extra)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _put_in_place(source: str, target: str) -> None:
    """``target`` becomes ``source``'s content: a hard link, else an atomic copy."""
    from mithril._fsutil import atomic_path, link_into_place

    if not link_into_place(Path(source), Path(target)):
        with atomic_path(Path(target)) as tmp:
            shutil.copyfile(source, tmp)


def adopt_header(header_path: str, identity: str) -> bool:
    """Record ``identity`` beside the header at ``header_path`` and, when its precompiled
    form is missing, link one with the same identity from the same directory into place.
    Returns whether a header was adopted."""
    sidecar = header_path + SIDECAR
    if not os.path.exists(sidecar):
        from mithril._fsutil import write_atomic_chunks

        write_atomic_chunks(Path(sidecar), [identity.encode()])
    if any(os.path.exists(header_path + s) for s in _PCH_SUFFIXES):
        return False
    folder = os.path.dirname(header_path)
    for name in sorted(os.listdir(folder)):
        other = os.path.join(folder, name)
        if not name.endswith(SIDECAR) or other == sidecar:
            continue
        try:
            with open(other, encoding="ascii") as f:
                if f.read().strip() != identity:
                    continue
        except (OSError, UnicodeDecodeError):
            continue
        built = other[: -len(SIDECAR)]
        for suffix in _PCH_SUFFIXES:
            if os.path.exists(built + suffix):
                _put_in_place(built + suffix, header_path + suffix)
                return True
    return False


def relocatable_write(
    write: Callable[..., Any], normalise: Callable[[str], str], header_dir: str | None = None
) -> Any:
    """``write`` with the ``extra`` of every hashed call (no explicit ``key``) normalised;
    writes into ``header_dir`` also adopt a restored precompiled header (:func:`adopt_header`)."""
    signature = inspect.signature(write)

    @functools.wraps(write)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return write(*args, **kwargs)
        extra = bound.arguments.get("extra")
        if bound.arguments.get("key") is not None or not isinstance(extra, str) or not extra:
            return write(*bound.args, **bound.kwargs)
        extra = normalise(extra)
        bound.arguments["extra"] = extra
        result = write(*bound.args, **bound.kwargs)
        content = bound.arguments.get("content")
        if header_dir and bound.arguments.get("specified_dir") == header_dir:
            try:
                if isinstance(content, str) and isinstance(result, tuple) and len(result) == 2:
                    adopt_header(str(result[1]), header_identity(content, extra))
            except OSError:
                pass  # torch builds the header itself, as it would without Mithril
        return result

    setattr(wrapped, _MARK, True)
    return wrapped


def patch_codecache(codecache: Any) -> bool:
    """Wrap ``codecache.write`` (once); ``False`` when the module has no ``write`` yet."""
    write = getattr(codecache, "write", None)
    if write is None or getattr(write, _MARK, False):
        return write is not None
    header_dir = getattr(codecache, "_HEADER_DIR", None)
    codecache.write = relocatable_write(
        write, normaliser(machine_roots()), header_dir if isinstance(header_dir, str) else None
    )
    return True


def install() -> None:
    """Make this process's Inductor kernel keys independent of installation paths. Loads
    ``torch._inductor.codecache`` (the compile that follows needs it anyway); a process
    without torch has no keys to change."""
    try:
        import torch._inductor.codecache as codecache
    except ImportError:
        return
    patch_codecache(codecache)
