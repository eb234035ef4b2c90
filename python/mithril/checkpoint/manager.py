"""Checkpoints of a training run in one directory: full files and deltas against earlier ones,
a retention rule that never strands a delta, and a ``latest`` pointer that only ever names a
completely written checkpoint.

    mgr = CheckpointManager("ckpt", keep=3, policy=DeltaPolicy(full_every=10))
    for step in range(steps):
        ...
        mgr.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    state = mgr.load("latest")
    model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])

Each checkpoint is ``step-<step>.mithril`` in the directory; ``latest`` holds the name of
the newest complete one and is replaced atomically after that file is on disk. A crash at any
point leaves the previous checkpoint loadable and ``latest`` pointing at a whole file.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mithril import _native
from mithril._fsutil import fsync_dir as _fsync_dir
from mithril._fsutil import write_atomic as _write_atomic
from mithril.checkpoint._convert import RawTensor
from mithril.checkpoint._tree import STATE_KEY, flatten, unflatten
from mithril.errors import ConfigError, FormatError, MithrilError

__all__ = ["CheckpointManager", "DeltaPolicy"]

_NAME = re.compile(r"^step-(\d+)\.mithril$")
# Temp files of a checkpoint (the Rust writer's) or of the pointer: ".NAME.PID[.STAMP].tmp".
_TEMP = re.compile(r"^\.(?:step-\d+\.mithril|latest)\.(\d+)(?:\.[0-9a-f]+)?\.tmp$")
_POINTER = "latest"


@dataclass(frozen=True)
class DeltaPolicy:
    """When to write a full checkpoint instead of a delta.

    ``full_every``: every N-th checkpoint of a chain is full (1: always full; None: no count
    rule). ``max_chain_ratio``: write a full checkpoint when the deltas since the last full
    one, plus one more of the size of the last delta, would exceed this multiple of the full
    file (None: no size rule). ``base``: ``"previous"`` makes each delta against the
    checkpoint just before it (smallest deltas; loading walks the chain), ``"full"`` against
    the last full checkpoint (loading decodes two files; deltas grow as training drifts).
    ``coding``: how float deltas are coded, ``"fast"`` (the default: a delta is coded
    faster than a full checkpoint) or ``"compact"`` (the smallest deltas, coded at about
    half that speed; see ``save_file``).
    """

    full_every: int | None = 10
    max_chain_ratio: float | None = 1.0
    base: Literal["previous", "full"] = "previous"
    coding: Literal["compact", "fast"] = "fast"

    def __post_init__(self) -> None:
        if self.full_every is not None and (
            isinstance(self.full_every, bool)
            or not isinstance(self.full_every, int)
            or self.full_every < 1
        ):
            raise ConfigError(f"full_every must be a positive int or None, got {self.full_every!r}")
        if self.max_chain_ratio is not None and not self.max_chain_ratio > 0:
            raise ConfigError(
                f"max_chain_ratio must be positive or None, got {self.max_chain_ratio!r}"
            )
        if self.base not in ("previous", "full"):
            raise ConfigError(f"base must be 'previous' or 'full', got {self.base!r}")
        if self.coding not in ("compact", "fast"):
            raise ConfigError(f"coding must be 'compact' or 'fast', got {self.coding!r}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """Save and load the checkpoints of one training run in ``directory``.

    ``keep``: how many of the newest checkpoints to keep (None: all). Older ones are deleted
    after each save, except those a kept delta still needs as a base. ``policy`` decides full
    versus delta. ``cache_base``: keep a copy of the last saved tensors in memory so that the
    next delta does not have to decode its base from disk (costs one copy of the state in RAM).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int | None = None,
        policy: DeltaPolicy | None = None,
        cache_base: bool = True,
        threads: int | None = None,
    ) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigError(f"keep must be a positive int or None, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.policy = policy if policy is not None else DeltaPolicy()
        self.cache_base = cache_base
        self.threads = threads
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache: tuple[Path, list[RawTensor]] | None = None
        self._remove_stale_temps()

    # -- layout ----------------------------------------------------------------------------

    def path_for(self, step: int) -> Path:
        """The file that holds checkpoint ``step``."""
        return self.directory / f"step-{step:010d}.mithril"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint file, oldest first."""
        out = []
        for entry in os.listdir(self.directory):
            m = _NAME.match(entry)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_step(self) -> int | None:
        """The step ``latest`` names, or None before the first save."""
        pointer = self.directory / _POINTER
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        m = _NAME.match(name)
        if not m:
            raise FormatError(f"{pointer}: does not name a checkpoint file: {name!r:.80}")
        return int(m.group(1))

    def _remove_stale_temps(self) -> None:
        """Temp files left by a writer that died (its pid is gone) are removed."""
        for entry in os.listdir(self.directory):
            m = _TEMP.match(entry)
            if m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    (self.directory / entry).unlink()

    def _reader(self, path: Path, resolve: bool = False) -> _native.Reader:
        return _native.Reader(os.fspath(path), resolve)

    def _base_of(self, path: Path) -> Path | None:
        ref = self._reader(path).base_ref()
        if ref is None or ref[1] is None:
            return None
        hint = Path(ref[1])
        return (hint if hint.is_absolute() else path.parent / hint).resolve()

    def _chain(self, path: Path) -> list[Path]:
        """``path`` and its bases (by their recorded paths), newest first. A link that
        cannot be opened (deleted or damaged by hand) ends the chain there: the files
        before it are still reported as needed."""
        out = [path.resolve()]
        while True:
            try:
                base = self._base_of(out[-1])
            except (OSError, MithrilError):
                return out
            if base is None:
                return out
            if base in out:
                raise FormatError(f"{path}: the chain of bases loops back to {base}")
            out.append(base)

    # -- policy ----------------------------------------------------------------------------

    def _choose_base(self, step: int) -> Path | None:
        """The checkpoint to write ``step`` against, or None for a full checkpoint."""
        if self.policy.full_every == 1:
            return None
        earlier = [s for s in self.steps() if s < step]
        if not earlier:
            return None
        previous = self.path_for(earlier[-1])
        chain = self._chain(previous)
        full, deltas = chain[-1], chain[:-1]
        try:
            if self._reader(full).base_ref() is not None:
                return None  # the chain is broken below `full`: start a new one
        except (OSError, MithrilError):
            return None
        if self.policy.full_every is not None and len(deltas) + 1 >= self.policy.full_every:
            return None
        if self.policy.max_chain_ratio is not None and deltas:
            sizes = [p.stat().st_size for p in deltas]
            expected = sum(sizes) + sizes[0]
            if expected > self.policy.max_chain_ratio * full.stat().st_size:
                return None
        return previous if self.policy.base == "previous" else full

    # -- save / load -----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Mapping[str, Any] | Any,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` (a full file or a delta, per the policy), then move
        ``latest`` to it, then apply retention. Returns the file written.

        ``state`` is any nesting of dicts, lists and tuples whose leaves are tensors (torch or
        numpy) or plain scalars/strings, e.g. ``{"model": model.state_dict(), "optimizer":
        opt.state_dict(), "step": step}``."""
        from mithril.checkpoint import _sources, _write_file

        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step must be a non-negative int, got {step!r}")
        target = self.path_for(step)
        if target.exists():
            dependants = [
                s
                for s in self.steps()
                if s != step and target.resolve() in self._chain(self.path_for(s))[1:]
            ]
            if dependants:
                raise ConfigError(
                    f"checkpoint {step} is the base of checkpoint(s) {dependants}; "
                    "saving it again would strand them"
                )
        tensors, tree = flatten(state)
        meta = dict(metadata or {})
        meta[STATE_KEY] = tree
        meta["mithril.step"] = str(step)
        base = self._choose_base(step)
        base_tensors = None
        if base is not None and self._cache is not None and self._cache[0] == base.resolve():
            base_tensors = self._cache[1]
        sources = _sources(tensors)
        _write_file(
            sources,
            target,
            meta,
            base=base,
            delta_coding=self.policy.coding,
            threads=self.threads,
            base_raw=base_tensors,
        )
        _fsync_dir(self.directory)
        if self.cache_base:
            snapshot = [(name, dtype, shape, raw.copy()) for name, dtype, shape, raw in sources]
            self._cache = (target.resolve(), snapshot)
        _write_atomic(self.directory / _POINTER, target.name)
        self._retain()
        return target

    def load(
        self, step: int | Literal["latest"] = "latest", *, framework: str | None = None
    ) -> Any:
        """The state saved at ``step`` (or the one ``latest`` names), rebuilt with the same
        nesting, tensors as torch tensors (numpy when torch is absent or
        ``framework="np"``)."""
        from mithril.checkpoint import safe_open

        if step == "latest":
            found = self.latest_step()
            if found is None:
                raise MithrilError(f"{self.directory}: no checkpoint has been saved yet")
            step = found
        if isinstance(step, bool) or not isinstance(step, int):
            raise ConfigError(f"step must be an int or 'latest', got {step!r}")
        path = self.path_for(step)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint for step {step} (have {self.steps()})")
        with safe_open(path, framework, threads=self.threads) as f:
            tree = (f.metadata() or {}).get(STATE_KEY)
            if tree is None:
                return {name: f.get_tensor(name) for name in f.keys()}
            return unflatten(tree, f.get_tensor, framework or "pt")

    # -- retention -------------------------------------------------------------------------

    def _retain(self) -> None:
        if self.keep is None:
            return
        steps = self.steps()
        kept = steps[-self.keep :]
        needed: set[Path] = set()
        for s in kept:
            needed.update(self._chain(self.path_for(s)))
        latest = self.latest_step()
        if latest is not None and self.path_for(latest).exists():
            needed.update(self._chain(self.path_for(latest)))
        # Newest first: a delta always goes before its base (bases are earlier steps), so a
        # crash in the middle never leaves a delta whose base is gone.
        for s in reversed(steps):
            p = self.path_for(s)
            if p.resolve() not in needed:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                if self._cache is not None and self._cache[0] == p.resolve():
                    self._cache = None
        _fsync_dir(self.directory)
