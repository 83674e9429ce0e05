"""FlashRNN 1.0.8 (PyPI, Pöppel et al.) as an optional baseline of the layer suite.

The device machine has no network, so the wheel travels with the command (carry `build/wheels`,
filled here by `pip download flashrnn==1.0.8 packaging --no-deps -d build/wheels`; never committed).
On first use this module

1. installs the wheel into a temporary folder, or once into $FLASHRNN_108_DIR to share the install
   and its JIT builds between processes (`pip install --no-deps --target`, or a plain unzip of the
   pure-Python wheel where pip is missing), never into the environment;
2. patches the installed copy for CUDA 13 (torch.version.cuda >= 13): its
   `gpu_info/gpu_info.cc` reads `cudaDeviceProp` fields CUDA 13 removed; those reads become 0
   (they are informational: FlashRNN's tiling reads none of them). Two benchmark-only edits to
   its loader: no random 0-10 s sleep before each JIT build and no verbose build log. The kernels
   themselves are untouched;
3. imports it (its deps: torch, einops, triton, ninja, packaging; a `packaging-*.whl` carried in the
   same folder is installed beside it where the device lacks packaging).

`available()` says whether that worked; `reason()` says why not. `layer_fn(...)` builds the
forward and forward+backward callables of one layer for the harness to time (FlashRNN JIT-
compiles each (backend, batch, heads, head dim, dtype): 43-69 s for its fused kernels on an H100).

    ok = flashrnn_108.available(); print(flashrnn_108.reason())
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional, Tuple

import torch

VERSION = "1.0.8"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_DIRS = (os.environ.get("FLASHRNN_108_WHEEL_DIR", ""), os.path.join(ROOT, "build", "wheels"))
# cudaDeviceProp fields removed in CUDA 13 that gpu_info.cc reads
REMOVED_PROPS = ("clockRate", "deviceOverlap", "kernelExecTimeoutEnabled", "computeMode", "maxTexture1DLinear",
                 "memoryClockRate", "singleToDoublePrecisionPerfRatio", "cooperativeMultiDeviceLaunch")
BACKENDS = {"fused": "cuda_fused", "alternating": "cuda", "vanilla": "vanilla"}  # ours -> FlashRNN's (vanilla:
# its pure-PyTorch loop, runs on the CPU; the tests use it to check the call's shapes)
GATES = {"lstm": 4, "gru": 3, "slstm": 4, "elman_tanh": 1}
BIAS_GATES = {"lstm": 4, "gru": 4, "slstm": 4, "elman_tanh": 1}  # GRU: r, z, n (input) + n (recurrent)
STATES = {"lstm": 2, "gru": 1, "slstm": 4, "elman_tanh": 1}
FUNCTION = {"lstm": "lstm", "gru": "gru", "slstm": "slstm", "elman_tanh": "elman"}
MISSING_DEPS = {"packaging": "packaging-*-py3-none-any.whl"}  # module -> carried wheel, if the device lacks it
# FLASHRNN_108_DIR: install into this folder once and reuse it in later processes (marker file below).
# Its JIT builds are then cached across processes too: torch's build.ninja names the sources by path,
# so a fresh temporary copy per process would rebuild every configuration (43-69 s each).
INSTALLED = ".flashrnn108-installed"

_STATE: Dict[str, object] = {}


def wheel_path(pattern: str = f"flashrnn-{VERSION}-*.whl") -> Optional[str]:
    """The carried wheel matching `pattern` (default: flashrnn 1.0.8), or None."""
    for d in WHEEL_DIRS:
        if d:
            hits = sorted(glob.glob(os.path.join(d, pattern)))
            if hits:
                return hits[-1]
    return None


def install_missing_deps(target: str) -> List[str]:
    """Install the carried wheels of FlashRNN's pure-Python deps this Python lacks (packaging:
    not among the device's packages) into `target`."""
    done = []
    for module, pattern in MISSING_DEPS.items():
        if importlib.util.find_spec(module) is not None:
            continue
        wheel = wheel_path(pattern)
        if wheel is None:
            raise RuntimeError(f"FlashRNN {VERSION} imports {module!r}, which is not installed and has no wheel "
                               f"({pattern}) in {[d for d in WHEEL_DIRS if d]}: pip download {module} --no-deps "
                               "-d build/wheels")
        done.append(f"{module} from {os.path.basename(wheel)} by {install(wheel, target, module)}")
    return done


def install(wheel: str, target: str, package: str = "flashrnn") -> str:
    """Install `wheel` (no deps) into `target`, giving `package`; returns how ("pip" or "unzip")."""
    if not os.path.isfile(wheel):
        raise FileNotFoundError(f"wheel: no such file {wheel!r}")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", target, wheel]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        proc = None
        why = str(e)
    else:
        why = (proc.stderr or proc.stdout).strip()[-300:]
    if proc is not None and proc.returncode == 0 and os.path.isdir(os.path.join(target, package)):
        return "pip"
    with zipfile.ZipFile(wheel) as z:  # a py3-none-any wheel is a zip of the installed tree
        z.extractall(target)
    if not os.path.isdir(os.path.join(target, package)):
        raise RuntimeError(f"installing {wheel} gave no {package} package (pip said: {why})")
    return f"unzip (pip failed: {why[:120]})"


def patch_gpu_info(source: str) -> Tuple[str, List[str]]:
    """`source` of gpu_info.cc with every read of a removed cudaDeviceProp field replaced by 0."""
    found: List[str] = []

    def zero(m: "re.Match[str]") -> str:
        found.append(m.group(1))
        return "0"

    pattern = r"\bprop\.(" + "|".join(REMOVED_PROPS) + r")\b"
    return re.sub(pattern, zero, source), sorted(set(found))


def patch_loader(source: str) -> Tuple[str, List[str]]:
    """`source` of cuda_init.py without the random pre-build sleep and the verbose build log."""
    edits = []
    new = source.replace("time.sleep(random.random() * 10)", "time.sleep(0)  # benchmarks/flashrnn_108.py")
    if new != source:
        edits.append("no random sleep before JIT builds")
    newer = new.replace('"verbose": True,', '"verbose": False,')
    if newer != new:
        edits.append("quiet JIT builds")
    return newer, edits


def patch_installed(target: str, cuda_version: Optional[str]) -> List[str]:
    """Apply the CUDA-13 patch (when `cuda_version` >= 13) and the loader edits in `target`."""
    pkg = os.path.join(target, "flashrnn", "flashrnn")
    notes = []
    major = int(cuda_version.split(".")[0]) if cuda_version else 0
    if major >= 13:
        path = os.path.join(pkg, "gpu_info", "gpu_info.cc")
        with open(path, encoding="utf-8") as f:
            patched, fields = patch_gpu_info(f.read())
        if not fields:
            raise RuntimeError(f"CUDA-13 patch: none of {REMOVED_PROPS} read in {path}: not the expected 1.0.8 source")
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)
        notes.append(f"CUDA {cuda_version}: zeroed cudaDeviceProp.{{{','.join(fields)}}} in gpu_info.cc")
    path = os.path.join(pkg, "cuda_init.py")
    with open(path, encoding="utf-8") as f:
        patched, edits = patch_loader(f.read())
    with open(path, "w", encoding="utf-8") as f:
        f.write(patched)
    return notes + edits


def install_patched(wheel: str, target: str, cuda_version: Optional[str]) -> List[str]:
    """Install `wheel` and its missing deps into `target` and patch it, unless an earlier call did
    (its marker file is there): then nothing is written, so no source gets a newer time stamp and
    the JIT builds cached beside it stay valid. Returns what was done."""
    marker = os.path.join(target, INSTALLED)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            return [f"reused {target} ({f.read().strip()})"]
    os.makedirs(target, exist_ok=True)
    notes = [f"installed {os.path.basename(wheel)} by {install(wheel, target)} into {target}"]
    notes += install_missing_deps(target)
    notes += patch_installed(target, cuda_version)
    with open(marker, "w", encoding="utf-8") as f:
        f.write("; ".join(notes) + "\n")
    return notes


def _setup() -> None:
    """Install, patch and import once; records the module or the reason in _STATE."""
    if "ok" in _STATE:
        return
    _STATE["ok"], _STATE["reason"], _STATE["notes"] = False, None, []
    if not torch.cuda.is_available():
        _STATE["reason"] = "FlashRNN 1.0.8 needs a CUDA device (its kernels are CUDA only)"
        return
    wheel = wheel_path()
    if wheel is None:
        _STATE["reason"] = (f"no flashrnn-{VERSION} wheel in {[d for d in WHEEL_DIRS if d]} (pip download "
                            f"flashrnn=={VERSION} --no-deps -d build/wheels, then carry build/wheels)")
        return
    shared = os.environ.get("FLASHRNN_108_DIR", "")
    target = shared or tempfile.mkdtemp(prefix="flashrnn108-")
    try:
        notes = install_patched(wheel, target, torch.version.cuda)
        sys.path.insert(0, target)
        import flashrnn  # noqa: F401  (the 1.0.8 package from the temp folder)
        from flashrnn.flashrnn import flashrnn as entry
    except Exception as e:  # reported as the reason the FlashRNN rows are missing
        _STATE["reason"] = f"FlashRNN {VERSION} could not be installed/imported: {type(e).__name__}: {e}"
        if not shared:
            shutil.rmtree(target, ignore_errors=True)
        return
    if os.path.dirname(os.path.dirname(os.path.abspath(flashrnn.__file__))) != target:
        _STATE["reason"] = f"imported flashrnn from {flashrnn.__file__}, not the patched copy in {target}"
        return
    _STATE.update(ok=True, entry=entry, notes=notes, target=target)


def available() -> bool:
    """True when the patched FlashRNN 1.0.8 imports on this machine."""
    _setup()
    return bool(_STATE["ok"])


def reason() -> Optional[str]:
    """Why FlashRNN is unavailable (None when it is available)."""
    _setup()
    return _STATE["reason"]


def notes() -> List[str]:
    """What was installed and patched."""
    _setup()
    return list(_STATE["notes"])


def supports(backend: str, cell: str) -> Optional[str]:
    """None if FlashRNN's `backend` runs `cell` as such, else why not (it would fall back silently)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, got {backend!r}")
    if cell not in FUNCTION:
        return f"FlashRNN {VERSION} has no {cell!r} cell"
    if backend == "fused" and cell == "gru":
        return f"FlashRNN {VERSION} runs GRU on its alternating kernel even when cuda_fused is asked (logged, not raised)"
    return None


def layer_fn(backend: str, cell: str, NH: int, DH: int, dtype: torch.dtype, B: int, T: int,
             device: str = "cuda", entry: Optional[Callable] = None) -> Tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """(forward, forward_backward) of one FlashRNN layer on random inputs, input projection
    included like every row of the layer suite: x [B, T, H] -> x W^T + b_in -> FlashRNN -> h.

    The first call of either JIT-compiles FlashRNN's kernels for this configuration. entry:
    FlashRNN's `flashrnn.flashrnn.flashrnn` (default: the patched copy this module installs)."""
    why = supports(backend, cell)
    if why:
        raise ValueError(why)
    if entry is None:
        if not available():
            raise RuntimeError(reason())
        entry = _STATE["entry"]
    G, S, H = GATES[cell], STATES[cell], NH * DH
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]
    x = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=True)  # [B, T, H]
    W = (torch.randn(G * H, H, device=device) / H**0.5).to(dtype).requires_grad_(True)  # [G*H, H]
    b_in = (0.1 * torch.randn(G * H, device=device)).to(dtype).requires_grad_(True)  # [G*H]
    R = (torch.randn(G, NH, DH, DH, device=device) / DH**0.5).to(dtype).requires_grad_(True)  # [G, NH, DH, DH]
    Gb = BIAS_GATES[cell]
    b = (0.1 * torch.randn(Gb, NH, DH, device=device)).to(dtype).requires_grad_(True)  # [Gb, NH, DH]
    s0 = (0.5 * torch.randn(S, B, 1, NH, DH, device=device)).to(dtype)  # [S, B, 1, NH, DH]
    dh = torch.randn(B, T, NH, DH, device=device, dtype=dtype)  # [B, T, NH, DH]
    leaves = [x, W, b_in, R, b]

    def run() -> torch.Tensor:
        Wx = torch.nn.functional.linear(x, W, b_in).view(B, T, G, NH, DH)  # [B, T, G, NH, DH]
        h, _ = entry(Wx, R, b, states=s0, function=FUNCTION[cell], backend=BACKENDS[backend], dtype=name)
        return h[0]  # h [S, B, T, NH, DH] -> [B, T, NH, DH]

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return run()

    def forward_backward() -> None:
        torch.autograd.grad(run(), leaves, dh)

    return forward, forward_backward


def warm(specs: List[str], B: int, T: int) -> None:
    """JIT-build FlashRNN's kernels for each `backend:cell:dtype:NHxDH` spec (one forward and one
    forward+backward), printing the seconds each took: run beside the GPU tests, with
    FLASHRNN_108_DIR and TORCH_EXTENSIONS_DIR shared, so the harness later finds the builds done."""
    import time

    from .suites.common import DTYPES
    if not available():
        raise SystemExit(f"FlashRNN {VERSION}: {reason()}")
    print("\n".join(notes()))
    for spec in specs:
        backend, cell, dt, heads = spec.split(":")
        NH, DH = (int(v) for v in heads.split("x"))
        t0 = time.perf_counter()
        fwd, fwd_bwd = layer_fn(backend, cell, NH, DH, DTYPES[dt], B, T)
        fwd()
        fwd_bwd()
        torch.cuda.synchronize()
        print(f"{spec} B{B} T{T}: built and ran in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="JIT-build FlashRNN 1.0.8 configurations ahead of the harness")
    ap.add_argument("--warm", required=True, help="comma list of backend:cell:dtype:NHxDH, e.g. fused:lstm:bf16:12x64")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    a = ap.parse_args()
    warm(a.warm.split(","), a.B, a.T)
