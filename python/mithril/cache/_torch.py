"""torch.compile on top of the store: a managed Inductor/Triton cache directory per build
environment, snapshots of it in the store, and portable bundles for new machines.

What a compiled artifact is valid for is fixed by the *environment*: torch and Triton
versions, Python, the C++ compiler, the CPU's vector ISA as Inductor detects it, the GPU's
compute capability. :func:`fingerprint` collects those; its hash names the directory that
``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` point at. Inductor's own keys leave out
the cache directory, the user and the host; the installation paths its C++ kernel keys do
hold are replaced by tokens (``_relocate``). So the same directory content hits from any path,
user or machine with the same environment — compiled ``.so`` files included, so a warm start
compiles nothing. A different environment (an AVX-512 build on an AVX2 machine, another
torch) gets another directory: a miss, never a wrong kernel.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mithril._fsutil import atomic_path, link_into_place, write_atomic_chunks
from mithril.cache._relocate import SIDECAR
from mithril.errors import FormatError

#: Action keys of directory snapshots: ``torch-dirs/<environment id>``.
ACTION_PREFIX = "torch-dirs/"
BUNDLE_FORMAT = "mithril-cache-bundle"
_SKIP_PARTS = {"locks"}
_FINGERPRINT: dict[str, str] | None = None
_SKIP_SUFFIXES = (".lock", ".tmp")


#: CPU features that decide which vector code Inductor generates and links.
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)


def _cpu_isa() -> str:
    """The vector ISA features of this CPU (from /proc/cpuinfo where there is one) and
    torch's ``ATEN_CPU_CAPABILITY`` override: enough to tell an AVX2 from an AVX-512 machine
    without importing torch."""
    override = os.environ.get("ATEN_CPU_CAPABILITY", "")
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        flags = {platform.processor() or "unknown"}
    present = [f for f in _ISA_FLAGS if f in flags]
    return " ".join(present) + (f" override={override}" if override else "")


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "g++")
    try:
        out = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{cxx} (unavailable)"
    return f"{cxx}: {out.splitlines()[0] if out else '?'}"


def _gpus() -> str:
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ";".join(sorted({line.strip() for line in out.splitlines() if line.strip()})) or "none"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def fingerprint() -> dict[str, str]:
    """What compiled artifacts depend on in this environment. Computed without importing
    torch, so ``mithril cache env`` stays fast."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = {
            "torch": _version("torch"),
            "triton": _version("triton"),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "machine": platform.machine(),
            "cpu_isa": _cpu_isa(),
            "cxx": _compiler_version(),
            "gpu": _gpus(),
        }
    return dict(_FINGERPRINT)


def environment_id(fp: dict[str, str] | None = None) -> str:
    """A short stable name of an environment (blake2b of its sorted fingerprint)."""
    fp = fingerprint() if fp is None else fp
    text = json.dumps(fp, sort_keys=True).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def managed_dirs(root: Path, env: str) -> dict[str, Path]:
    """The directories Inductor and Triton use for environment ``env`` under store ``root``."""
    base = root / "torch" / env
    return {"inductor": base / "inductor", "triton": base / "triton"}


def header_dir() -> Path:
    """Where Inductor keeps precompiled headers for this temp dir and user: outside its cache
    directory, so a new machine would rebuild the ~150 MB header before loading any kernel
    unless it is carried along. (The rule of torch's ``default_cache_dir``.)"""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        getuid = getattr(os, "getuid", None)
        user = f"uid_{getuid()}" if callable(getuid) else "unknown_user"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return Path(tempfile.gettempdir()) / f"torchinductor_{user}" / "precompiled_headers"


def _dirs(root: Path, env: str) -> dict[str, Path]:
    """The managed directories, plus the precompiled-header directory for this process's
    own environment."""
    dirs = managed_dirs(root, env)
    if env == environment_id():
        dirs["pch"] = header_dir()
    return dirs


#: A directory whose ``sitecustomize`` installs Mithril's torch cache backend at start-up.
AUTOLOAD_DIR = Path(__file__).resolve().parent / "_autoload"


def _python_path_with_autoload() -> str:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    parts = [p for p in parts if Path(p).resolve() != AUTOLOAD_DIR]
    return os.pathsep.join([str(AUTOLOAD_DIR), *parts])


def environment(root: Path, env: str | None = None) -> dict[str, str]:
    """The variables that point torch at the managed directories and, through a start-up
    hook on ``PYTHONPATH``, make Mithril the backend of torch's remote caches in every
    Python process that inherits them."""
    env = environment_id() if env is None else env
    dirs = managed_dirs(root, env)
    return {
        "MITHRIL_CACHE_DIR": str(root),
        "TORCHINDUCTOR_CACHE_DIR": str(dirs["inductor"]),
        "TRITON_CACHE_DIR": str(dirs["triton"]),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "MITHRIL_CACHE_TORCH_BACKEND": "1",
        "PYTHONPATH": _python_path_with_autoload(),
    }


def _built_under_mithril(header_file: Path) -> bool:
    """Whether a file of the precompiled-header directory belongs to a header built with
    Mithril's path-free keys (it has a relocation sidecar). Headers built without them are
    keyed by this machine's paths: no Mithril process elsewhere looks them up, and at
    ~150 MB each they are not worth carrying."""
    stem, dot_h, _ = header_file.name.partition(".h")
    return bool(dot_h) and (header_file.parent / f"{stem}.h{SIDECAR}").is_file()


def _files(dirs: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    for label, d in dirs.items():
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d)
            if not p.is_file() or p.is_symlink() or _SKIP_PARTS & set(rel.parts):
                continue
            if p.name.endswith(_SKIP_SUFFIXES) or p.name.startswith(".tmp"):
                continue
            if label == "pch" and not _built_under_mithril(p):
                continue
            yield f"{label}/{rel.as_posix()}", p


def managed_files(root: Path, env: str) -> Iterator[tuple[str, Path]]:
    """``(label/relative path, path)`` of every file torch keeps for ``env`` under ``root``
    (and the precompiled headers, for this process's own environment)."""
    return _files(_dirs(root, env))


def snapshot(store: Any, env: str | None = None) -> dict[str, Any]:
    """Record the managed directories of ``env`` (default: this environment) in ``store``:
    every file becomes a blob, and the action ``torch-dirs/<env>`` maps paths to blobs
    (merged with what was recorded before)."""
    env = environment_id() if env is None else env
    key = ACTION_PREFIX + env
    previous = store.get_action(key)
    outputs = dict(previous["outputs"]) if previous else {}
    meta = dict(previous["meta"]) if previous else {}
    if env == environment_id():
        meta.update(fingerprint())
    added = 0
    for name, path in managed_files(store.root, env):
        blob = store.put(path.read_bytes())
        added += outputs.get(name) != blob
        outputs[name] = blob
    # Entries whose blob was evicted or damaged since are dropped, not carried forward.
    outputs = {n: b for n, b in outputs.items() if b in store}
    if outputs:
        store.put_action(key, outputs, meta)
    return {"environment": env, "files": len(outputs), "changed": added}


def _place(store: Any, blob: str, target: Path, verified: bool) -> bool:
    """Put blob ``blob`` at ``target``: a hard link to the stored blob when both are on one
    file system (no copy; torch replaces cache files by rename, never writes them in place),
    else a written copy. A blob not ``verified`` by the caller is read and verified first.
    False when the blob is missing or damaged."""
    if not verified and store.get(blob) is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if link_into_place(blob_path(store, blob), target):
        return True
    data = store.get(blob)
    if data is None:
        return False
    write_atomic_chunks(target, [data])
    return True


def blob_path(store: Any, name: str) -> Path:
    """Where the store keeps blob ``name`` (the layout of ``crates/mithril-cache``)."""
    return Path(store.root) / "v1" / "blobs" / name[:2] / name[2:]


def restore_outputs(
    store: Any, env: str, outputs: dict[str, str], verified: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Write recorded files (``label/relative path`` -> blob) into the directories of
    ``env``: files already there are left alone; a blob that is missing or fails verification
    is skipped (torch then recompiles that piece: a miss, not a failure). Blobs in
    ``verified`` were hashed by this caller just now and are linked without a second read."""
    report = {"restored": 0, "present": 0, "skipped": 0}
    dirs = _dirs(store.root, env)
    for name, blob in outputs.items():
        label, _, rel = name.partition("/")
        base = dirs.get(label)
        target = (base / rel) if base is not None else None
        if target is None or ".." in Path(rel).parts or Path(rel).is_absolute():
            report["skipped"] += 1
            continue
        if target.exists():
            report["present"] += 1
            continue
        placed = _place(store, blob, target, verified=blob in verified)
        report["restored" if placed else "skipped"] += 1
    return report


def restore(
    store: Any, env: str | None = None, verified: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Materialise the snapshot of ``env`` into its managed directories (see
    :func:`restore_outputs`)."""
    env = environment_id() if env is None else env
    action = store.get_action(ACTION_PREFIX + env)
    report: dict[str, Any] = {"environment": env, "restored": 0, "present": 0, "skipped": 0}
    if action is not None:
        report.update(restore_outputs(store, env, action["outputs"], verified))
    return report


def enable(store: Any) -> dict[str, str]:
    """Point this process's torch at the managed directories of its environment, after
    restoring their snapshot; returns the variables set. Call before the first compile."""
    variables = environment(store.root)
    restore(store)
    os.environ.update(variables)
    return variables


def export_bundle(store: Any, path: Path, envs: list[str] | None = None) -> dict[str, Any]:
    """Snapshot and write a portable bundle (a tar of ``manifest.json`` and the blobs) of the
    given environments (default: this one)."""
    envs = [environment_id()] if envs is None else envs
    actions = []
    for env in envs:
        snapshot(store, env)
        action = store.get_action(ACTION_PREFIX + env)
        if action is not None:
            actions.append(action)
    blobs = sorted({b for a in actions for b in a["outputs"].values()})
    manifest = {"format": BUNDLE_FORMAT, "version": 1, "actions": actions}
    size = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        _add(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
        for b in blobs:
            data = store.get(b)
            if data is None:
                continue
            size += len(data)
            _add(tar, f"blobs/{b}", data)
    return {
        "environments": [a["key"][len(ACTION_PREFIX) :] for a in actions],
        "blobs": len(blobs),
        "bytes": size,
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def import_bundle(store: Any, path: Path, restore_dirs: bool = True) -> dict[str, Any]:
    """Load a bundle into ``store``: every blob is re-hashed and refused when it does not
    match its name; actions keep only outputs whose blobs arrived intact. Then (by default)
    restore the managed directories of the bundle's environments."""
    report: dict[str, Any] = {"blobs": 0, "refused": [], "environments": []}
    manifest = None
    verified: set[str] = set()
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if member.name == "manifest.json":
                    manifest = json.loads(data)
                elif member.name.startswith("blobs/"):
                    want = member.name[len("blobs/") :]
                    # A blob already stored is not rewritten by put, so only new ones
                    # count as verified here; restore re-reads the others.
                    fresh = want not in store
                    if store.put(data) == want:
                        report["blobs"] += 1
                        if fresh:
                            verified.add(want)
                    else:
                        report["refused"].append(want)
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a readable cache bundle ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise FormatError(f"{path}: no {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != 1:
        raise FormatError(f"{path}: bundle version {manifest.get('version')!r} is not supported")
    for action in manifest.get("actions", []):
        key = action.get("key", "")
        if not key.startswith(ACTION_PREFIX):
            continue
        outputs = {n: b for n, b in action.get("outputs", {}).items() if b in store}
        if outputs:
            store.put_action(key, outputs, action.get("meta") or {})
            env = key[len(ACTION_PREFIX) :]
            report["environments"].append(env)
            if restore_dirs:
                restore(store, env, frozenset(verified))
    return report
