"""The fused_grid family from Python: R of a head split over GRID_SPLIT blocks of a cooperative grid.

    forward(gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], cell, reverse, params,
            save) -> (h [T,B,NH,DH], sT [S,B,NH,DH], states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH])
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

The forward is the persistent grid kernel (csrc/fused/fused_grid.cuh; sm_80 and newer, no
clusters): GRID_SPLIT blocks per (head, batch tile), each owning DH / GRID_SPLIT units, all of them
resident at once (one cooperative launch); h goes through global memory (the output h itself) and
only the blocks of one (head, batch tile) wait for each other, on per-block flags (release /
acquire at GPU scope). With save=True it writes states_in and rhb. The backward is the family's
own persistent grid kernel (the same blocks, drhb exchanged through global memory and each block
multiplying it by its columns of R; `backward`), or the alternating family's where it does not
run (FLASHRNN_GRID_BWD=0, or a backward that does not fit the device).

params are the planner's fused_grid variables {GRID_SPLIT, WARPS, BATCH_TILE, R_REG_TILES} (empty:
ask the planner for this device). Each configuration is its own small CUDA library
(csrc/fused/fused_grid.cu built with -D defines by `build.ensure_variant`, cached), called through
ctypes on the current stream. bfloat16 and float16 only; float64 runs the reference (one warning).
A configuration the kernel cannot take raises ValueError naming the parameter; one that does not
fit the device (shared memory, no block per SM, or more blocks than the device holds at once for
this B and NH) runs the alternating family instead, with one warning.

The planner offers this family (verified on the H200, forward and backward: tests/gpu/test_fused_grid.py,
sessions 6 and 13); FLASHRNN_GRID=0 in the environment withdraws it (`offered()`, read by
context.choose_plan); explicit plans (runtime.plan_json("fused_grid", {...})) run it regardless.
"""

from __future__ import annotations

import ctypes
import os
from typing import Dict, Optional, Tuple

import torch

from ..cells import get_cell
from . import _variants, alternating
from ._variants import device_index as _device_index, on as _on, ptr as _ptr, stream as _stream

Tensor = torch.Tensor

POISON = _variants.POISON  # NaN-fill outputs before the kernels write them (FLASHRNN_POISON=1)
SOURCE = "fused/fused_grid.cu"
DTYPE_CODES = {torch.bfloat16: 1, torch.float16: 2}  # the kernel's FRNN_DTYPE
TAKES = tuple(DTYPE_CODES)
PARAMS = ("GRID_SPLIT", "WARPS", "BATCH_TILE", "R_REG_TILES")
KNOBS = {"WAIT": (0, 1)}  # test and timing switches (defines), never set by the planner
OFFER_ENV = "FLASHRNN_GRID"  # "0": the planner never chooses this family (only explicit plans run it); else it may


def offered() -> bool:
    """Whether the planner may choose fused_grid on its own: yes unless env FLASHRNN_GRID=0 (read per
    call). Off by default until session 13, when its own backward was verified on the H200."""
    return os.environ.get(OFFER_ENV, "1") != "0"


def _bind(lib: ctypes.CDLL) -> None:
    """The ctypes signatures of a loaded configuration's library."""
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.frnn_forward.argtypes = [i, i, i, i, i] + [p] * 10
    lib.frnn_forward.restype = i
    lib.frnn_check.argtypes = [i, p]
    lib.frnn_check.restype = i
    lib.frnn_config.argtypes = [p]
    lib.frnn_error.restype = ctypes.c_char_p
    if hasattr(lib, "frnn_backward"):  # a library built with FRNN_GRID_BWD=1
        lib.frnn_backward.argtypes = [i, i, i, i, i] + [p] * 12
        lib.frnn_backward.restype = i
        lib.frnn_bwd_check.argtypes = [i, p]
        lib.frnn_bwd_check.restype = i
        lib.frnn_bwd_config.argtypes = [p]


_FAMILY = _variants.Family("fused_grid", SOURCE, (8, "cp.async, bf16 MMAs and cooperative launches"), _bind)
unavailable = _FAMILY.unavailable  # None when the kernels can run on a device, else why not (cached per device)
library = _FAMILY.library  # the loaded library of one configuration's defines (built first if needed)


def defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of one configuration; ValueError naming the parameter it cannot take.
    params may also carry the kernel's knob WAIT (fused_grid.cuh FRNN_GRID_WAIT; default 0:
    GRID_SPLIT threads acquire one flag each, then a block barrier; 1: each thread acquires the
    flags of its own h chunks' source blocks, no barrier; 24% slower at LSTM 1x1024)."""
    spec = get_cell(cell)
    if dtype not in TAKES:
        raise ValueError(f"fused_grid: dtype: expected bfloat16 or float16, got {dtype}")
    defs = _variants.split_defines("fused_grid", spec.functor, DTYPE_CODES[dtype], DH, params, PARAMS, KNOBS,
                                   "FRNN_GRID_", (1, max(DH // 16, 1)), f"DH / 16 = {DH // 16} blocks per head")
    extra = sorted(set(params) - set(PARAMS) - set(KNOBS))
    if extra:
        raise ValueError(f"fused_grid: params: unknown {extra} (expected {', '.join(PARAMS)}, optionally {', '.join(KNOBS)})")
    return defs


def config(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """(G, S, DH, GRID_SPLIT, WARPS, BATCH_TILE, R_REG_TILES, dtype code, smem bytes, h pieces)."""
    out = (ctypes.c_int * 10)()
    lib.frnn_config(out)
    return tuple(out)


def blocks(B: int, NH: int, grid_split: int, batch_tile: int) -> int:
    """Blocks of one launch: GRID_SPLIT x ceil(B / BATCH_TILE) x NH (all resident at once)."""
    return grid_split * -(-B // batch_tile) * NH


# cells this family hands to the alternating family (one warning), with the reason
REFUSED_CELLS = {
    "elman_relu": "its bfloat16 gradients (the alternating backward from this forward's saved states) "
                  "were over 2x PyTorch's float64 error in 4 of the 16 T=17 cases on the H200 (session 6: "
                  "dR 0.093 vs 0.037, ds0 0.0062 vs 0.0027), every other cell within; not run until understood",
}


def _resolve(cell: str, gx: Tensor, params):
    """((library, resident blocks, GRID_SPLIT, BATCH_TILE), None) or (None, why the alternating family
    runs instead: a REFUSED_CELLS cell, or a grid larger than the device holds). The
    library and its device check are cached per configuration and device; whether this call's
    grid (B and NH) is resident at once is checked here, per call."""
    if cell in REFUSED_CELLS:
        return None, f"cell {cell!r}: {REFUSED_CELLS[cell]}"
    handle, reason = _FAMILY.resolve(cell, gx, params, _resolve_uncached)
    if handle is None:
        return None, reason
    return _resident(handle, gx, "configuration")


def _resident(handle: tuple, gx: Tensor, what: str):
    """(handle, None) when this call's grid (B and NH of gx) fits the blocks the device holds at
    once for the handle's kernel (handle[1:4] = resident blocks, GRID_SPLIT, BATCH_TILE), else
    (None, why)."""
    resident, gs, bt = handle[1:4]
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    need = blocks(B, NH, gs, bt)
    if need > resident:
        return None, (f"{what} GRID_SPLIT={gs}, BATCH_TILE={bt}: B={B}, NH={NH} need {need} blocks, "
                      f"more than the {resident} this device holds at once (a cooperative grid must be resident)")
    return handle, None


def _resolve_uncached(cell: str, gx: Tensor, params):
    lib, defs, reason = _FAMILY.configured(cell, gx, params, defines, lambda lib: config(lib)[8])
    if reason is not None:
        return None, reason
    resident = ctypes.c_int(0)
    with _on(gx.device):
        if lib.frnn_check(_device_index(gx.device), ctypes.byref(resident)) != 0:
            return None, f"configuration {defs}: {lib.frnn_error().decode()}"
    cfg = config(lib)
    return (lib, resident.value, cfg[3], cfg[5]), None


def forward(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params,
            save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _FAMILY.forward(gx, R, b, s0, cell, reverse, params, save, resolve=_resolve, launch=_launch_forward,
                           poison_outputs=POISON, alternating_params={})


def _launch_forward(handle, gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, h: Tensor, sT: Tensor,
                    states_in: Tensor, rhb: Tensor, reverse: bool, save: bool) -> Optional[str]:
    lib, _, gs, bt = handle
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    s0 = _variants.aligned(s0)  # [S, B, NH, DH]: h0 is read in 16-byte chunks
    flags = torch.empty(blocks(B, NH, gs, bt), dtype=torch.int32, device=gx.device)  # zeroed by the library
    rc = lib.frnn_forward(_device_index(gx.device), T, B, NH, int(reverse), _ptr(gx), _ptr(R), _ptr(b), _ptr(s0),
                          _ptr(h), _ptr(sT), _ptr(states_in) if save else None, _ptr(rhb) if save else None,
                          _ptr(flags), _stream(gx.device))
    return None if rc == 0 else lib.frnn_error().decode()


BWD_ENV = "FLASHRNN_GRID_BWD"  # "0": the alternating backward; else (default) this family's own kernel


def grid_backward_enabled() -> bool:
    """Whether backward() runs this family's own kernel (the default; env FLASHRNN_GRID_BWD=0 turns
    it off, read per call)."""
    return os.environ.get(BWD_ENV, "1") != "0"


def backward_defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of the backward's library: the forward's configuration (the backward takes its
    tiling: each warp 16 own units x a K slice of all G * DH drhb columns, as many A fragments as
    the forward's) plus FRNN_GRID_BWD=1. ValueError naming the parameter it cannot take."""
    defs = defines(cell, dtype, DH, params)
    defs["FRNN_GRID_BWD"] = 1
    return defs


_BWD_RESOLVED: Dict[tuple, tuple] = {}


def _resolve_backward(cell: str, gx: Tensor, params):
    """((backward library, resident blocks, GRID_SPLIT, BATCH_TILE, drhb pieces), None) or (None,
    why the alternating backward runs instead): a configuration whose backward does not fit the
    device, or a grid larger than the device holds at once. Cached per configuration and device; the grid's
    residency is checked per call."""
    key = (cell, gx.dtype, gx.shape[4], gx.device.index, tuple(sorted(params.items())) if params else
           tuple(gx.shape[1:3]))
    hit = _BWD_RESOLVED.get(key)
    if hit is None:
        hit = _BWD_RESOLVED[key] = _resolve_backward_uncached(cell, gx, params)
    return hit if hit[0] is None else _resident(hit[0], gx, "backward configuration")


def _resolve_backward_uncached(cell: str, gx: Tensor, params):
    fam_params = _FAMILY.params(cell, gx, params)
    defs = backward_defines(cell, gx.dtype, gx.shape[4], fam_params)
    lib = _FAMILY.library(defs)
    out = (ctypes.c_int * 3)()  # smem bytes, K slices, drhb pieces
    lib.frnn_bwd_config(out)
    need, have = out[0], torch.cuda.get_device_properties(gx.device).shared_memory_per_block_optin
    if need > have:
        return None, f"backward configuration {defs} needs {need} B of shared memory per block, the device has {have}"
    resident = ctypes.c_int(0)
    with _on(gx.device):
        if lib.frnn_bwd_check(_device_index(gx.device), ctypes.byref(resident)) != 0:
            return None, f"backward configuration {defs}: {lib.frnn_error().decode()}"
    cfg = config(lib)
    return (lib, resident.value, cfg[3], cfg[5], out[2]), None


def backward(dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor, rhb: Tensor, cell: str,
             reverse: bool, params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the states the forward saved (states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH], fp32): the
    family's own persistent kernel (fused_grid.cuh backward_kernel), or with FLASHRNN_GRID_BWD=0 the
    alternating family's (step kernel). A configuration it cannot take: ValueError naming the
    parameter; one it does not run (a backward that does not fit the device, or a grid larger than
    it holds at once): the alternating backward, one warning. A REFUSED_CELLS cell: the alternating
    backward without a second warning (its forward ran on that family, and said so)."""
    if (not grid_backward_enabled() or cell in REFUSED_CELLS or gx.dtype not in TAKES
            or unavailable(gx.device) is not None):
        return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, {})
    handle, reason = _resolve_backward(cell, gx, params)
    if handle is None:
        _FAMILY.fallback("the alternating backward", reason)
        return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, {})
    lib, _, gs, bt, hp = handle
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    (dh, dsT, gx, R, states_in, rhb), (dgx, ds0, drhb) = _variants.backward_operands(
        _FAMILY, dh, dsT, gx, R, states_in, rhb, POISON)
    ex = torch.empty(2, hp, B, NH, G, DH, dtype=gx.dtype, device=gx.device)  # [2, HP, B, NH, G, DH] scratch
    flags = torch.empty(blocks(B, NH, gs, bt), dtype=torch.int32, device=gx.device)  # zeroed by the library
    _variants.poison(POISON, (ex,))
    if B > 0 and NH > 0:
        with _on(gx.device):
            rc = lib.frnn_backward(_device_index(gx.device), T, B, NH, int(reverse), _ptr(dh), _ptr(dsT), _ptr(gx),
                                   _ptr(R), _ptr(states_in), _ptr(rhb), _ptr(dgx), _ptr(drhb), _ptr(ds0), _ptr(ex),
                                   _ptr(flags), _stream(gx.device))
        if rc != 0:
            raise RuntimeError(f"flashrnn fused_grid backward ({cell}): {lib.frnn_error().decode()}")
    return _variants.backward_results(dgx, drhb, states_in, ds0, R)
