"""The fused_block family from Python: one persistent block per (head, batch tile) for all steps.

    forward(gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], cell, reverse, params,
            save) -> (h [T,B,NH,DH], sT [S,B,NH,DH], states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH])
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

params are the planner's fused_block variables {WARPS, BATCH_TILE, R_REG_TILES} (empty: ask the
planner for this device). Each configuration (cell, dtype, DH, WARPS, BATCH_TILE, R_REG_TILES) is
its own small CUDA library (csrc/fused/fused_block.cu built with -D defines by
`build.ensure_variant`, cached), called through ctypes on the current stream. dR and db: the
backward kernel accumulates them per batch tile on the tensor cores where its accumulators fit
(`dr_in_kernel`; the tiles' partials are summed here), else it writes d(rhb) and one float32 GEMM
here makes them (`_weight_grads`).

bfloat16 and float16 only (float32 raises: see TAKES). A configuration the kernel cannot take (DH not
a multiple of 16, warps that do not divide the row tiles, ...) raises ValueError naming the parameter; one whose shared memory exceeds the device's
runs the alternating family instead, with one warning. float64 runs the reference (one warning).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Dict, Optional, Tuple

import torch

from .. import reference
from ..cells import get_cell
from . import _variants
from ._variants import aligned as _aligned, on as _on, ptr as _ptr, stream as _stream

Tensor = torch.Tensor

POISON = _variants.POISON  # NaN-fill outputs before the kernels write them (FLASHRNN_POISON=1)
SOURCE = "fused/fused_block.cu"
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the kernel's FRNN_DTYPE
# dtypes the family takes: the float32 path (3 bf16 pieces on the tensor cores) measured up to 3x
# PyTorch's float32 error on the H100 (ds0 at T=1), over the 2x bound; the planner
# (fused_block.cint), this module and the kernel source (FRNN_DTYPE=0 is an #error) refuse it
TAKES = (torch.bfloat16, torch.float16)


def _bind(lib: ctypes.CDLL) -> None:
    """The ctypes signatures of a loaded configuration's library."""
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.frnn_forward.argtypes = [i, i, i, i] + [p] * 9
    lib.frnn_forward.restype = i
    lib.frnn_backward.argtypes = [i, i, i, i] + [p] * 11
    lib.frnn_backward.restype = i
    lib.frnn_config.argtypes = [p]
    lib.frnn_error.restype = ctypes.c_char_p
    lib.frnn_dr_in_kernel.restype = i
    lib.frnn_layer_set_blas.argtypes = [p] * 5  # the projected layer's backward (flashrnn_compile/layer.py)
    lib.frnn_layer_set_blas.restype = i
    lib.frnn_layer_forward.argtypes = [i] * 6 + [p] * 13
    lib.frnn_layer_forward.restype = i
    lib.frnn_layer_backward.argtypes = [i] * 6 + [p] * 22
    lib.frnn_layer_backward.restype = i
    lib.frnn_recompute.restype = i


_FAMILY = _variants.Family("fused_block", SOURCE, (8, "bf16 mma.sync"), _bind)
unavailable = _FAMILY.unavailable  # None when the kernels can run on a device, else why not (cached per device)
library = _FAMILY.library  # the loaded library of one configuration's defines (built first if needed)
_fallback = _FAMILY.fallback
_check_sizes = _FAMILY.check_sizes


def defines(cell: str, dtype: torch.dtype, DH: int, params) -> Dict[str, object]:
    """The -D defines of one configuration; ValueError naming the parameter it cannot take."""
    spec = get_cell(cell)
    if dtype not in TAKES:
        raise ValueError(f"fused_block: dtype: expected bfloat16 or float16, got {dtype} (float32: the "
                         "tensor-core path is not within 2x PyTorch's float32 error; the planner sends it elsewhere)")
    missing = [k for k in ("WARPS", "BATCH_TILE", "R_REG_TILES") if k not in params]
    if missing:
        raise ValueError(f"fused_block: params: expected WARPS, BATCH_TILE and R_REG_TILES, missing {missing}")
    warps, bt, rreg = (int(params[k]) for k in ("WARPS", "BATCH_TILE", "R_REG_TILES"))
    G = spec.num_gates
    if DH % 16 != 0:
        raise ValueError(f"fused_block: head dim DH={DH}: expected a multiple of 16 (the MMA tile)")
    if not 1 <= warps <= 32:
        raise ValueError(f"fused_block: WARPS={warps}: expected 1 .. 32")
    if bt % 8 != 0 or not 8 <= bt <= 256:
        raise ValueError(f"fused_block: BATCH_TILE={bt}: expected a multiple of 8 in 8 .. 256")
    if rreg < 0:
        raise ValueError(f"fused_block: R_REG_TILES={rreg}: expected >= 0")
    groups = DH // 16  # unit groups of 16 units (all G gates); Q warps each: 1, or 2 row halves x n-tile split
    q = warps // groups
    if warps % groups != 0 or not (q == 1 or (q % 2 == 0 and (bt // 8) % (q // 2) == 0)):
        raise ValueError(f"fused_block: WARPS={warps}: expected DH / 16 = {groups} unit groups times 1, or times 2 x a "
                         f"divisor of the BATCH_TILE / 8 = {bt // 8} n-tiles")
    defs = {"FRNN_CELL": spec.functor, "FRNN_DTYPE": DTYPE_CODES[dtype], "FRNN_DH": DH,
            "FRNN_WARPS": warps, "FRNN_BATCH_TILE": bt, "FRNN_R_REG_TILES": rreg, **knob_defines(spec)}
    if params.get("DR_OUT"):  # the FRNN_DR_OUT library of this tiling (recurrent_layer's DR_OUT backward)
        if not spec.rhb_grad_is_gx:
            raise ValueError(f"fused_block: DR_OUT: cell {cell!r}'s d(rhb) is not d(gx), dR cannot come from dgx")
        defs["FRNN_DR_OUT"] = 1
    if params.get("RECOMPUTE"):  # recurrent_layer's lean save: the backward recomputes rhb from h
        if not params.get("DR_OUT"):
            raise ValueError("fused_block: RECOMPUTE: expected DR_OUT too (the recomputing backward leaves dR to the layer)")
        if cell in JUMP_CELLS:
            raise ValueError(f"fused_block: RECOMPUTE: cell {cell!r} runs h in two pieces (fused_block.cuh Precision), "
                             "its forward's MMA operand is not the h it outputs")
        defs["FRNN_BWD_RECOMPUTE"] = 1
    return defs


# cells whose kernels keep h exact to fp32 in two input-dtype pieces (fused_block.cuh Precision: a
# rounded h moves their gradient's jump for a few elements)
JUMP_CELLS = ("elman_relu", "slstm")


# A/B knobs of fused_block.cuh, off by default (timed in session 6: not faster): env var -> (define, values)
KNOBS = {
    # backward without dR / db: one GEMM of dgx and h_in outside (`_weight_grads_from_dgx`); only for
    # cells whose d(rhb) is d(gx) (CellSpec.rhb_grad_is_gx), other cells build without it
    "FLASHRNN_FUSED_DROUT": ("FRNN_DR_OUT", ("1",)),
}


def knob_defines(spec=None) -> Dict[str, int]:
    """The defines of the knobs set in the environment (read per call: A/B scripts toggle them);
    with a cell `spec`, only those that apply to it."""
    out = {}
    for env, (define, values) in KNOBS.items():
        if os.environ.get(env) in values:
            out[define] = int(os.environ[env])
    if spec is not None and not spec.rhb_grad_is_gx:
        out.pop("FRNN_DR_OUT", None)
    return out


def config(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """(G, S, DH, WARPS, BATCH_TILE, R_REG_TILES, dtype code, forward smem, backward smem) of a library."""
    out = (ctypes.c_int * 9)()
    lib.frnn_config(out)
    return tuple(out)


def smem_bytes(lib: ctypes.CDLL) -> Tuple[int, int]:
    c = config(lib)
    return c[7], c[8]


DR_TILES, DR_GEMM, DR_FROM_DGX = 1, 0, 2  # frnn_dr_in_kernel(): where dR and db come from


def dr_in_kernel(lib: ctypes.CDLL) -> int:
    """Where the library's backward leaves dR and db: DR_TILES (accumulated in the kernel per batch
    tile), DR_GEMM (it writes drhb; one float32 GEMM here) or DR_FROM_DGX (neither: one GEMM of dgx
    and h_in here; FRNN_DR_OUT)."""
    return int(lib.frnn_dr_in_kernel())


def _resolve(cell: str, gx: Tensor, params):
    """(Kernel, None) or (None, reason to use the alternating family); cached per configuration
    and device."""
    return _FAMILY.resolve(cell, gx, params, _resolve_uncached)


def _resolve_uncached(cell: str, gx: Tensor, params):
    lib, defs, reason = _FAMILY.configured(cell, gx, params, defines, lambda lib: max(smem_bytes(lib)))
    if reason is not None:
        return None, reason
    return Kernel(lib, config(lib)[4], dr_in_kernel(lib), int(lib.frnn_recompute())), None


class Kernel:
    """A loaded configuration and what the Python side needs of it per call. recompute: the number
    of states a FRNN_BWD_RECOMPUTE library's forward saves (`layer_forward`), 0 for the others."""

    def __init__(self, lib: ctypes.CDLL, batch_tile: int, dr_in_kernel: int, recompute: int = 0):
        self.lib, self.batch_tile, self.dr_in_kernel, self.recompute = lib, batch_tile, dr_in_kernel, recompute


def _poison(*tensors: Tensor) -> None:
    _variants.poison(POISON, tensors)


def forward(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params,
            save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _FAMILY.forward(gx, R, b, s0, cell, reverse, params, save, resolve=_resolve, launch=_launch_forward,
                           poison_outputs=POISON, alternating_params=params)


def _launch_forward(kern: Kernel, gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, h: Tensor, sT: Tensor,
                    states_in: Tensor, rhb: Tensor, reverse: bool, save: bool) -> Optional[str]:
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    rc = kern.lib.frnn_forward(T, B, NH, int(reverse), _ptr(gx), _ptr(R), _ptr(b), _ptr(s0), _ptr(h), _ptr(sT),
                               _ptr(states_in) if save else None, _ptr(rhb) if save else None, _stream(gx.device))
    return None if rc == 0 else kern.lib.frnn_error().decode()


def layer_forward(kern: Kernel, x: Tensor, W: Tensor, b_in: Optional[Tensor], R: Tensor, b: Tensor, s0: Tensor,
                  reverse: bool, save: bool = True, chunks: int = 1) -> Tuple[Tensor, ...]:
    """recurrent_layer's forward in one library call: gx = x W^T (cuBLAS), then the forward kernel
    over gx + b_in (b_in added in fp32 inside: gx leaves it out), saving for frnn_layer_backward.
    -> (h [T,B,NH,DH], sT [S,B,NH,DH], gx [T,B,NH,G,DH], states_in, rhb): the full save (states_in
    [T,S,B,NH,DH], rhb [T,B,NH,G,DH] float32), or for a FRNN_BWD_RECOMPUTE library (kern.recompute =
    SS) states_in [T,SS,B,NH,DH] and rhb None; without `save` both None. chunks > 1: in that many
    time chunks, each chunk's GEMM beside the previous chunk's recurrence (the same results to the
    bit; needs T >= 2 chunks - 1). x aligned and contiguous, the others
    contiguous (the caller's)."""
    T, B, I = x.shape  # x [T, B, I]
    NH, G, DH, S = R.shape[0], R.shape[1], R.shape[2], s0.shape[0]
    _check_sizes(B, NH, G, S, DH)
    if T * B > _variants.INT_MAX or max(I, NH * G * DH) > _variants.INT_MAX:
        raise ValueError(f"recurrent_layer: T*B={T * B}, I={I}: the projection's GEMM takes 32-bit sizes")
    if not 1 <= chunks <= 16 or (chunks > 1 and T < 2 * chunks - 1):
        raise ValueError(f"chunks: expected 1 .. 16 with T >= 2 chunks - 1 (T={T}), got {chunks}")
    f32 = dict(dtype=torch.float32, device=x.device)
    gx = x.new_empty(T, B, NH, G, DH)  # [T, B, NH, G, DH]: x W^T
    h = x.new_empty(T, B, NH, DH)  # [T, B, NH, DH]
    sT = x.new_empty(S, B, NH, DH)  # [S, B, NH, DH]
    if not save:
        states_in, rhb = None, None
    elif kern.recompute:
        states_in, rhb = torch.empty(T, kern.recompute, B, NH, DH, **f32), None  # [T, SS, B, NH, DH]
    else:
        states_in, rhb = torch.empty(T, S, B, NH, DH, **f32), torch.empty(T, B, NH, G, DH, **f32)
    if POISON:
        _variants.poison(True, [t for t in (gx, h, sT, states_in, rhb) if t is not None])
    sbuf = torch.empty(2, S * B * NH * DH, **f32) if chunks > 1 else None  # [2][S*B*NH*DH]: states between chunks
    with _on(x.device):
        rc = kern.lib.frnn_layer_forward(T, B, NH, I, int(reverse), chunks, _ptr(x), _ptr(W), _ptr(b_in), _ptr(R),
                                         _ptr(b), _ptr(s0), _ptr(gx), _ptr(h), _ptr(sT), _ptr(states_in), _ptr(rhb),
                                         _ptr(sbuf), _stream(x.device))
    if rc != 0:
        raise RuntimeError(f"flashrnn recurrent_layer forward: {kern.lib.frnn_error().decode()}")
    return h, sT, gx, states_in, rhb


def backward(dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor, rhb: Tensor, cell: str,
             reverse: bool, params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if gx.dtype == torch.float64:
        _fallback("the reference", "no float64 path")
        return reference.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse)
    kern, reason = _resolve(cell, gx, params)
    if kern is None:
        from . import alternating

        _fallback("the alternating kernels", reason)
        return alternating.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params)
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    S = dsT.shape[0]
    if T > 0 and (states_in.shape != (T, S, B, NH, DH) or rhb.shape != (T, B, NH, G, DH)):
        raise ValueError(f"fused_block backward: states_in {tuple(states_in.shape)} / rhb {tuple(rhb.shape)}: "
                         f"expected [T, S, B, NH, DH] = {(T, S, B, NH, DH)} / [T, B, NH, G, DH] (saved by forward)")
    _check_sizes(B, NH, G, S, DH)
    dh, gx = (_aligned(t.to(gx.dtype)) for t in (dh, gx))
    dsT, R = (t.to(gx.dtype).contiguous() for t in (dsT, R))
    states_in, rhb = _aligned(states_in.float()), _aligned(rhb.float())
    f32 = dict(dtype=torch.float32, device=gx.device)
    dgx = torch.empty(T, B, NH, G, DH, dtype=gx.dtype, device=gx.device)  # [T, B, NH, G, DH]
    ds0 = torch.empty(S, B, NH, DH, dtype=gx.dtype, device=gx.device)  # [S, B, NH, DH]
    if kern.dr_in_kernel == DR_TILES:  # dR | db per batch tile: [NBT, NH, G*DH*DH + G*DH]
        nbt = -(-B // kern.batch_tile)
        dw, drhb = torch.empty(nbt, NH, G * DH * DH + G * DH, **f32), None
        _poison(dgx, dw, ds0)
    elif kern.dr_in_kernel == DR_FROM_DGX:
        dw, drhb = None, None
        _poison(dgx, ds0)
    else:
        dw, drhb = None, torch.empty(T, B, NH, G, DH, **f32)  # [T, B, NH, G, DH]
        _poison(dgx, drhb, ds0)
    if B > 0 and NH > 0:
        with _on(gx.device):
            rc = kern.lib.frnn_backward(T, B, NH, int(reverse), _ptr(dh), _ptr(dsT), _ptr(gx), _ptr(R),
                                        _ptr(states_in), _ptr(rhb), _ptr(dgx), _ptr(drhb), _ptr(ds0), _ptr(dw),
                                        _stream(gx.device))
        if rc != 0:
            raise RuntimeError(f"flashrnn fused_block backward ({cell}): {kern.lib.frnn_error().decode()}")
    if T == 0 or B == 0:
        return dgx, torch.zeros_like(R), torch.zeros(NH, G, DH, dtype=R.dtype, device=R.device), ds0
    if dw is not None:
        dR, db = _tile_sums(dw, NH, G, DH)
    elif drhb is None:
        return (dgx, *_weight_grads_from_dgx(dgx, states_in, R.dtype), ds0)
    else:
        dR, db = _weight_grads(drhb, states_in, tf32=gx.dtype == torch.bfloat16)
    return dgx, dR.to(R.dtype), db.to(R.dtype), ds0


def _tile_sums(dw: Tensor, NH: int, G: int, DH: int) -> Tuple[Tensor, Tensor]:
    """dR [NH, G, DH, DH] and db [NH, G, DH] from the backward kernel's per-batch-tile partials
    dw [NBT, NH, G*DH*DH + G*DH] (summed in a fixed order: deterministic)."""
    w = dw[0] if dw.shape[0] == 1 else dw.sum(0)  # [NH, G*DH*DH + G*DH]
    return w[:, : G * DH * DH].reshape(NH, G, DH, DH), w[:, G * DH * DH:].reshape(NH, G, DH)


def _weight_grads(drhb: Tensor, states_in: Tensor, tf32: bool) -> Tuple[Tensor, Tensor]:
    """dR [NH, G, DH, DH] = sum over (t, b) of d(rhb) h_in^T and db [NH, G, DH] = sum of d(rhb), as
    one batched float32 GEMM: h_in gets a column of ones (db) and is padded to DH + 8 columns.
    tf32: on the tensor cores (operands rounded to 10 mantissa bits; used for bfloat16 gradients,
    whose own rounding is 8x coarser; the SIMT float32 GEMM took 0.47 ms of a 2.9 ms fwd+bwd on H100)."""
    T, B, NH, G, DH = drhb.shape  # drhb [T, B, NH, G, DH] float32
    d2 = drhb.reshape(T * B, NH, G * DH).permute(1, 2, 0)  # [NH, G*DH, T*B]
    h_aug = drhb.new_zeros(T, B, NH, DH + 8)  # [T, B, NH, DH + 8]: h_in | 1 | 0 ...
    h_aug[..., :DH] = states_in[:, 0]
    h_aug[..., DH] = 1.0
    with _tf32_matmul(tf32):
        out = torch.bmm(d2, h_aug.reshape(T * B, NH, DH + 8).permute(1, 0, 2))  # [NH, G*DH, DH + 8]
    return out[..., :DH].reshape(NH, G, DH, DH), out[..., DH].reshape(NH, G, DH)


def _weight_grads_from_dgx(dgx: Tensor, states_in: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """dR [NH, G, DH, DH] = sum over (t, b) of dgx h_in^T and db [NH, G, DH] = sum of dgx, in `dtype`,
    for cells whose d(rhb) is d(gx). One batched GEMM on the tensor cores with the operands in the
    input dtype, as the in-kernel dR rounds them (dgx as stored; h_in rounded from the saved float32
    states), accumulated in float32 and rounded once: the reduced-precision reductions cuBLAS may
    use for 16-bit GEMMs (split-K partials in 16 bits) are turned off inside."""
    T, B, NH, G, DH = dgx.shape  # dgx [T, B, NH, G, DH]
    d2 = dgx.reshape(T * B, NH, G * DH).permute(1, 2, 0)  # [NH, G*DH, T*B]
    h_in = states_in[:, 0].to(dgx.dtype).reshape(T * B, NH, DH).permute(1, 0, 2)  # [NH, T*B, DH]
    with _full_precision_reduction(dgx.dtype):
        dR = torch.bmm(d2, h_in)  # [NH, G*DH, DH]
    db = dgx.sum(dim=(0, 1), dtype=torch.float32)  # [NH, G, DH]
    return dR.reshape(NH, G, DH, DH).to(dtype), db.to(dtype)


@contextlib.contextmanager
def _full_precision_reduction(dtype: torch.dtype):
    """16-bit CUDA GEMMs without reduced-precision reductions inside; the caller's setting restored."""
    matmul = torch.backends.cuda.matmul
    name = {torch.bfloat16: "allow_bf16_reduced_precision_reduction",
            torch.float16: "allow_fp16_reduced_precision_reduction"}.get(dtype)
    before = getattr(matmul, name) if name else None
    if name:
        setattr(matmul, name, False)
    try:
        yield
    finally:
        if name:
            setattr(matmul, name, before)


@contextlib.contextmanager
def _tf32_matmul(enabled: bool):
    """CUDA float32 matmuls on TF32 inside (when `enabled`), the caller's setting restored as it
    was. Through the fp32_precision API where torch has it: reading or writing the legacy
    allow_tf32 after a user set fp32_precision raises, and writing it turns the untouched state
    ("none") into an explicit one."""
    matmul = torch.backends.cuda.matmul
    new_api = hasattr(torch._C, "_get_fp32_precision_getter")
    before = matmul.fp32_precision if new_api else matmul.allow_tf32
    if enabled:
        if new_api:
            matmul.fp32_precision = "tf32"
        else:
            matmul.allow_tf32 = True
    try:
        yield
    finally:
        if enabled:
            if new_api:
                matmul.fp32_precision = before
            else:
                matmul.allow_tf32 = before
