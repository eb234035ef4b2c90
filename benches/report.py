"""What the benchmark scripts print besides their measurements: result tables (markdown
for docs/benchmarks.md, or aligned plain text for a terminal) and the machine and package
versions they ran on."""

from __future__ import annotations

import platform
from collections.abc import Collection, Sequence
from importlib.metadata import PackageNotFoundError, version


def render_table(
    head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool, left: Collection[int]
) -> str:
    """``head`` and ``body`` as one table; the columns in ``left`` hold text and are
    left-aligned, the others hold numbers and are right-aligned."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |"]
        lines.append(
            "|" + "|".join(":---" if i in left else "---:" for i in range(len(head))) + "|"
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(cells[i]) for cells in body)) for i, c in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in body]
    return "\n".join(out)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pkg_version(name: str) -> str:
    """The installed version of distribution ``name``, or "absent"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"
