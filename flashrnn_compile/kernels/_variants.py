"""What the families built as one small CUDA library per configuration share (fused_block,
fused_cluster): the per-device availability check, the loaded libraries, the once-per-reason
fallback warning, the per-configuration resolution, the 32-bit size check, the forward around
the launch (fallbacks, alignment, output allocation, NaN poisoning, the error), and the ctypes
launch helpers (pointers, the current stream, the current device).

Each family module holds one `Family` (its name, source and the ctypes signatures of its library)
and keeps its own defines, launch call, backward and `POISON` flag.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from .. import build, reference

Tensor = torch.Tensor

POISON = os.environ.get("FLASHRNN_POISON", "") not in ("", "0")  # each family's POISON starts as this
INT_MAX = 2**31 - 1


class Family:
    """One family's caches and messages. `capability`: (the least major compute capability, what
    it brings); `bind(lib)` sets the ctypes signatures of a freshly loaded library."""

    def __init__(self, name: str, source: str, capability: Tuple[int, str], bind: Callable[[ctypes.CDLL], None]):
        self.name, self.source, self.capability, self.bind = name, source, capability, bind
        self._unavailable: Dict[torch.device, Optional[str]] = {}
        self._libs: Dict[str, ctypes.CDLL] = {}
        self._warned: set = set()
        self._resolved: Dict[tuple, tuple] = {}

    def unavailable(self, device: torch.device) -> Optional[str]:
        """None when the kernels can run on `device`, else why not (cached per device: the runtime
        asks on every call)."""
        device = torch.device(device)
        if device not in self._unavailable:
            self._unavailable[device] = self._unavailable_uncached(device)
        return self._unavailable[device]

    def _unavailable_uncached(self, device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return f"the {self.name} kernels need a CUDA device, got {device.type!r}"
        if torch.version.cuda is None or not torch.cuda.is_available():
            return "CUDA is not available to torch"
        major, brings = self.capability
        if torch.cuda.get_device_capability(device)[0] < major:
            return f"the {self.name} kernels need compute capability {major}.0 or newer ({brings})"
        if build.find_nvcc() is None:
            return "nvcc not found (install the CUDA toolkit or set CUDA_HOME), cannot build the kernels"
        return None

    def library(self, defs: Dict[str, object]) -> ctypes.CDLL:
        """The loaded library of one configuration (built first if needed)."""
        key = repr(sorted(defs.items()))
        lib = self._libs.get(key)
        if lib is None:
            lib = ctypes.CDLL(str(build.ensure_variant(self.source, defs)))
            self.bind(lib)
            self._libs[key] = lib
        return lib

    def params(self, cell: str, gx: Tensor, params) -> Dict[str, object]:
        """`params` as a dict; empty: the planner's choice in this family for gx's shape and device."""
        if params:
            return dict(params)
        from .. import planner

        T, B, NH, G, DH = gx.shape
        chosen = planner.plan(cell, B, NH, DH, gx.dtype, gpu=gx.device.index or 0, families=(self.name,))
        if chosen.family != self.name:
            raise ValueError(f"{self.name}: no {self.name} configuration for this shape: {chosen.reason}")
        return dict(chosen.params)

    def fallback(self, what: str, reason: str, stacklevel: int = 3) -> None:
        """Warn once per (what, reason) that `what` runs instead. stacklevel 3: the caller of the
        function that calls this (a family's forward or backward)."""
        if (what, reason) not in self._warned:
            self._warned.add((what, reason))
            warnings.warn(f"flashrnn: {self.name}: {reason}; running {what}", RuntimeWarning, stacklevel=stacklevel)

    def forward(self, gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, params, save: bool, *,
                resolve, launch, poison_outputs: bool, alternating_params) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """A family's forward (called by the family module's forward; its outputs, see there).
        float64 runs the reference, a configuration `resolve(cell, gx, params)` turns down runs the
        alternating family with `alternating_params` (one warning each); else the outputs are
        allocated (NaN first when `poison_outputs`) and `launch(handle, gx, R, b, s0, h, sT,
        states_in, rhb, reverse, save)` runs the kernel on gx's device, returning the library's error or None."""
        if gx.dtype == torch.float64:
            self.fallback("the reference", "no float64 path", stacklevel=4)
            return reference.forward(gx, R, b, s0, cell, reverse, save)
        handle, reason = resolve(cell, gx, params)
        if handle is None:
            from . import alternating

            self.fallback("the alternating kernels", reason, stacklevel=4)
            return alternating.forward(gx, R, b, s0, cell, reverse, alternating_params, save)
        gx = aligned(gx)
        R, b, s0 = (t.contiguous() for t in (R, b, s0))
        T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
        S = s0.shape[0]
        self.check_sizes(B, NH, G, S, DH)
        h = gx.new_empty(T, B, NH, DH)  # [T, B, NH, DH]
        sT = gx.new_empty(S, B, NH, DH)  # [S, B, NH, DH]
        f32 = dict(dtype=torch.float32, device=gx.device)
        states_in = torch.empty((T, S, B, NH, DH) if save else (0,), **f32)  # [T, S, B, NH, DH]
        rhb = torch.empty((T, B, NH, G, DH) if save else (0,), **f32)  # [T, B, NH, G, DH]
        poison(poison_outputs, (h, sT, states_in, rhb))
        if B == 0 or NH == 0:
            return h, sT, states_in, rhb
        with on(gx.device):
            error = launch(handle, gx, R, b, s0, h, sT, states_in, rhb, reverse, save)
        if error is not None:
            raise RuntimeError(f"flashrnn {self.name} forward ({cell}): {error}")
        return h, sT, states_in, rhb

    def resolve(self, cell: str, gx: Tensor, params, uncached: Callable[[str, Tensor, object], tuple]) -> tuple:
        """uncached(cell, gx, params), cached per configuration and device (the per-call cost
        counts: a forward of 1024 steps takes ~0.5 ms)."""
        key = (cell, gx.dtype, gx.shape[4], gx.device.index, tuple(sorted(params.items())) if params else
               tuple(gx.shape[1:3]))
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolved[key] = uncached(cell, gx, params)
        return hit

    def configured(self, cell: str, gx: Tensor, params, defines, smem: Callable[[ctypes.CDLL], int]):
        """(library, defines, None) of the configuration `params` (empty: the planner's), or
        (library, defines, why not) when its shared memory `smem(library)` exceeds the device's."""
        defs = defines(cell, gx.dtype, gx.shape[4], self.params(cell, gx, params))
        lib = self.library(defs)
        need = smem(lib)
        have = torch.cuda.get_device_properties(gx.device).shared_memory_per_block_optin
        if need > have:
            return lib, defs, f"configuration {defs} needs {need} B of shared memory per block, the device has {have}"
        return lib, defs, None

    def check_sizes(self, B: int, NH: int, G: int, S: int, DH: int) -> None:
        """The kernels index one time step's [S or G, B, NH, DH] slice in 32-bit ints."""
        if max(G, S) * B * NH * DH > INT_MAX:
            raise ValueError(f"{self.name}: B={B}, NH={NH}, DH={DH}: one step's {max(G, S)} x B x NH x DH values "
                             f"exceed 2**31 - 1 (32-bit indexing); split the batch")


def split_defines(family: str, functor: str, dtype_code: int, DH: int, params, names: Tuple[str, ...],
                  knobs: Dict[str, tuple], knob_prefix: str, split_range: Tuple[int, int], split_what: str,
                  gates: int = 0) -> Dict[str, object]:
    """The -D defines of a family whose head's R is split over SPLIT blocks (fused_cluster,
    fused_grid): `names` = (the split's name, WARPS, BATCH_TILE, R_REG_TILES), `knobs` the kernel's
    optional test switches (define knob_prefix + key), SPLIT in `split_range` (`split_what` says
    what it counts); ValueError naming the parameter a kernel of this layout cannot take (a block's
    warps are its DH / SPLIT / 16 unit groups times K slices of the head dim's k-tiles, or with a
    KSLICES knob, groups of its `gates` * DH / SPLIT / 16 m-tiles times KSLICES slices)."""
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"{family}: params: expected {', '.join(names)}, missing {missing}")
    split, warps, bt, rreg = (int(params[k]) for k in names)
    name = names[0]
    if not split_range[0] <= split <= split_range[1]:
        raise ValueError(f"{family}: {name}={split}: expected {split_range[0]} .. {split_what}")
    if DH % split != 0 or (DH // split) % 16 != 0:
        raise ValueError(f"{family}: head dim DH={DH} with {name}={split}: expected DH / {name} "
                         "to be a multiple of 16 (each block owns whole 16-unit MMA tiles)")
    groups = DH // split // 16
    if "KSLICES" in params and "KSLICES" in knobs:  # an explicit K split: WARPS / KSLICES groups of m-tiles
        slices = int(params["KSLICES"])
        tiles = gates * groups
        if slices < 1 or not 1 <= warps <= 32 or warps % slices != 0 or tiles % (warps // slices) != 0:
            raise ValueError(f"{family}: WARPS={warps}, KSLICES={slices}: expected WARPS (at most 32) = KSLICES x a "
                             f"divisor of the block's G * DH / {name} / 16 = {tiles} m-tiles")
    elif not 1 <= warps <= 32 or warps % groups != 0:
        raise ValueError(f"{family}: WARPS={warps}: expected a multiple of the block's DH / {name} / 16 = "
                         f"{groups} unit groups, at most 32")
    else:
        slices = warps // groups
    if (DH // 16) % slices != 0:
        raise ValueError(f"{family}: WARPS={warps}: its {slices} K slices per unit group must divide the "
                         f"head dim's DH / 16 = {DH // 16} k-tiles")
    if bt % 8 != 0 or not 8 <= bt <= 256:
        raise ValueError(f"{family}: BATCH_TILE={bt}: expected a multiple of 8 in 8 .. 256")
    if rreg < 0:
        raise ValueError(f"{family}: R_REG_TILES={rreg}: expected >= 0")
    defs = {"FRNN_CELL": functor, "FRNN_DTYPE": dtype_code, "FRNN_DH": DH, f"FRNN_{name}": split,
            "FRNN_WARPS": warps, "FRNN_BATCH_TILE": bt, "FRNN_R_REG_TILES": rreg}
    for key, allowed in knobs.items():
        if key in params:
            if params[key] not in allowed:
                raise ValueError(f"{family}: {key}={params[key]!r}: expected one of {allowed}")
            defs[f"{knob_prefix}{key}"] = int(params[key])
    return defs


def poison(enabled: bool, tensors) -> None:
    """Fill each tensor with NaN when `enabled` (a test then sees any element a kernel leaves unwritten)."""
    if enabled:
        for t in tensors:
            t.fill_(float("nan"))


def backward_operands(family: "Family", dh: Tensor, dsT: Tensor, gx: Tensor, R: Tensor, states_in: Tensor,
                      rhb: Tensor, poison_outputs: bool) -> tuple:
    """The operands and outputs of a persistent backward kernel (fused_cluster, fused_grid):
    (dh, dsT, gx, R, states_in, rhb) in the layouts it reads (gx's dtype, contiguous, the streamed
    ones 16-byte aligned; the saved states fp32) and (dgx, ds0, drhb) allocated, NaN-filled when
    `poison_outputs`. ValueError when the saved states' shapes are not what the forward saves."""
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    S = dsT.shape[0]
    if T > 0 and (states_in.shape != (T, S, B, NH, DH) or rhb.shape != (T, B, NH, G, DH)):
        raise ValueError(f"{family.name} backward: states_in {tuple(states_in.shape)} / rhb {tuple(rhb.shape)}: "
                         f"expected [T, S, B, NH, DH] = {(T, S, B, NH, DH)} / [T, B, NH, G, DH] (saved by forward)")
    family.check_sizes(B, NH, G, S, DH)
    dh, gx = (aligned(t.to(gx.dtype)) for t in (dh, gx))  # dh [T, B, NH, DH]
    dsT, R = (t.to(gx.dtype).contiguous() for t in (dsT, R))  # dsT [S, B, NH, DH], R [NH, G, DH, DH]
    states_in, rhb = aligned(states_in.float()), aligned(rhb.float())
    dgx = torch.empty(T, B, NH, G, DH, dtype=gx.dtype, device=gx.device)  # [T, B, NH, G, DH]
    ds0 = torch.empty(S, B, NH, DH, dtype=gx.dtype, device=gx.device)  # [S, B, NH, DH]
    drhb = torch.empty(T, B, NH, G, DH, dtype=torch.float32, device=gx.device)  # [T, B, NH, G, DH]
    poison(poison_outputs, (dgx, ds0, drhb))
    return (dh, dsT, gx, R, states_in, rhb), (dgx, ds0, drhb)


def backward_results(dgx: Tensor, drhb: Tensor, states_in: Tensor, ds0: Tensor, R: Tensor) -> tuple:
    """(dgx, dR, db, ds0) of a persistent backward kernel's outputs: dR [NH, G, DH, DH] and db
    [NH, G, DH] from drhb [T, B, NH, G, DH] and the saved states (fused_block._weight_grads, one
    GEMM; TF32 for bfloat16 gradients), in R's dtype; zeros when there is no step or no batch."""
    from .fused_block import _weight_grads

    T, B, NH, G, DH = drhb.shape
    if T == 0 or B == 0:
        return dgx, torch.zeros_like(R), torch.zeros(NH, G, DH, dtype=R.dtype, device=R.device), ds0
    dR, db = _weight_grads(drhb, states_in, tf32=dgx.dtype == torch.bfloat16)
    return dgx, dR.to(R.dtype), db.to(R.dtype), ds0


def aligned(t: Tensor) -> Tensor:
    """t contiguous with a 16-byte-aligned start (the kernels stream it with 16-byte cp.async)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def ptr(t: Optional[Tensor]) -> Optional[int]:
    """A tensor's address for a c_void_p argument (every library entry point declares its
    argtypes, so ctypes takes the plain int: no c_void_p object per argument), None for NULL."""
    return None if t is None else t.data_ptr()


def device_index(device: torch.device) -> int:
    """The CUDA device's index (the current device's for a bare "cuda")."""
    return device.index if device.index is not None else torch.cuda.current_device()


_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # int handle, no Stream object


def stream(device: torch.device) -> ctypes.c_void_p:
    """The current CUDA stream of `device` as a handle for the kernels' launch."""
    if _RAW_STREAM is not None:
        return ctypes.c_void_p(_RAW_STREAM(device_index(device)))
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def on(device: torch.device):
    """Context making `device` current for the launch (a no-op context when it already is)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)
