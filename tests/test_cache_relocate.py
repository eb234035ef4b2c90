"""Kernel keys free of installation paths: a machine whose Python and virtual environment
live elsewhere (another user's pyenv, another checkout) hits the kernels and the
precompiled header that another machine compiled, and compiles nothing."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import PLAIN_REPORT, machine, machine_env, under_mithril_env
from mithril.cache import _relocate

torch = pytest.importorskip("torch")


def relocated_python(root: Path) -> str:
    """An interpreter that is this one installed elsewhere: its base Python behind another
    path (``root/py``) and a virtual environment at ``root/venv`` whose site-packages are
    this one's. Every path Inductor puts on a compiler command line differs."""
    site = Path(torch.__file__).resolve().parents[1]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (root / "py").symlink_to(Path(sys.base_prefix).resolve(), target_is_directory=True)
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / version).mkdir(parents=True)
    (venv / "lib" / version / "site-packages").symlink_to(site, target_is_directory=True)
    (venv / "bin" / "python").symlink_to(root / "py" / "bin" / version)
    (venv / "pyvenv.cfg").write_text(
        f"home = {root / 'py' / 'bin'}\ninclude-system-site-packages = false\n"
    )
    return str(venv / "bin" / "python")


def compile_under_env(m: dict[str, Path], remote: str, python: str) -> dict:
    """``eval "$(mithril cache env)"`` on machine ``m`` with a shared store at ``remote``,
    then an unchanged script, both run by ``python``."""
    variables = machine_env(m)
    variables.update(MITHRIL_CACHE_REMOTE=remote, MITHRIL_CACHE_SECRET="s")
    return under_mithril_env(m, variables, PLAIN_REPORT, python=python)


def test_relocated_python_hits_every_kernel_and_the_header(
    redis_server: str, tmp_path: Path
) -> None:
    alice, bob = machine(tmp_path, "alice"), machine(tmp_path, "bob")
    other = tmp_path / "elsewhere"
    other.mkdir()
    python = relocated_python(other)
    url = redis_server.rsplit("/", 1)[0] + "/3"  # a database of its own on the shared server
    cold = compile_under_env(alice, url, sys.executable)
    assert cold["inductor"].get("fxgraph_cache_miss") == 1
    warm = compile_under_env(bob, url, python)
    # The installation really moved: both header directories differ.
    assert warm["include"] != cold["include"] and warm["torch"] != cold["torch"]
    assert warm["inductor"].get("fxgraph_cache_hit") == 1
    assert warm["entries"]["hits"] >= 1
    kernels = sorted(bob["store"].rglob("*.so"))
    assert kernels
    # Every kernel is a hard link to a restored blob: none was compiled for the new paths.
    assert [p for p in kernels if p.stat().st_nlink < 2] == []
    headers = sorted(bob["tmp"].rglob("*.gch"))
    assert headers and all(p.stat().st_nlink >= 2 for p in headers)
    assert warm["y"] == cold["y"]


def test_normaliser_replaces_whole_path_prefixes_longest_first() -> None:
    normalise = _relocate.normaliser([("/a/venv/lib/torch", "<torch>"), ("/a/venv", "<prefix>")])
    line = "-I/a/venv/lib/torch/include -I/a/venv/include -I/a/venv2/include -L/a/venv"
    assert normalise(line) == "-I<torch>/include -I<prefix>/include -I/a/venv2/include -L<prefix>"


def test_machine_roots_cover_the_headers_on_the_command_line() -> None:
    roots = dict(_relocate.machine_roots())
    include = sysconfig.get_paths()["include"]
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    normalise = _relocate.normaliser(list(roots.items()))
    assert include not in normalise(f"-I{include}")
    assert torch.__version__ in normalise(f"-I{torch_dir}/include")
    lengths = [len(p) for p in roots]
    assert lengths == sorted(lengths, reverse=True)


def recording_write(calls: list[tuple]) -> object:
    def write(content, extension, extra="", hash_type="code", specified_dir="", key=None):  # type: ignore[no-untyped-def]
        calls.append((content, extra, key))
        return "k", f"/nowhere/k.{extension}"

    return write


def test_two_installations_give_one_key() -> None:
    calls: list[tuple] = []
    write = recording_write(calls)
    here = _relocate.relocatable_write(write, _relocate.normaliser([("/home/a/venv", "<p>")]))
    there = _relocate.relocatable_write(write, _relocate.normaliser([("/opt/venv", "<p>")]))
    here("int main;", "cpp", extra="g++ -I/home/a/venv/include")
    there("int main;", "cpp", "g++ -I/opt/venv/include")
    there("x", "py", key="explicit")  # an explicit key is torch's business
    assert calls == [
        ("int main;", "g++ -I<p>/include", None),
        ("int main;", "g++ -I<p>/include", None),
        ("x", "", "explicit"),
    ]


def test_header_identity_leaves_out_the_preprocessed_hash() -> None:
    a = _relocate.header_identity("#include <h>\n", "cmd" + "a" * 128 + "gcc 12")
    b = _relocate.header_identity("#include <h>", "cmd" + "b" * 128 + "gcc 12")
    c = _relocate.header_identity("#include <h>", "cmd" + "b" * 128 + "gcc 13")
    assert a == b != c


def built_header(folder: Path, key: str, identity: str, data: bytes) -> Path:
    header = folder / f"{key}.h"
    header.write_text("#include <h>\n")
    (folder / f"{key}.h.gch").write_bytes(data)
    (folder / f"{key}.h{_relocate.SIDECAR}").write_text(identity)
    return header


def test_a_restored_header_with_the_same_identity_is_adopted(tmp_path: Path) -> None:
    built_header(tmp_path, "restored", "id-1", b"pch bytes")
    built_header(tmp_path, "other", "id-2", b"other bytes")
    new = tmp_path / "new.h"
    new.write_text("#include <h>\n")
    assert _relocate.adopt_header(str(new), "id-1")
    assert (tmp_path / "new.h.gch").read_bytes() == b"pch bytes"
    assert (tmp_path / "new.h.gch").stat().st_nlink == 2
    assert (tmp_path / f"new.h{_relocate.SIDECAR}").read_text() == "id-1"
    # Already built: left alone.
    assert not _relocate.adopt_header(str(new), "id-1")


def test_a_header_of_another_identity_is_not_adopted(tmp_path: Path) -> None:
    built_header(tmp_path, "restored", "id-1", b"pch bytes")
    (tmp_path / "restored.h.gch").unlink()
    new = tmp_path / "new.h"
    new.write_text("#include <h>\n")
    assert not _relocate.adopt_header(str(new), "id-2")
    assert not _relocate.adopt_header(str(new), "id-1")  # its build is gone
    assert not (tmp_path / "new.h.gch").exists()


def test_install_wraps_torchs_write_once() -> None:
    import torch._inductor.codecache as codecache

    original = codecache.write
    marked = getattr(original, "__mithril_relocatable__", False)
    base = getattr(original, "__wrapped__", original) if marked else original
    codecache.write = base
    try:
        _relocate.install()
        wrapped = codecache.write
        assert getattr(wrapped, "__mithril_relocatable__", False)
        assert getattr(wrapped, "__wrapped__", None) is base
        _relocate.install()
        assert codecache.write is wrapped
    finally:
        codecache.write = original


def test_only_headers_built_with_path_free_keys_are_carried(
    tmp_path: Path, own_temp_dir: Path
) -> None:
    from mithril.cache import Store, _torch

    folder = _torch.header_dir()
    folder.mkdir(parents=True)
    built_header(folder, "mithril", "id-1", b"relocatable")
    built_header(folder, "plain", "id-2", b"keyed by this machine's paths")
    (folder / f"plain.h{_relocate.SIDECAR}").unlink()
    store = Store(tmp_path / "store")
    names = {n for n, _ in _torch.managed_files(store.root, _torch.environment_id())}
    assert {n for n in names if n.startswith("pch/")} == {
        "pch/mithril.h",
        "pch/mithril.h.gch",
        f"pch/mithril.h{_relocate.SIDECAR}",
    }
