"""The build system on CPU: cache key, lock, atomic publish, corrupt entries, and the fallback
to the reference (with one warning) where the CUDA kernels cannot run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

from flashrnn_compile import build, runtime
from flashrnn_compile.kernels import alternating
from flashrnn_compile.ops import recurrence


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext" / "flashrnn_compile"


def fake_builder(calls):
    """Writes a stand-in library, as the real builder would, and counts its calls."""

    def builder(build_dir: Path, lib: str, archs):
        calls.append((lib, archs))
        so = build_dir / f"{build.get_library(lib).name}.so"
        so.write_bytes(b"\x7fELF fake library " + os.urandom(8))
        return so

    return builder


def test_cache_root_honours_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build.cache_root() == tmp_path / "flashrnn_compile"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "flashrnn_compile"


def test_cache_key_depends_on_sources_torch_and_arch(tmp_path, monkeypatch):
    csrc = tmp_path / "csrc"
    shutil.copytree(build.csrc_dir(), csrc)
    key = build.cache_key("alternating", ["9.0"], csrc)
    assert key == build.cache_key("alternating", ["9.0"], csrc)  # stable
    assert key != build.cache_key("alternating", ["8.0"], csrc)  # architecture
    assert key != build.cache_key("alternating", ["8.0", "9.0"], csrc)
    header = csrc / "common" / "cells.cuh"  # a header, not a compiled source, changes it too
    header.write_text(header.read_text() + "\n// changed\n")
    changed = build.cache_key("alternating", ["9.0"], csrc)
    assert changed != key
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert build.cache_key("alternating", ["9.0"], csrc) != changed  # torch version


def test_arch_list_validates(monkeypatch):
    monkeypatch.setenv("FLASHRNN_CUDA_ARCHS", "9.0;8.0")
    assert build.arch_list() == ("8.0", "9.0")
    with pytest.raises(ValueError, match="archs"):
        build.arch_list(["sm90"])
    with pytest.raises(ValueError, match="lib"):
        build.get_library("nope")


def test_build_is_published_once_and_reused(cache):
    calls = []
    path = build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls))
    assert path.is_file() and path.parent.parent == cache and len(calls) == 1
    manifest = json.loads((path.parent / build.MANIFEST).read_text())
    assert manifest["key"] == build.cache_key("alternating", ["9.0"])
    again = build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls))
    assert again == path and len(calls) == 1  # a second call (or process) reuses the entry
    assert not list(cache.glob(".*tmp-*"))  # no temporary directory left behind


@pytest.mark.parametrize("damage", ["truncate_library", "drop_manifest", "bad_manifest", "wrong_key"])
def test_corrupt_entry_is_rebuilt_not_loaded(cache, damage):
    calls = []
    path = build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls))
    entry = path.parent
    if damage == "truncate_library":
        path.write_bytes(path.read_bytes()[:5])
    elif damage == "drop_manifest":
        (entry / build.MANIFEST).unlink()
    elif damage == "bad_manifest":
        (entry / build.MANIFEST).write_text("{not json")
    else:
        m = json.loads((entry / build.MANIFEST).read_text())
        m["key"] = "0" * 24
        (entry / build.MANIFEST).write_text(json.dumps(m))
    key = build.cache_key("alternating", ["9.0"])
    assert not build.entry_valid(entry, key)
    rebuilt = build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls))
    assert len(calls) == 2 and build.entry_valid(rebuilt.parent, key)


def test_partial_build_left_behind_is_cleaned(cache):
    key = build.cache_key("alternating", ["9.0"])
    name = build.entry_dir("alternating", key).name
    stale = cache / f".{name}.tmp-dead"
    stale.mkdir(parents=True)
    (stale / "flashrnn_alternating.so").write_bytes(b"half a library")
    calls = []
    build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls))
    assert len(calls) == 1 and not stale.exists()


def test_failed_build_publishes_nothing(cache):
    def failing(build_dir, lib, archs):
        (build_dir / "flashrnn_alternating.so").write_bytes(b"partial")
        raise build.BuildError("compiler error")

    with pytest.raises(build.BuildError, match="compiler error"):
        build.ensure_built("alternating", ["9.0"], builder=failing)
    assert not any(cache.iterdir()) or all(p.suffix == ".lock" for p in cache.iterdir())


def test_lock_excludes_other_holders(tmp_path):
    lock = tmp_path / "x.lock"
    with build.file_lock(lock):
        with pytest.raises(TimeoutError, match="held by another process"):
            with build.file_lock(lock, timeout=0.1):
                pass
        code = ("import fcntl, os, sys\n"
                f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3  # another process is excluded
    with build.file_lock(lock, timeout=0.1):  # released
        pass


def test_concurrent_builders_build_once(cache):
    calls, paths = [], []
    gate = threading.Barrier(4)

    def worker():
        gate.wait()
        paths.append(build.ensure_built("alternating", ["9.0"], builder=fake_builder(calls)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1


def test_missing_nvcc_is_a_build_error(cache, monkeypatch):
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.ensure_built("alternating", ["9.0"])


def test_unavailable_reasons(monkeypatch):
    assert "CUDA device" in alternating.unavailable(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert "not available" in alternating.unavailable(torch.device("cuda"))


def test_print_key_cli(cache, capsys):
    assert build.main(["--arch", "9.0", "--print-key"]) == 0  # python -m flashrnn_compile.build --print-key
    info = json.loads(capsys.readouterr().out)
    assert info["key"] == build.cache_key("alternating", ["9.0"]) and info["valid"] is False


def test_cpu_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(runtime, "_WARNED", set())
    plan = runtime.plan_json("alternating")
    gx, R, b = torch.randn(5, 2, 1, 4, 3), torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h1, s1 = recurrence(gx, R, b, cell="lstm", plan=plan)
        h2, s2 = recurrence(gx, R, b, cell="lstm", plan=plan)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "'alternating'" in msgs[0] and "reference" in msgs[0]
    h_ref, s_ref = recurrence(gx, R, b, cell="lstm")
    assert torch.equal(h1, h_ref) and torch.equal(s1, s_ref) and torch.equal(h2, h_ref)


def test_load_prefers_a_matching_aot_build(cache, monkeypatch, tmp_path):
    pkg = Path(build.__file__).resolve().parent
    so = pkg / "flashrnn_alternating.cpython-test.so"
    stamp = pkg / "flashrnn_alternating.torch_version"
    assert not so.exists() and not stamp.exists()
    loaded, calls = [], []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(build, "_LOADED", {})
    real_ensure = build.ensure_built
    monkeypatch.setattr(build, "ensure_built", lambda lib: real_ensure(lib, ["9.0"], builder=fake_builder(calls)))
    try:
        so.write_bytes(b"aot")
        stamp.write_text("0.0.0-another-torch")  # built for another torch: the JIT build is used
        assert build.load() != so and len(calls) == 1
        monkeypatch.setattr(build, "_LOADED", {})
        stamp.write_text(torch.__version__)
        assert build.load() == so and loaded[-1] == str(so) and len(calls) == 1
    finally:
        so.unlink(missing_ok=True)
        stamp.unlink(missing_ok=True)


def test_variant_key_follows_the_sources_includes(tmp_path, monkeypatch):
    """A variant's key hashes its source and the headers it includes, transitively: a change of an
    included header changes it, a change of a header it does not include leaves it (another
    family's cached variants stay valid); a missing include is a BuildError naming the file."""
    from flashrnn_compile import build as b

    root = tmp_path / "csrc"
    (root / "fused").mkdir(parents=True)
    (root / "fused" / "a.cu").write_text('#include "fused/a.cuh"\nint main() {}\n')
    (root / "fused" / "a.cuh").write_text('  #  include "fused/common.cuh"\n')
    (root / "fused" / "common.cuh").write_text("// shared\n")
    (root / "fused" / "other.cuh").write_text("// not included by a.cu\n")
    monkeypatch.setattr(b, "csrc_dir", lambda: root)
    names = [str(p.relative_to(root)) for p in b.variant_sources("fused/a.cu")]
    assert names == ["fused/a.cu", "fused/a.cuh", "fused/common.cuh"]
    key = b.variant_key("fused/a.cu", {"X": 1}, ["9.0"])
    (root / "fused" / "other.cuh").write_text("// changed\n")
    assert b.variant_key("fused/a.cu", {"X": 1}, ["9.0"]) == key
    (root / "fused" / "common.cuh").write_text("// changed\n")
    assert b.variant_key("fused/a.cu", {"X": 1}, ["9.0"]) != key
    (root / "fused" / "a.cuh").write_text('#include "fused/gone.cuh"\n')
    with pytest.raises(b.BuildError, match="fused/gone.cuh"):
        b.variant_key("fused/a.cu", {"X": 1}, ["9.0"])
