"""Build of the CUDA kernel libraries: JIT through torch.utils.cpp_extension + ninja, cached.

    python -m flashrnn_compile.build                  # prebuild for this machine's GPU
    python -m flashrnn_compile.build --arch 8.0 9.0   # for named architectures
    python -m flashrnn_compile.build --print-key      # the cache entry this process would use

A library (see `LIBRARIES`) is a list of sources under csrc/ (plain CUDA C++ plus one torch binding
file). It is built once per cache key and loaded with `torch.ops.load_library`:

    key   = sha256(every source and header it depends on, torch version, CUDA version,
                   architectures, flags, Python version)
    root  = $TORCH_EXTENSIONS_DIR/flashrnn_compile   if TORCH_EXTENSIONS_DIR is set
            $XDG_CACHE_HOME/flashrnn_compile         else (~/.cache/flashrnn_compile): per user
    entry = root/<name>-<key>/{<name>.so, manifest.json}

Building happens in a child process into a fresh temporary directory under root, while holding a
file lock (root/<name>-<key>.lock), so concurrent processes build once and wait for each other.
The finished directory gets a manifest (key and the library's sha256) and is published with one
atomic rename. An entry whose manifest is missing or wrong, or whose library does not match the
manifest's hash, is deleted and rebuilt, never loaded. Batch size, sequence length and head count
are run-time arguments of the kernels: one build serves every shape.

A missing nvcc or a failed build raises `BuildError`; the kernels package turns it into the
reason the family is unavailable, and the runtime then warns once and runs the reference.

Ahead of time (setup.py with FLASHRNN_BUILD_AOT=1 on a CUDA machine): `aot_extension()` gives
the CUDAExtension for the same sources and flags (default architectures 8.0 and 9.0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

MANIFEST = "manifest.json"
DEFAULT_ARCHS = ("8.0", "9.0")
CXX_FLAGS = ("-O3",)
CUDA_FLAGS = ("-O3",)


class BuildError(RuntimeError):
    """A library could not be built (no nvcc, compiler error); the message says why."""


@dataclasses.dataclass(frozen=True)
class LibrarySpec:
    name: str  # the .so name and the TORCH_LIBRARY namespace
    sources: Tuple[str, ...]  # compiled, relative to csrc/
    depends: Tuple[str, ...]  # hashed too (headers), relative to csrc/, globs allowed


LIBRARIES: Dict[str, LibrarySpec] = {
    "alternating": LibrarySpec(
        name="flashrnn_alternating",
        sources=(
            "alternating/forward.cu",
            "alternating/backward.cu",
            "alternating/step_forward.cu",
            "alternating/step_backward.cu",
            "alternating/gemm.cpp",
            "bindings.cpp",
        ),
        depends=("alternating/*.h", "alternating/*.cuh", "common/*.cuh", "common/*.h"),
    ),
}


def get_library(lib: str) -> LibrarySpec:
    if lib not in LIBRARIES:
        raise ValueError(f"lib: expected one of {sorted(LIBRARIES)}, got {lib!r}")
    return LIBRARIES[lib]


def csrc_dir() -> Path:
    """Where the CUDA sources are: the installed flashrnn_compile.csrc, else the checkout's csrc/."""
    import importlib.util

    spec = importlib.util.find_spec("flashrnn_compile.csrc")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "csrc"


def cache_root() -> Path:
    """The per-user cache directory (honours TORCH_EXTENSIONS_DIR, then XDG_CACHE_HOME)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "flashrnn_compile"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashrnn_compile"


def find_nvcc() -> Optional[str]:
    """Path of nvcc (CUDA_HOME as torch finds it, then PATH), or None."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        if os.access(nvcc, os.X_OK):
            return nvcc
    return shutil.which("nvcc")


def arch_list(archs: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """Architectures to build for: explicit, else $FLASHRNN_CUDA_ARCHS ("8.0;9.0"), else the
    current GPU's, else sm_80 and sm_90."""
    if archs:
        chosen = tuple(archs)
    elif os.environ.get("FLASHRNN_CUDA_ARCHS"):
        chosen = tuple(a for a in os.environ["FLASHRNN_CUDA_ARCHS"].replace(",", ";").split(";") if a)
    elif torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        chosen = (f"{major}.{minor}",)
    else:
        chosen = DEFAULT_ARCHS
    for a in chosen:
        parts = a.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"archs: expected compute capabilities like '9.0', got {a!r}")
    return tuple(sorted(set(chosen)))


def gencode_flags(archs: Sequence[str]) -> List[str]:
    flags = []
    for a in archs:
        cc = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
    return flags


def _files(spec: LibrarySpec, root: Path) -> List[Path]:
    files = {root / s for s in spec.sources}
    for pattern in spec.depends:
        files.update(Path(p) for p in glob.glob(str(root / pattern)))
    return sorted(files)


def key_material(lib: str = "alternating", archs: Optional[Sequence[str]] = None,
                 csrc: Optional[Path] = None) -> Dict[str, object]:
    """Everything the cache key depends on."""
    spec = get_library(lib)
    root = Path(csrc) if csrc is not None else csrc_dir()
    sources = {}
    for f in _files(spec, root):
        if not f.is_file():
            raise BuildError(f"{spec.name}: source {f} is missing")
        sources[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {
        "library": spec.name,
        "sources": sources,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "archs": list(arch_list(archs)),
        "flags": [list(CXX_FLAGS), list(CUDA_FLAGS)],
        "python": list(sys.version_info[:2]),
    }


def cache_key(lib: str = "alternating", archs: Optional[Sequence[str]] = None,
              csrc: Optional[Path] = None) -> str:
    material = json.dumps(key_material(lib, archs, csrc), sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def entry_dir(lib: str, key: str) -> Path:
    return cache_root() / f"{get_library(lib).name}-{key}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_valid(entry: Path, key: str) -> bool:
    """A published entry is loadable: its manifest names this key and the library's hash matches."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        library = entry / manifest["library"]
        return manifest["key"] == key and library.is_file() and _sha256(library) == manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def file_lock(path: Path, timeout: Optional[float] = None) -> Iterator[None]:
    """An exclusive lock on `path` across processes (flock); TimeoutError after `timeout` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"lock {path} is held by another process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


Builder = Callable[[Path, str, Tuple[str, ...]], Path]  # (build_dir, lib, archs) -> .so in build_dir


def ensure_built(lib: str = "alternating", archs: Optional[Sequence[str]] = None, *,
                 builder: Optional[Builder] = None) -> Path:
    """Path of a valid cached library, building and publishing it first if needed."""
    spec = get_library(lib)
    chosen = arch_list(archs)
    key = cache_key(lib, chosen)
    entry = entry_dir(lib, key)
    if entry_valid(entry, key):
        return entry / f"{spec.name}.so"
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{entry.name}.lock"):
        if entry_valid(entry, key):  # another process published it while we waited
            return entry / f"{spec.name}.so"
        if entry.exists():  # partial or corrupt: never loaded, rebuilt
            shutil.rmtree(entry)
        for stale in root.glob(f".{entry.name}.tmp-*"):  # left by a build that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=root))
        try:
            library = (builder or build_in_subprocess)(tmp, lib, chosen)
            if not library.is_file() or library.parent != tmp:
                raise BuildError(f"{spec.name}: the build produced no library in {tmp}")
            final_name = f"{spec.name}.so"
            if library.name != final_name:
                library.rename(tmp / final_name)
            _publish(tmp, entry, {"key": key, "library": final_name, "sha256": _sha256(tmp / final_name),
                                  "material": key_material(lib, chosen), "built": time.time()})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry / f"{spec.name}.so"


def _publish(tmp: Path, entry: Path, manifest: Dict[str, Any]) -> None:
    """Write the manifest durably into the finished build folder, then rename it into place."""
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, entry)  # atomic publish


def _cublas_flags() -> Tuple[List[str], List[str]]:
    """(include dirs, linker flags) for cuBLAS: the CUDA toolkit's, else the nvidia wheels'."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME or ""
    inc_dirs = [os.path.join(home, "include")]
    lib_dirs = [os.path.join(home, "lib64"), os.path.join(home, "targets", "x86_64-linux", "lib")]
    for site in sys.path:
        for sub in ("cublas", "cu13", "cu12"):
            inc_dirs.append(os.path.join(site, "nvidia", sub, "include"))
            lib_dirs.append(os.path.join(site, "nvidia", sub, "lib"))
    includes = [d for d in inc_dirs if os.path.isfile(os.path.join(d, "cublas_v2.h"))][:1]
    for d in lib_dirs:
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "libcublas.so*")))
        if names:
            lib = "-lcublas" if "libcublas.so" in names else f"-l:{names[0]}"
            return includes, [f"-L{d}", lib, f"-Wl,-rpath,{d}"]
    raise BuildError("cuBLAS not found (looked for libcublas.so* under CUDA_HOME and the nvidia wheels)")


def _compile(build_dir: Path, lib: str, archs: Sequence[str], verbose: bool) -> Path:
    """Compile into build_dir with cpp_extension + ninja (runs in the child process)."""
    from torch.utils import cpp_extension

    spec = get_library(lib)
    root = csrc_dir()
    includes, ldflags = _cublas_flags()
    cpp_extension.load(
        name=spec.name,
        sources=[str(root / s) for s in spec.sources],
        extra_cflags=list(CXX_FLAGS),
        extra_cuda_cflags=list(CUDA_FLAGS) + gencode_flags(archs),
        extra_ldflags=ldflags,
        extra_include_paths=[str(root)] + includes,
        build_directory=str(build_dir),
        verbose=verbose,
        with_cuda=True,
        is_python_module=False,
    )
    return build_dir / f"{spec.name}.so"


def build_in_subprocess(build_dir: Path, lib: str, archs: Tuple[str, ...]) -> Path:
    """Build in a child process (a crash or a compiler error cannot take this one down); the log
    is kept next to the cache entry when it fails."""
    spec = get_library(lib)
    if find_nvcc() is None:
        raise BuildError("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    log = build_dir / "build.log"
    cmd = [sys.executable, "-m", "flashrnn_compile.build", "--lib", lib, "--arch", *archs,
           "--_compile-into", str(build_dir)]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    library = build_dir / f"{spec.name}.so"
    if proc.returncode != 0 or not library.is_file():
        kept = build_dir.parent / f"{spec.name}-failed.log"
        shutil.copyfile(log, kept)
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise BuildError(f"building {spec.name} failed (exit {proc.returncode}); log: {kept}\n" + "\n".join(tail))
    return library


_LOADED: Dict[str, Path] = {}
_LOAD_LOCK = threading.Lock()


def aot_library(lib: str = "alternating") -> Optional[Path]:
    """The library setup.py built ahead of time next to this package (FLASHRNN_BUILD_AOT=1), if
    any, and if it was built for this torch version (recorded beside it by `aot_extension`)."""
    spec = get_library(lib)
    pkg = Path(__file__).resolve().parent
    stamp = pkg / f"{spec.name}.torch_version"
    for path in sorted(pkg.glob(f"{spec.name}*.so")):
        if stamp.is_file() and stamp.read_text().strip() == torch.__version__:
            return path
    return None


def load(lib: str = "alternating") -> Path:
    """Load the library into this process (once): the ahead-of-time build if it matches this
    torch, else the cached JIT build (built first if needed); returns its path."""
    with _LOAD_LOCK:
        if lib not in _LOADED:
            path = aot_library(lib)
            if path is None:
                path = ensure_built(lib)
            torch.ops.load_library(str(path))
            _LOADED[lib] = path
        return _LOADED[lib]


def aot_extension(lib: str = "alternating", archs: Sequence[str] = DEFAULT_ARCHS):
    """The CUDAExtension that setup.py builds with FLASHRNN_BUILD_AOT=1 (same sources, flags)."""
    from torch.utils import cpp_extension

    spec = get_library(lib)
    root = csrc_dir()
    includes, ldflags = _cublas_flags()
    # the torch version the library is built against, for `aot_library`
    (Path(__file__).resolve().parent / f"{spec.name}.torch_version").write_text(torch.__version__)
    return cpp_extension.CUDAExtension(
        name=f"flashrnn_compile.{spec.name}",
        sources=[str(root / s) for s in spec.sources],
        include_dirs=[str(root)] + includes,
        extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(CUDA_FLAGS) + gencode_flags(archs)},
        extra_link_args=ldflags,
    )


# --- per-configuration variants (fused_block): one small library per set of -D defines -------
# A variant is a plain CUDA shared library (no torch headers, C entry points called through
# ctypes), so a new configuration compiles in seconds; it is cached like the libraries above
# (key = sources, defines, archs, flags; lock, temporary directory, atomic rename).

# -cudart shared: the library uses the CUDA runtime torch has already loaded (same soname)
VARIANT_FLAGS = ("-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-cudart", "shared")
_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def variant_sources(source: str) -> List[Path]:
    """`source` and every file it includes with `#include "..."` (paths relative to csrc/, as the
    build's -I names them), transitively: what a variant's library is built from. A change of a
    header another family's sources do not include leaves that family's cached variants valid."""
    root = csrc_dir()
    seen: Dict[Path, None] = {}
    todo = [root / source]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        if not f.is_file():
            raise BuildError(f"variant source {f.relative_to(root)} (included from {source}) does not exist")
        seen[f] = None
        todo.extend(root / name for name in _QUOTED_INCLUDE.findall(f.read_text()))
    return sorted(seen)


def variant_key(source: str, defines: Dict[str, object], archs: Optional[Sequence[str]] = None) -> str:
    root = csrc_dir()
    files = variant_sources(source)
    material = {
        "source": source,
        "files": {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)},
        "defines": {str(k): str(v) for k, v in sorted(defines.items())},
        "archs": list(arch_list(archs)),
        "flags": list(VARIANT_FLAGS),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _touch(entry: Path) -> None:
    """Mark a cache entry used now (its mtime), so that a cache can be pruned to what a run used
    (scripts/snapshot_prebuild.sh). A read-only cache is left as it is."""
    try:
        os.utime(entry)
    except OSError:
        pass


def ensure_variant(source: str, defines: Dict[str, object], archs: Optional[Sequence[str]] = None) -> Path:
    """Path of the cached library of `source` (relative to csrc/) built with `defines`, building
    and publishing it first if needed (BuildError with nvcc's output if it fails)."""
    chosen = arch_list(archs)
    key = variant_key(source, defines, chosen)
    stem = Path(source).stem
    entry = cache_root() / "variants" / f"{stem}-{key}"
    lib_name = f"{stem}.so"
    if entry_valid(entry, key):
        _touch(entry)
        return entry / lib_name
    entry.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(entry.parent / f"{entry.name}.lock"):
        if entry_valid(entry, key):
            return entry / lib_name
        if entry.exists():
            shutil.rmtree(entry)
        nvcc = find_nvcc()
        if nvcc is None:
            raise BuildError("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
        try:
            rpath = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "lib64")
            cmd = [nvcc, *VARIANT_FLAGS, f"-Xlinker=-rpath={rpath}", f"-I{csrc_dir()}", *gencode_flags(chosen),
                   *[f"-D{k}={v}" for k, v in sorted(defines.items())],
                   str(csrc_dir() / source), "-o", str(tmp / lib_name)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0 or not (tmp / lib_name).is_file():
                tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
                raise BuildError(f"building {source} with {defines} failed (exit {proc.returncode}):\n{tail}")
            _publish(tmp, entry, {"key": key, "library": lib_name, "sha256": _sha256(tmp / lib_name),
                                  "defines": {str(k): str(v) for k, v in defines.items()},
                                  "archs": list(chosen), "built": time.time()})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry / lib_name


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashrnn_compile.build", description=__doc__.split("\n")[0])
    parser.add_argument("--lib", default="alternating", choices=sorted(LIBRARIES))
    parser.add_argument("--arch", nargs="*", default=None, help="compute capabilities, e.g. 8.0 9.0")
    parser.add_argument("--print-key", action="store_true", help="print the cache entry and exit")
    parser.add_argument("--_compile-into", dest="compile_into", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_into:  # the child process of build_in_subprocess
        _compile(Path(args.compile_into), args.lib, tuple(args.arch), verbose=True)
        return 0
    key = cache_key(args.lib, args.arch)
    entry = entry_dir(args.lib, key)
    if args.print_key:
        print(json.dumps({"key": key, "entry": str(entry), "valid": entry_valid(entry, key),
                          "archs": list(arch_list(args.arch))}))
        return 0
    cached = entry_valid(entry, key)
    start = time.perf_counter()
    try:
        path = ensure_built(args.lib, args.arch)
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    what = "cached" if cached else "built"
    print(f"{what} {path} in {time.perf_counter() - start:.1f} s (archs {' '.join(arch_list(args.arch))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
