"""torch.compile warm starts: Mithril's store beside torch's own Inductor cache and its
Mega-Cache, on a real model, every start a fresh process.

Run it with ``make bench-cache`` (``benches/bench_cache.py --markdown``; a few minutes).

The model is the pretrained all-MiniLM-L6-v2 encoder (``benches/minilm_train.py``), compiled
with ``torch.compile`` and run forward and backward once on its ranking loss; each row is the
wall time of a fresh Python process from start to the end of that step (imports included),
with Inductor's hit/miss counters. "Machines" are simulated: another machine is an empty
cache directory, another HOME, USER, TMPDIR and working directory, and only what the row
says carried over.

Rows:

* torch cold: an empty ``TORCHINDUCTOR_CACHE_DIR``.
* torch warm, same machine: the same directory again.
* torch, another user: torch's default directory (``$TMPDIR/torchinductor_$USER``) for a
  new user, what a shared machine or a CI runner sees.
* torch Mega-Cache, new machine: ``torch.compiler.save_cache_artifacts()`` after the cold
  run, ``load_cache_artifacts()`` in a fresh machine before compiling.
* mithril warm, same machine: ``eval "$(mithril cache env)"``, second run.
* mithril, another path and user: the store moved to another absolute path, another HOME,
  USER, TMPDIR and working directory.
* mithril, new machine: ``mithril cache export`` on the first machine, ``mithril cache
  import`` on a fresh one (the import time is added to the row).
* mithril, new machine, Python and venv elsewhere: the same bundle on a machine whose
  interpreter and virtual environment sit under other absolute paths (so every ``-I`` on
  Inductor's compiler command lines differs): kernels and the precompiled header are
  relocated, not rebuilt.
* mithril per entry: ``mithril.cache.enable()`` in the script, with a shared store on a real
  Redis server (Debian's ``redis-server``, started by this script on loopback): a cold
  compile on one machine puts each FX graph and AOTAutograd entry, with its kernels, into
  the shared store; a fresh machine that shares only the server then hits entry by entry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, os.environ["BENCH_DIR"])
import torch
from torch._dynamo.utils import counters
from minilm_train import load_pretrained
mega_in, mega_out = os.environ.get("MEGA_IN"), os.environ.get("MEGA_OUT")
if os.environ.get("MITHRIL_ENABLE"):
    import mithril.cache as mc
    mc.enable(mc.Store(os.environ["MITHRIL_CACHE_DIR"]))
if mega_in:
    torch.compiler.load_cache_artifacts(open(mega_in, "rb").read())
torch.manual_seed(0)
model = load_pretrained()
step = torch.compile(model.ranking_loss)
ids = torch.randint(1000, 20000, (8, 64))
loss = step(ids, ids.roll(1, 0))
loss.backward()
elapsed = time.perf_counter() - t0
if mega_out:
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is not None:
        open(mega_out, "wb").write(artifacts[0])
entries = mc.entry_stats() if os.environ.get("MITHRIL_ENABLE") else {}
print(json.dumps({"seconds": elapsed, "loss": float(loss), "counters": dict(counters["inductor"]),
                  "entries": entries}))
"""


def machine(root: Path, name: str) -> dict[str, Path]:
    m = {k: root / name / k for k in ("home", "tmp", "work")}
    for p in m.values():
        p.mkdir(parents=True, exist_ok=True)
    return m


def machine_env(m: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    env.update(
        HOME=str(m["home"]),
        TMPDIR=str(m["tmp"]),
        USER=m["home"].parent.name,
        BENCH_DIR=str(REPO / "benches"),
    )
    return env


def relocated_python(root: Path) -> str:
    """This interpreter as another machine would install it: the base Python behind
    ``root/py`` and a virtual environment at ``root/venv`` that shares this site-packages."""
    import sysconfig

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / version).mkdir(parents=True)
    (root / "py").symlink_to(Path(sys.base_prefix).resolve(), target_is_directory=True)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    (venv / "lib" / version / "site-packages").symlink_to(site, target_is_directory=True)
    (venv / "bin" / "python").symlink_to(root / "py" / "bin" / version)
    (venv / "pyvenv.cfg").write_text(f"home = {root / 'py' / 'bin'}\n")
    return str(venv / "bin" / "python")


def run(m: dict[str, Path], extra: dict[str, str], python: str = sys.executable) -> dict:
    env = machine_env(m)
    env.update(extra)
    proc = subprocess.run(
        [python, "-c", CHILD],
        cwd=m["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli(m: dict[str, Path], *args: str, python: str = sys.executable) -> tuple[str, float]:
    """``mithril ARGS`` on machine ``m``; (stdout, seconds)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [python, "-m", "mithril", *args],
        cwd=m["work"],
        env=machine_env(m),
        check=True,
        capture_output=True,
        text=True,
    )
    return proc.stdout, time.perf_counter() - t


def mithril_env(
    m: dict[str, Path], store: Path, python: str = sys.executable
) -> tuple[dict[str, str], float]:
    """What ``eval "$(mithril cache env --dir STORE)"`` sets on machine ``m``, and its time
    (it also puts the store's snapshot in place, precompiled headers included)."""
    out, seconds = cli(m, "cache", "env", "--dir", str(store), python=python)
    pairs = (line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    return {k: v.strip("'") for k, v in pairs}, seconds


@contextlib.contextmanager
def redis_server(data: Path) -> Iterator[str]:
    """A real Redis server on a free loopback port for the shared-store rows; its URL."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (make install installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data.mkdir(parents=True, exist_ok=True)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data)]
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows: list[tuple[str, float, dict, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        root = Path(tmp)
        # torch's own cache
        a = machine(root, "alice")
        own = root / "alice" / "inductor"
        mega = root / "mega.bin"
        cold = run(a, {"TORCHINDUCTOR_CACHE_DIR": str(own), "MEGA_OUT": str(mega)})
        rows.append(("torch cold", cold["seconds"], cold["counters"], ""))
        warm = run(a, {"TORCHINDUCTOR_CACHE_DIR": str(own)})
        rows.append(("torch warm, same machine", warm["seconds"], warm["counters"], ""))
        other = run(machine(root, "bob"), {})
        rows.append(("torch, another user (default dir)", other["seconds"], other["counters"], ""))
        fresh = machine(root, "carol")
        megarun = run(
            fresh,
            {"TORCHINDUCTOR_CACHE_DIR": str(root / "carol" / "inductor"), "MEGA_IN": str(mega)},
        )
        rows.append(
            (
                "torch Mega-Cache, new machine",
                megarun["seconds"],
                megarun["counters"],
                f"bundle {mega.stat().st_size / 1e6:.1f} MB",
            )
        )
        # Mithril
        store = root / "alice" / "mithril"
        env_a, _ = mithril_env(a, store)
        m_cold = run(a, env_a)
        rows.append(("mithril cold", m_cold["seconds"], m_cold["counters"], ""))
        env_a, t_env = mithril_env(a, store)
        m_warm = run(a, env_a)
        rows.append(
            (
                "mithril warm, same machine",
                m_warm["seconds"] + t_env,
                m_warm["counters"],
                f"`mithril cache env` {t_env:.1f} s included",
            )
        )
        bundle = root / "bundle.tar"
        _, t_export = cli(a, "cache", "export", str(bundle), "--dir", str(store))
        moved = root / "elsewhere" / "store"
        shutil.copytree(store, moved)
        d = machine(root, "dave")
        env_d, t_env = mithril_env(d, moved)
        m_moved = run(d, env_d)
        rows.append(
            (
                "mithril, another path and user",
                m_moved["seconds"] + t_env,
                m_moved["counters"],
                f"store copied; `mithril cache env` {t_env:.1f} s included",
            )
        )
        e = machine(root, "erin")
        new_store = root / "erin" / "mithril"
        _, t_import = cli(e, "cache", "import", str(bundle), "--dir", str(new_store))
        env_e, t_env = mithril_env(e, new_store)
        m_new = run(e, env_e)
        rows.append(
            (
                "mithril, new machine (bundle)",
                m_new["seconds"] + t_import + t_env,
                m_new["counters"],
                f"bundle {bundle.stat().st_size / 1e6:.1f} MB; import {t_import:.1f} s and "
                f"`mithril cache env` {t_env:.1f} s included (export took {t_export:.1f} s)",
            )
        )
        i = machine(root, "ivan")
        python = relocated_python(root / "ivan" / "install")
        ivan_store = root / "ivan" / "mithril"
        _, t_import = cli(
            i, "cache", "import", str(bundle), "--dir", str(ivan_store), python=python
        )
        env_i, t_env = mithril_env(i, ivan_store, python=python)
        m_moved_py = run(i, env_i, python=python)
        rows.append(
            (
                "mithril, new machine, Python and venv elsewhere (bundle)",
                m_moved_py["seconds"] + t_import + t_env,
                m_moved_py["counters"],
                f"import {t_import:.1f} s and `mithril cache env` {t_env:.1f} s included",
            )
        )
        with redis_server(root / "redis") as url:
            shared = {
                "MITHRIL_ENABLE": "1",
                "MITHRIL_CACHE_REMOTE": url,
                "MITHRIL_CACHE_SECRET": "bench fleet secret",
            }
            f = machine(root, "frank")
            env_f, _ = mithril_env(f, root / "frank" / "mithril")
            e_cold = run(f, {**env_f, **shared})
            rows.append(
                (
                    "mithril per entry, cold (uploads to Redis)",
                    e_cold["seconds"],
                    e_cold["counters"],
                    f"{e_cold['entries'].get('puts', 0)} entries put",
                )
            )
            g = machine(root, "grace")
            env_g, t_env = mithril_env(g, root / "grace" / "mithril")
            e_new = run(g, {**env_g, **shared})
            rows.append(
                (
                    "mithril per entry, new machine (Redis only)",
                    e_new["seconds"] + t_env,
                    e_new["counters"],
                    f"{e_new['entries'].get('hits', 0)} entry hits, "
                    f"{e_new['entries'].get('restored', 0)} kernel files restored; "
                    f"`mithril cache env` {t_env:.1f} s included",
                )
            )
        losses = {
            round(r["loss"], 6)
            for r in (
                *(cold, warm, other, megarun, m_cold, m_warm, m_moved, m_new, m_moved_py),
                *(e_cold, e_new),
            )
        }
    head = ["start", "seconds", "fx hits", "fx misses", "note"]
    body = [
        [
            name,
            f"{s:.1f}",
            str(c.get("fxgraph_cache_hit", 0)),
            str(c.get("fxgraph_cache_miss", 0)),
            note,
        ]
        for name, s, c, note in rows
    ]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|:---|---:|---:|---:|:---|")
        for r in body:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        for r in [head, *body]:
            print("  ".join(c.ljust(x) for c, x in zip(r, w, strict=True)))
    seconds = {n: s for n, s, _, _ in rows}
    new = seconds["mithril, new machine (bundle)"]
    print()
    print(
        "new machine (Mithril bundle) / same-machine warm (torch): "
        f"{new / seconds['torch warm, same machine']:.2f} (bar <= 1.3)"
    )
    print(
        "new machine (Mithril bundle) / new machine (Mega-Cache): "
        f"{new / seconds['torch Mega-Cache, new machine']:.2f} (bar <= 0.25)"
    )
    per_entry = seconds["mithril per entry, new machine (Redis only)"]
    print(
        "new machine (Mithril per entry, Redis) / new machine (Mega-Cache): "
        f"{per_entry / seconds['torch Mega-Cache, new machine']:.2f}"
    )
    print(f"losses identical across runs: {len(losses) == 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
