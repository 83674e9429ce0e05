"""The fused_cluster family from Python: R of a head split over the blocks of a thread-block cluster.

    forward(gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], cell, reverse, params,
            save) -> (h [T,B,NH,DH], sT [S,B,NH,DH], states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH])
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

The forward is the persistent cluster kernel (csrc/fused/fused_cluster.cuh; sm_90 only): one
cluster of CLUSTER_SIZE blocks per (head, batch tile), h exchanged through distributed shared
memory every step. With save=True it writes states_in and rhb in the layout the alternating
backward reads. The backward is this family's own persistent kernel (fused_cluster.cuh
backward_kernel, in a library built with FRNN_CLUSTER_BWD=1; H200, session 6: LSTM 1x768 bf16 B16
T1024 fwd+bwd 7.4 ms against 11.9 with the alternating backward): the same clusters, the partial R^T d(rhb) of each block summed
across the cluster through distributed shared memory, one cluster barrier a step; it writes dgx,
ds0 and d(rhb), and dR, db are one GEMM outside (fused_block._weight_grads: the block's dR rows,
G * DH / CLUSTER_SIZE x DH fp32, do not fit on chip beside its R for the dense heads). With
FLASHRNN_CLUSTER_BWD=0 (read at each backward call), or where the backward's library does not fit
the device, the alternating family's backward (its step kernel, one launch per step) runs from the
same saved states instead.

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
import math
import os
from typing import Dict, Optional, Tuple

import torch

from ..cells import get_cell
from . import _variants, alternating
from ._variants import device_index as _device_index, on as _on, ptr as _ptr, stream as _stream

Tensor = torch.Tensor

POISON = _variants.POISON  # NaN-fill outputs before the kernels write them (FLASHRNN_POISON=1)
SOURCE = "fused/fused_cluster.cu"
DTYPE_CODES = {torch.bfloat16: 1, torch.float16: 2}  # the kernel's FRNN_DTYPE
TAKES = tuple(DTYPE_CODES)
PARAMS = ("CLUSTER_SIZE", "WARPS", "BATCH_TILE", "R_REG_TILES")
KNOBS = {"H_PIECES": (1, 2), "VEC": (0, 1), "SYNC": (0, 1, 2), "ABLATE": (0, 1, 2, 3), "BWD_ABLATE": (0, 1, 2, 3), "BWD_SYNC": (0, 2),
         "KSLICES": tuple(range(1, 33)), "PROFILE": (0, 1)}  # test and timing switches (defines)


def _bind(lib: ctypes.CDLL) -> None:
    """The ctypes signatures of a loaded configuration's library."""
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.frnn_forward.argtypes = [i, i, i, i, i] + [p] * 9
    lib.frnn_forward.restype = i
    lib.frnn_check.argtypes = [i]
    lib.frnn_check.restype = i
    lib.frnn_config.argtypes = [p]
    lib.frnn_error.restype = ctypes.c_char_p
    if hasattr(lib, "frnn_backward"):  # a library built with FRNN_CLUSTER_BWD=1
        lib.frnn_backward.argtypes = [i, i, i, i, i] + [p] * 10
        lib.frnn_backward.restype = i
        lib.frnn_bwd_check.argtypes = [i]
        lib.frnn_bwd_check.restype = i
        lib.frnn_bwd_config.argtypes = [p]


_FAMILY = _variants.Family("fused_cluster", SOURCE, (9, "thread-block clusters"), _bind)
unavailable = _FAMILY.unavailable  # None when the kernels can run on a device, else why not (cached per device)
library = _FAMILY.library  # the loaded library of one configuration's defines (built first if needed)


def defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of one configuration; ValueError naming the parameter it cannot take.
    params may also carry the kernel's test and timing knobs (never set by the planner): H_PIECES
    (1 or 2: h as that many pieces of the input dtype in R h; default 1), VEC (0: each thread
    stores its unit pair into every peer; default 1: 16-byte copies of the block's staged units),
    SYNC (0: stores into the peers and one cluster barrier per step; 1: mbarriers per source block
    that the storing threads arrive on; default 2: bulk copies of each block's new units into its
    peers, completing on one mbarrier per h buffer), PROFILE (1: the first cluster prints the
    clocks a step spends in each phase; results unchanged), ABLATE (1..3: timing probes that skip part of a
    step, with SYNC 0; the results are wrong), BWD_ABLATE (1..3: the same for the backward kernel: no
    distributed-shared-memory stores, no MMAs, a block barrier), BWD_SYNC (0: the backward's partial
    sums stored into their owners and one cluster barrier per step; default 2: carried by bulk
    copies), KSLICES (the forward's K slices per block: WARPS / KSLICES groups of its G * DH /
    CLUSTER_SIZE / 16 m-tiles; default WARPS / (DH / CLUSTER_SIZE / 16), each warp the G gates of
    one 16-unit group)."""
    spec = get_cell(cell)
    if dtype not in TAKES:
        raise ValueError(f"fused_cluster: dtype: expected bfloat16 or float16, got {dtype}")
    return _variants.split_defines("fused_cluster", spec.functor, DTYPE_CODES[dtype], DH, params, PARAMS, KNOBS,
                                   "FRNN_CLUSTER_", (2, 16), "16 blocks per cluster", gates=spec.num_gates)


def config(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """(G, S, DH, CLUSTER_SIZE, WARPS, BATCH_TILE, R_REG_TILES, dtype code, smem bytes, h pieces)."""
    out = (ctypes.c_int * 10)()
    lib.frnn_config(out)
    return tuple(out)


def _resolve(cell: str, gx: Tensor, params):
    """(library, None) or (None, why the alternating family runs instead); cached per
    configuration and device."""
    return _FAMILY.resolve(cell, gx, params, _resolve_uncached)


def _resolve_uncached(cell: str, gx: Tensor, params):
    lib, defs, reason = _FAMILY.configured(cell, gx, params, defines, lambda lib: config(lib)[8])
    if reason is not None:
        return None, reason
    with _on(gx.device):
        if lib.frnn_check(_device_index(gx.device)) != 0:
            return None, f"configuration {defs}: {lib.frnn_error().decode()}"
    return lib, None


def forward(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params,
            save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _FAMILY.forward(gx, R, b, s0, cell, reverse, params, save, resolve=_resolve, launch=_launch_forward,
                           poison_outputs=POISON, alternating_params={})


def _launch_forward(lib: ctypes.CDLL, gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, h: Tensor, sT: Tensor,
                    states_in: Tensor, rhb: Tensor, reverse: bool, save: bool) -> Optional[str]:
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    rc = lib.frnn_forward(_device_index(gx.device), T, B, NH, int(reverse), _ptr(gx), _ptr(R), _ptr(b), _ptr(s0),
                          _ptr(h), _ptr(sT), _ptr(states_in) if save else None, _ptr(rhb) if save else None,
                          _stream(gx.device))
    return None if rc == 0 else lib.frnn_error().decode()


BWD_ENV = "FLASHRNN_CLUSTER_BWD"  # "0": the alternating backward; else (default) this family's own kernel


def cluster_backward_enabled() -> bool:
    """Whether backward() runs this family's own kernel (the default; env FLASHRNN_CLUSTER_BWD=0
    turns it off, read per call)."""
    return os.environ.get(BWD_ENV, "1") != "0"


def backward_defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of the backward's library: the forward's configuration with the backward's
    own tiling, plus FRNN_CLUSTER_BWD=1. The backward takes the forward's CLUSTER_SIZE and
    BATCH_TILE, and BWD_WARPS / BWD_R_REG_TILES (the planner's backward tiling) as its WARPS and
    R_REG_TILES, or without them the forward's (an explicit tiling; then also its KSLICES). It
    splits a block's warps by a fixed rule: MG = gcd(WARPS, DH / 16) groups of the DH / 16 output
    m-tiles times BKS = WARPS / MG slices of the block's G * DH / CLUSTER_SIZE / 16 k-tiles
    (fused_cluster.cuh BwdConfig); ValueError naming WARPS when BKS does not divide them."""
    params = dict(params)
    if "BWD_WARPS" in params:  # the library's forward (never launched from it): these warps' default layout
        params.pop("KSLICES", None)
        params["WARPS"] = params.pop("BWD_WARPS")
    if "BWD_R_REG_TILES" in params:
        params["R_REG_TILES"] = params.pop("BWD_R_REG_TILES")
    defs = defines(cell, dtype, DH, params)
    G = get_cell(cell).num_gates
    warps, cs = int(params["WARPS"]), int(params["CLUSTER_SIZE"])
    mg = math.gcd(warps, DH // 16)
    bks, ktiles = warps // mg, G * (DH // cs // 16)
    if ktiles % bks != 0:
        raise ValueError(f"fused_cluster backward: WARPS={warps}: its WARPS / gcd(WARPS, DH / 16) = {bks} K slices "
                         f"must divide the block's G * DH / CLUSTER_SIZE / 16 = {ktiles} k-tiles")
    defs["FRNN_CLUSTER_BWD"] = 1
    return defs


_BWD_RESOLVED: Dict[tuple, tuple] = {}


def _resolve_backward(cell: str, gx: Tensor, params):
    """(backward library, None) or (None, why the alternating backward runs instead); cached per
    configuration and device."""
    key = (cell, gx.dtype, gx.shape[4], gx.device.index, tuple(sorted(params.items())) if params else
           tuple(gx.shape[1:3]))
    hit = _BWD_RESOLVED.get(key)
    if hit is None:
        hit = _BWD_RESOLVED[key] = _resolve_backward_uncached(cell, gx, params)
    return hit


def _resolve_backward_uncached(cell: str, gx: Tensor, params):
    defs = backward_defines(cell, gx.dtype, gx.shape[4], _FAMILY.params(cell, gx, params))
    lib = _FAMILY.library(defs)
    out = (ctypes.c_int * 4)()
    lib.frnn_bwd_config(out)
    need, have = out[0], torch.cuda.get_device_properties(gx.device).shared_memory_per_block_optin
    if need > have:
        return None, f"backward configuration {defs} needs {need} B of shared memory per block, the device has {have}"
    with _on(gx.device):
        if lib.frnn_bwd_check(_device_index(gx.device)) != 0:
            return None, f"backward configuration {defs}: {lib.frnn_error().decode()}"
    return lib, None


def backward(dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor, rhb: Tensor, cell: str,
             reverse: bool, params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the states the forward saved (states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH], fp32): the
    family's own kernel, or with FLASHRNN_CLUSTER_BWD=0 the alternating family's (step kernel) (a configuration it cannot take: ValueError naming the parameter; one that does not fit
    the device: the alternating backward, one warning)."""
    if not cluster_backward_enabled() or gx.dtype not in TAKES or unavailable(gx.device) is not None:
        return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, {})
    lib, reason = _resolve_backward(cell, gx, params)
    if lib is None:
        _FAMILY.fallback("the alternating backward", reason)
        return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, {})
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    (dh, dsT, gx, R, states_in, rhb), (dgx, ds0, drhb) = _variants.backward_operands(
        _FAMILY, dh, dsT, gx, R, states_in, rhb, POISON)
    if B > 0 and NH > 0:
        with _on(gx.device):
            rc = lib.frnn_backward(_device_index(gx.device), T, B, NH, int(reverse), _ptr(dh), _ptr(dsT), _ptr(gx),
                                   _ptr(R), _ptr(states_in), _ptr(rhb), _ptr(dgx), _ptr(drhb), _ptr(ds0),
                                   _stream(gx.device))
        if rc != 0:
            raise RuntimeError(f"flashrnn fused_cluster backward ({cell}): {lib.frnn_error().decode()}")
    return _variants.backward_results(dgx, drhb, states_in, ds0, R)
