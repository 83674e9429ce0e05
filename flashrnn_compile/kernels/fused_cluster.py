"""The fused_cluster family from Python: R of a head split over the blocks of a thread-block cluster.

    forward(gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], cell, reverse, params,
            save) -> (h [T,B,NH,DH], sT [S,B,NH,DH], states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH])
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

The forward is the persistent cluster kernel (csrc/fused/fused_cluster.cuh; sm_90 only): one
cluster of CLUSTER_SIZE blocks per (head, batch tile), h exchanged through distributed shared
memory every step. With save=True it writes states_in and rhb in the layout the alternating
backward reads, and the BACKWARD IS THE ALTERNATING FAMILY'S (its step kernel, one launch per
step, from those saved states): this family has no backward kernel of its own yet.

params are the planner's fused_cluster variables {CLUSTER_SIZE, WARPS, BATCH_TILE, R_REG_TILES}
(empty: ask the planner for this device). Each configuration is its own small CUDA library
(csrc/fused/fused_cluster.cu built with -D defines by `build.ensure_variant`, cached), called
through ctypes on the current stream. bfloat16 and float16 only; float64 runs the reference (one
warning). A configuration the kernel cannot take raises ValueError naming the parameter; one that
does not fit the device (shared memory, or no cluster of that size resident) runs the alternating
family instead, with one warning.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from typing import Dict, Optional, Tuple

import torch

from .. import build, reference
from ..cells import get_cell
from . import alternating
from .fused_block import _aligned, _on, _ptr, _stream

Tensor = torch.Tensor

POISON = os.environ.get("FLASHRNN_POISON", "") not in ("", "0")
SOURCE = "fused/fused_cluster.cu"
DTYPE_CODES = {torch.bfloat16: 1, torch.float16: 2}  # the kernel's FRNN_DTYPE
TAKES = tuple(DTYPE_CODES)
PARAMS = ("CLUSTER_SIZE", "WARPS", "BATCH_TILE", "R_REG_TILES")
KNOBS = {"H_PIECES": (1, 2), "VEC": (0, 1), "SYNC": (0, 1), "ABLATE": (0, 1, 2, 3)}  # test and timing switches (defines)
INT_MAX = 2**31 - 1

_LIBS: Dict[str, ctypes.CDLL] = {}
_WARNED: set = set()
_UNAVAILABLE: Dict[torch.device, Optional[str]] = {}
_RESOLVED: Dict[tuple, tuple] = {}


def unavailable(device: torch.device) -> Optional[str]:
    """None when the kernels can run on `device`, else why not (cached per device)."""
    device = torch.device(device)
    if device not in _UNAVAILABLE:
        _UNAVAILABLE[device] = _unavailable_uncached(device)
    return _UNAVAILABLE[device]


def _unavailable_uncached(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return f"the fused_cluster kernels need a CUDA device, got {device.type!r}"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "CUDA is not available to torch"
    if torch.cuda.get_device_capability(device)[0] < 9:
        return "the fused_cluster kernels need compute capability 9.0 or newer (thread-block clusters)"
    if build.find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME), cannot build the kernels"
    return None


def defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of one configuration; ValueError naming the parameter it cannot take.
    params may also carry the kernel's test and timing knobs (never set by the planner): H_PIECES
    (1 or 2: h as that many pieces of the input dtype in R h; default 1), VEC (0: each thread
    stores its unit pair into every peer; default 1: 16-byte copies of the block's staged units),
    SYNC (0: one cluster barrier per step; default 1: mbarriers per source block), ABLATE (1..3: timing probes that skip part of a step; the results are wrong)."""
    spec = get_cell(cell)
    if dtype not in TAKES:
        raise ValueError(f"fused_cluster: dtype: expected bfloat16 or float16, got {dtype}")
    missing = [k for k in PARAMS if k not in params]
    if missing:
        raise ValueError(f"fused_cluster: params: expected {', '.join(PARAMS)}, missing {missing}")
    cs, warps, bt, rreg = (int(params[k]) for k in PARAMS)
    if not 2 <= cs <= 16:
        raise ValueError(f"fused_cluster: CLUSTER_SIZE={cs}: expected 2 .. 16 blocks per cluster")
    if DH % cs != 0 or (DH // cs) % 16 != 0:
        raise ValueError(f"fused_cluster: head dim DH={DH} with CLUSTER_SIZE={cs}: expected DH / CLUSTER_SIZE "
                         "to be a multiple of 16 (each block owns whole 16-unit MMA tiles)")
    groups = DH // cs // 16
    if not 1 <= warps <= 32 or warps % groups != 0:
        raise ValueError(f"fused_cluster: WARPS={warps}: expected a multiple of the block's DH / CLUSTER_SIZE / 16 = "
                         f"{groups} unit groups, at most 32")
    slices = warps // groups
    if (DH // 16) % slices != 0:
        raise ValueError(f"fused_cluster: WARPS={warps}: its {slices} K slices per unit group must divide the "
                         f"head dim's DH / 16 = {DH // 16} k-tiles")
    if bt % 8 != 0 or not 8 <= bt <= 256:
        raise ValueError(f"fused_cluster: BATCH_TILE={bt}: expected a multiple of 8 in 8 .. 256")
    if rreg < 0:
        raise ValueError(f"fused_cluster: R_REG_TILES={rreg}: expected >= 0")
    defs = {"FRNN_CELL": spec.functor, "FRNN_DTYPE": DTYPE_CODES[dtype], "FRNN_DH": DH, "FRNN_CLUSTER_SIZE": cs,
            "FRNN_WARPS": warps, "FRNN_BATCH_TILE": bt, "FRNN_R_REG_TILES": rreg}
    for key, allowed in KNOBS.items():
        if key in params:
            if params[key] not in allowed:
                raise ValueError(f"fused_cluster: {key}={params[key]!r}: expected one of {allowed}")
            defs[f"FRNN_CLUSTER_{key}"] = int(params[key])
    return defs


def library(defs: Dict[str, object]) -> ctypes.CDLL:
    """The loaded library of one configuration (built first if needed)."""
    key = repr(sorted(defs.items()))
    lib = _LIBS.get(key)
    if lib is None:
        lib = ctypes.CDLL(str(build.ensure_variant(SOURCE, defs)))
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.frnn_forward.argtypes = [i, i, i, i, i] + [p] * 9
        lib.frnn_forward.restype = i
        lib.frnn_check.argtypes = [i]
        lib.frnn_check.restype = i
        lib.frnn_config.argtypes = [p]
        lib.frnn_error.restype = ctypes.c_char_p
        _LIBS[key] = lib
    return lib


def config(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """(G, S, DH, CLUSTER_SIZE, WARPS, BATCH_TILE, R_REG_TILES, dtype code, smem bytes, h pieces)."""
    out = (ctypes.c_int * 10)()
    lib.frnn_config(out)
    return tuple(out)


def _params(cell: str, gx: Tensor, params) -> Dict[str, object]:
    if params:
        return dict(params)
    from .. import planner  # empty params: the planner's fused_cluster choice for this device

    T, B, NH, G, DH = gx.shape
    chosen = planner.plan(cell, B, NH, DH, gx.dtype, gpu=gx.device.index or 0, families=("fused_cluster",))
    if chosen.family != "fused_cluster":
        raise ValueError(f"fused_cluster: no fused_cluster configuration for this shape: {chosen.reason}")
    return dict(chosen.params)


def _fallback(what: str, reason: str) -> None:
    if (what, reason) not in _WARNED:
        _WARNED.add((what, reason))
        warnings.warn(f"flashrnn: fused_cluster: {reason}; running {what}", RuntimeWarning, stacklevel=3)


def _resolve(cell: str, gx: Tensor, params):
    """(library, None) or (None, why the alternating family runs instead); cached per
    configuration and device."""
    key = (cell, gx.dtype, gx.shape[4], gx.device.index,
           tuple(sorted(params.items())) if params else tuple(gx.shape[1:3]))
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve_uncached(cell, gx, params)
    return hit


def _resolve_uncached(cell: str, gx: Tensor, params):
    defs = defines(cell, gx.dtype, gx.shape[4], _params(cell, gx, params))
    lib = library(defs)
    need = config(lib)[8]
    have = torch.cuda.get_device_properties(gx.device).shared_memory_per_block_optin
    if need > have:
        return None, f"configuration {defs} needs {need} B of shared memory per block, the device has {have}"
    index = gx.device.index if gx.device.index is not None else torch.cuda.current_device()
    with _on(gx.device):
        if lib.frnn_check(index) != 0:
            return None, f"configuration {defs}: {lib.frnn_error().decode()}"
    return lib, None


def _check_sizes(B: int, NH: int, G: int, S: int, DH: int) -> None:
    """The kernel indexes one time step's [S or G, B, NH, DH] slice in 32-bit ints."""
    if max(G, S) * B * NH * DH > INT_MAX:
        raise ValueError(f"fused_cluster: B={B}, NH={NH}, DH={DH}: one step's {max(G, S)} x B x NH x DH values "
                         f"exceed 2**31 - 1 (32-bit indexing); split the batch")


def _poison(*tensors: Tensor) -> None:
    if POISON:
        for t in tensors:
            t.fill_(float("nan"))


def forward(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params,
            save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if gx.dtype == torch.float64:
        _fallback("the reference", "no float64 path")
        return reference.forward(gx, R, b, s0, cell, reverse, save)
    lib, reason = _resolve(cell, gx, params)
    if lib is None:
        _fallback("the alternating kernels", reason)
        return alternating.forward(gx, R, b, s0, cell, reverse, {}, save)
    gx = _aligned(gx)
    R, b, s0 = (t.contiguous() for t in (R, b, s0))
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    S = s0.shape[0]
    _check_sizes(B, NH, G, S, DH)
    h = gx.new_empty(T, B, NH, DH)  # [T, B, NH, DH]
    sT = gx.new_empty(S, B, NH, DH)  # [S, B, NH, DH]
    f32 = dict(dtype=torch.float32, device=gx.device)
    states_in = torch.empty((T, S, B, NH, DH) if save else (0,), **f32)  # [T, S, B, NH, DH]
    rhb = torch.empty((T, B, NH, G, DH) if save else (0,), **f32)  # [T, B, NH, G, DH]
    _poison(h, sT, states_in, rhb)
    if B == 0 or NH == 0:
        return h, sT, states_in, rhb
    index = gx.device.index if gx.device.index is not None else torch.cuda.current_device()
    with _on(gx.device):
        rc = lib.frnn_forward(index, T, B, NH, int(reverse), _ptr(gx), _ptr(R), _ptr(b), _ptr(s0), _ptr(h), _ptr(sT),
                              _ptr(states_in) if save else None, _ptr(rhb) if save else None, _stream(gx.device))
    if rc != 0:
        raise RuntimeError(f"flashrnn fused_cluster forward ({cell}): {lib.frnn_error().decode()}")
    return h, sT, states_in, rhb


def backward(dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor, rhb: Tensor, cell: str,
             reverse: bool, params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The alternating family's backward (step kernel) from the states the forward saved: same
    layouts (states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH], fp32)."""
    return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, {})
