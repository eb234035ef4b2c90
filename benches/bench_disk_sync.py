"""How this machine's disk takes a file written while the CPU works: why the checkpoint
writer syncs from a helper thread.

Run it with::

    .venv/bin/python benches/bench_disk_sync.py [--mib 140] [--dir DIR]

A producer writes ``--mib`` pieces of 1 MiB of random data, spending 2 ms of CPU before each
(standing in for the encoder), then fsyncs the file. Three ways of getting the data to disk
while it writes:

* ``none``              nothing until the final fsync
* ``sync_file_range``   ask the kernel to start writeback of each 16 MiB as it is written
* ``fdatasync thread``  a second thread runs ``fdatasync`` every 16 MiB (one at a time), as
  ``SyncAhead`` in ``crates/mithril-checkpoint/src/atomic.rs`` does

The table gives the producer's loop time and the final fsync's time, best of ``--repeat``.
The final fsync is what a save waits for after its last byte.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

STEP_MIB = 16
SYNC_FILE_RANGE_WRITE = 2


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def sync_file_range() -> Callable[[int, int, int], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.sync_file_range
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)

    return start


def run(path: Path, mib: int, mode: str) -> tuple[float, float]:
    piece = os.urandom(1 << 20)
    start_writeback = sync_file_range() if mode == "sync_file_range" else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    worker: threading.Thread | None = None
    try:
        began = time.perf_counter()
        pending_from = 0
        for written in range(1, mib + 1):
            busy(0.002)
            os.write(fd, piece)
            if written - pending_from < STEP_MIB:
                continue
            if start_writeback is not None:
                start_writeback(fd, pending_from << 20, (written - pending_from) << 20)
                pending_from = written
            elif mode == "fdatasync thread" and (worker is None or not worker.is_alive()):
                worker = threading.Thread(target=os.fdatasync, args=(fd,))
                worker.start()
                pending_from = written
        if worker is not None:
            worker.join()
        loop = time.perf_counter() - began
        os.fsync(fd)
        return loop, time.perf_counter() - began - loop
    finally:
        os.close(fd)
        path.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=140)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    print("| mode | loop ms | final fsync ms |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for mode in ("none", "sync_file_range", "fdatasync thread"):
            runs = [run(Path(tmp) / "data", args.mib, mode) for _ in range(args.repeat)]
            loop, final = min(runs, key=lambda r: r[0] + r[1])
            print(f"| {mode} | {1000 * loop:.0f} | {1000 * final:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
