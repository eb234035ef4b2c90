"""A dependency-free progress bar for the CLI: drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as ``bar(done, total)``; quiet unless the stream is a TTY (or ``force``)."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        force: bool = False,
        unit: str = "MB",
        scale: float = 1e6,
    ) -> None:
        self.label = label
        self.unit = unit
        self.scale = scale
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.start = time.perf_counter()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        frac = done / total if total else 1.0
        width = 30
        filled = int(frac * width)
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed / self.scale if elapsed > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * frac:5.1f}% {done / self.scale:8.1f}/{total / self.scale:.1f} {self.unit} "
            f"{rate:7.1f} {self.unit}/s"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
