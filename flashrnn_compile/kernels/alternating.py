"""The alternating family from Python: allocates outputs, calls torch.ops.flashrnn_alternating.

    forward(gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], cell, reverse, params,
            save) -> (h [T,B,NH,DH], sT [S,B,NH,DH], states_in [T,S,B,NH,DH], rhb [T,B,NH,G,DH])
    backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, params) -> (dgx, dR, db, ds0)

`params` is the plan's: STEP_KERNEL = 1 runs one launch per time step (R h, or R^T d(rhb), and
the cell for the units each block owns: csrc/alternating/step_*.cu), 0 the cuBLAS GEMM plus a
pointwise launch per step; a plan without STEP_KERNEL (a hand-written plan string) gets 1.
Dtypes and shapes are those of the core op's fake impl (ops.py). float16, bfloat16 and float32 run
on the kernels (fp32 states and accumulation); float64 runs the reference (one warning): the
kernels have no float64 path. Set `POISON = True` (or FLASHRNN_POISON=1) to fill every output
with NaN before the kernels write it, so a test sees any element they leave unwritten.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Tuple

import torch

from .. import build, reference
from ..cells import get_cell

Tensor = torch.Tensor

POISON = os.environ.get("FLASHRNN_POISON", "") not in ("", "0")

_BUILD_FAILURE: Dict[str, str] = {}
_WARNED_F64 = False


def unavailable(device: torch.device) -> Optional[str]:
    """None when the kernels can run on `device`, else why not (building them if needed)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the alternating kernels need a CUDA device, got {device.type!r}"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return "CUDA is not available to torch"
    if "alternating" in build._LOADED:  # built and loaded: the common case, checked per call
        return None
    if "alternating" in _BUILD_FAILURE:
        return _BUILD_FAILURE["alternating"]
    if build.find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME), cannot build the kernels"
    try:
        build.load("alternating")
    except (build.BuildError, OSError, RuntimeError) as e:
        _BUILD_FAILURE["alternating"] = f"building the alternating kernels failed: {e}"
        return _BUILD_FAILURE["alternating"]
    return None


def _float64_fallback() -> None:
    global _WARNED_F64
    if not _WARNED_F64:
        _WARNED_F64 = True
        warnings.warn("flashrnn: the alternating kernels have no float64 path; float64 runs the reference",
                      RuntimeWarning, stacklevel=3)


def step_kernel(params) -> int:
    """1 for the step-kernel path, 0 for the cuBLAS path (the plan's STEP_KERNEL, default 1)."""
    value = (params or {}).get("STEP_KERNEL", 1)
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(f"params: expected STEP_KERNEL in (0, 1), got {value!r}")
    return int(value)


def _poison(*tensors: Tensor) -> None:
    if POISON:
        for t in tensors:
            t.fill_(float("nan"))


def forward(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params,
            save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if gx.dtype == torch.float64:
        _float64_fallback()
        return reference.forward(gx, R, b, s0, cell, reverse, save)
    build.load("alternating")
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    S = s0.shape[0]
    h = gx.new_empty(T, B, NH, DH)  # [T, B, NH, DH]
    sT = gx.new_empty(S, B, NH, DH)  # [S, B, NH, DH]
    f32 = dict(dtype=torch.float32, device=gx.device)
    if save:
        states_in = torch.empty(T, S, B, NH, DH, **f32)  # [T, S, B, NH, DH]
        rhb = torch.empty(T, B, NH, G, DH, **f32)  # [T, B, NH, G, DH]
    else:
        states_in = torch.empty(0, **f32)
        rhb = torch.empty(0, **f32)
    _poison(h, sT, states_in, rhb)
    torch.ops.flashrnn_alternating.forward(
        gx, R, b, s0, get_cell(cell).functor, reverse, h, sT, states_in, rhb, step_kernel(params)
    )
    return h, sT, states_in, rhb


def backward(dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor, rhb: Tensor, cell: str,
             reverse: bool, params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if gx.dtype == torch.float64:
        _float64_fallback()
        return reference.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse)
    build.load("alternating")
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    dgx = torch.empty_like(gx, memory_format=torch.contiguous_format)  # [T, B, NH, G, DH]
    dR = torch.empty(R.shape, dtype=R.dtype, device=R.device)  # [NH, G, DH, DH]
    db = torch.empty(NH, G, DH, dtype=R.dtype, device=R.device)  # [NH, G, DH]
    ds0 = torch.empty(dsT.shape, dtype=gx.dtype, device=gx.device)  # [S, B, NH, DH]
    _poison(dgx, dR, db, ds0)
    torch.ops.flashrnn_alternating.backward(
        dh.to(gx.dtype), dsT.to(gx.dtype), gx, R, states_in, rhb, get_cell(cell).functor, reverse,
        dgx, dR, db, ds0, step_kernel(params),
    )
    return dgx, dR, db, ds0
