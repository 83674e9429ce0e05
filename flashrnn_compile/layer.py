"""A projected recurrent layer in one call: the input projection x W^T + b_in, then the recurrence.

    recurrent_layer(x [T, B, I], W [NH*G*DH, I], b_in [NH*G*DH] or None, R [NH, G, DH, DH],
                    b [NH, G, DH], s0 [S, B, NH, DH] or None, *, cell, reverse, plan, chunks)
        -> (h [T, B, NH, DH], sT [S, B, NH, DH])

W's rows are ordered (head, gate, unit), as gx's last three axes: the result is
recurrence(F.linear(x, W, b_in).view(T, B, NH, G, DH), R, b, s0, ...).

Under a fused_block plan on a CUDA device, called eagerly (nothing tracing: as `ops.recurrence`'s
fast path), the layer's forward is one library call (frnn_layer_forward; without a gradient to
compute, saving nothing), and with some input needing a gradient the layer is one autograd node.
The forward: gx = x W^T on cuBLAS, then fused_block's forward kernel,
which adds b_in to gx in float32 (one rounding fewer than F.linear's x W^T + b_in; F.linear's host
time was most of the GPU's idle time before the first kernel); from T = 512 in time chunks
(fwd_chunks(): frnn_layer_forward's K, each chunk's GEMM beside the previous chunk's recurrence,
the states passed on in float32, so the same values to the bit). Its backward is one library call
(csrc/fused/layer.cuh): the recurrence's backward in `chunks` time chunks, with dx = dgx W and
dW = dgx^T x of each chunk on a side stream beside the next chunk's recurrence. The chunks pass
their state gradients on in float32, so dgx and ds0 are those of the one-launch backward; dW is
accumulated over the chunks in float32 and rounded once; dR and db sum per-chunk float32 partials;
db_in is the recurrence's db where the cell's d(rhb) is d(gx) (summed in float32 by the kernel),
else the float32 sum of dgx.

Everywhere else (the CPU, other families, float32/float64, a plan the kernel turns down,
tracing by Dynamo / make_fx, autocast): F.linear then `recurrence()`, the same values by definition.
`chunks` (default: FLASHRNN_LAYER_CHUNKS, else min(4, T // 256); at least 1, at most (T + 1) // 2)
changes only where the time goes. Tilings whose backward writes d(rhb) for an outside dR GEMM
(DR_GEMM, e.g. GRU 12x64, LSTM 6x128) take F.linear then recurrence(): the one-call backward was
slower there, with their own library and with the DR_OUT one.
For cells whose d(rhb) is d(gx) the backward uses the configuration's FRNN_DR_OUT library
(`DR_OUT`, FLASHRNN_LAYER_DROUT=0 turns it off), whose kernel leaves dR and db out, and the side
stream makes them per chunk: dR += dgx^T h_in per head (h_in: the forward's h one step back, s0's h
at the first step; what the in-kernel accumulation rounds too) and db += dgx^T 1. Those whose
h is one piece (not elman_relu, slstm) take the lean save too (`RECOMPUTE`, FLASHRNN_LAYER_RECOMPUTE=0
turns it off; FRNN_BWD_RECOMPUTE): the forward writes only the states the cell's backward reads
(an LSTM's c), no rhb, and the backward recomputes R h_{t-1} + b from h on the forward's fragments:
the same rhb to the bit, so the same gradients as the full save.
Measurements (H200): benchmarks/results/H200/session7.md .. session10.md.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import types
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops, runtime
from .cells import get_cell

Tensor = torch.Tensor

MAX_CHUNKS = 16  # layer.cuh MAX_CHUNKS
FAST_PATH = os.environ.get("FLASHRNN_LAYER", "1") != "0"  # the one-call path (A/B scripts and tests switch it)
# the one-call backward through an FRNN_DR_OUT library (the kernel leaves dR, db out; the side stream
# makes them per chunk from dgx and h): cells whose d(rhb) is d(gx) only. On since session 8 (H200,
# LSTM 12x64 B16 T1024 fwd+bwd, K=4: bf16 1.839 -> 1.775 ms, fp16 1.929 -> 1.911)
DR_OUT = os.environ.get("FLASHRNN_LAYER_DROUT", "1") == "1"
# with DR_OUT, the lean save (FRNN_BWD_RECOMPUTE: the forward writes only the states the cell's
# backward reads, the backward recomputes R h_{t-1} + b from h): cells with h in one piece. On since
# session 8 (H200, K=4 fwd+bwd: LSTM 12x64 bf16 1.807 -> 1.628 ms, fp16 1.973 -> 1.731; elman_tanh
# bf16 1.286 -> 1.218; forward kernel with its save 541 -> 375 us)
RECOMPUTE = os.environ.get("FLASHRNN_LAYER_RECOMPUTE", "1") == "1"
# the one-call forward's time chunks (fwd_chunks): each chunk's projection GEMM runs beside the previous
# chunk's recurrence. FLASHRNN_LAYER_FWD_CHUNKS=K forces K (1: one GEMM, then the kernel); unset:
# min(3, T // 256). Session 10 (H200, LSTM 12x64 B16 T1024, interleaved A/B, forward ms): bf16
# 0.625 -> 0.600 / 0.594 / 0.595 / 0.597 with 2 / 3 / 4 / 6 chunks, fp16 0.742 -> 0.743 / 0.727 /
# 0.740 / 0.711; fwd+bwd unchanged (1.436 -> 1.430 bf16 at 3)
_FWD_ENV = os.environ.get("FLASHRNN_LAYER_FWD_CHUNKS")
FWD_CHUNKS: Optional[int] = int(_FWD_ENV) if _FWD_ENV else None
_WARNED: set = set()
_BLAS_LIBS: list = []  # the libraries that have the cuBLAS entry points
STATS: collections.Counter = collections.Counter()  # calls by path: "one_call" / "one_call_inference" (nothing needs a gradient) / "linear_then_recurrence"; "recompute": one-call calls with the lean save


def _shape(t) -> str:
    return ops._shape(t) if isinstance(t, Tensor) else type(t).__name__


def validate(x: Tensor, W: Tensor, b_in: Optional[Tensor], R: Tensor, cell: str) -> None:
    """The projection's arguments against R's heads; ValueError naming the argument (R, b and s0
    are then checked by the core op)."""
    G = get_cell(cell).num_gates
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x: expected 3 dims [T, B, I], got {_shape(x)}")
    if not isinstance(R, Tensor) or R.dim() != 4:
        raise ValueError(f"R: expected 4 dims [NH, G, DH, DH], got {_shape(R)}")
    NH, DH, I = R.shape[0], R.shape[2], x.shape[2]
    if not isinstance(W, Tensor) or tuple(W.shape) != (NH * G * DH, I):
        raise ValueError(f"W: expected [NH*G*DH, I] = [{NH * G * DH}, {I}] (from R {_shape(R)}, cell {cell!r} "
                         f"with G={G} and x {_shape(x)}), got {_shape(W)}")
    if b_in is not None and (not isinstance(b_in, Tensor) or tuple(b_in.shape) != (NH * G * DH,)):
        raise ValueError(f"b_in: expected None or [NH*G*DH] = [{NH * G * DH}], got {_shape(b_in)}")
    for name, t in (("W", W), ("b_in", b_in)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name}: expected dtype {x.dtype} on {x.device} (those of x), got {t.dtype} on {t.device}")


def default_chunks(T: int) -> int:
    """The one-call backward's time chunks for T steps: FLASHRNN_LAYER_CHUNKS, else min(4, T // 256),
    within 1 .. min(T, 16) (recurrent_layer caps it further at (T + 1) // 2)."""
    env = os.environ.get("FLASHRNN_LAYER_CHUNKS")
    k = int(env) if env else min(4, T // 256)
    return max(1, min(k, T, MAX_CHUNKS))


def recurrent_layer(x: Tensor, W: Tensor, b_in: Optional[Tensor], R: Tensor, b: Tensor, s0: Optional[Tensor] = None,
                    *, cell: str = "lstm", reverse: bool = False, plan: Optional[str] = None,
                    chunks: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """recurrence(F.linear(x, W, b_in).view(T, B, NH, G, DH), R, b, s0, ...) -> (h, sT); see the module."""
    validate(x, W, b_in, R, cell)
    spec = get_cell(cell)
    T, B, _ = x.shape
    NH, G, DH = R.shape[0], spec.num_gates, R.shape[2]
    if s0 is None:
        s0 = spec.initial_states(B, NH, DH, dtype=x.dtype, device=x.device)
    if chunks is not None and not 1 <= chunks <= MAX_CHUNKS:
        raise ValueError(f"chunks: expected 1 .. {MAX_CHUNKS}, got {chunks}")
    plan = runtime.REFERENCE_PLAN if plan is None else plan
    kern = _fused_kernel(x, W, b_in, R, b, s0, cell, plan)
    if kern is not None and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, W, b_in, R, b, s0)):
        K = min(chunks or default_chunks(T), (T + 1) // 2)  # T >= 2K - 1: no empty chunk
        STATS["one_call"] += 1
        return _Layer.apply(x, W, b_in, R, b, s0, cell, reverse, kern, K)
    if kern is not None:  # inference: the same library call, saving nothing
        from .kernels import fused_block

        STATS["one_call_inference"] += 1
        return fused_block.layer_forward(kern, *_laid_out(x, W, b_in, R, b, s0), reverse, save=False,
                                         chunks=fwd_chunks(T))[:2]
    STATS["linear_then_recurrence"] += 1
    gx = F.linear(x, W, b_in).view(T, B, NH, G, DH)  # [T, B, NH, G, DH]
    return ops.recurrence(gx, R, b, s0, cell=cell, reverse=reverse, plan=plan)


# the one-call path's decision per call signature (what _resolved_kernel and ops.validate depend on):
# the fused_block Kernel, or None; the host time before the first launch is GPU idle time, and this
# was 150-200 us of Python per call on the device machine (session 8, probe_layer_timeline.py)
_SIGNATURES: dict = {}
MAX_SIGNATURES = 1024


def _fused_kernel(x, W, b_in, R, b, s0, cell, plan):
    """fused_block's Kernel for this call when the one-call layer applies, else None; R, b and s0
    validated against gx's shape when it applies (ValueError naming the argument)."""
    if not FAST_PATH or x.device.type != "cuda" or x.numel() == 0:
        return None
    if not ops._eager_ok((x, W, R, b, s0) if b_in is None else (x, W, b_in, R, b, s0)):
        return None  # tracing (Dynamo first: nothing after it is evaluated under compile)
    # (validate() has checked W and b_in against x and R; plain tensors only, by _eager_ok)
    key = (cell, plan, DR_OUT, RECOMPUTE, x.shape, x.dtype, x.device, R.shape, R.dtype, R.device,
           b.shape, b.dtype, b.device, s0.shape, s0.dtype, s0.device)
    hit = _SIGNATURES.get(key, _SIGNATURES)
    if hit is not _SIGNATURES:
        return hit
    kern = _resolved_kernel(x, R, cell, plan)
    if kern is not None:  # R, b, s0 against gx's shape (raises: nothing cached)
        T, B, _ = x.shape
        NH, G, DH = R.shape[0], get_cell(cell).num_gates, R.shape[2]
        ops.validate(x.as_strided((T, B, NH, G, DH), (0,) * 5), R, b, s0, cell)
    if len(_SIGNATURES) >= MAX_SIGNATURES:
        _SIGNATURES.clear()
    _SIGNATURES[key] = kern
    return kern


def _resolved_kernel(x, R, cell, plan):
    """_fused_kernel's per-signature part: the plan's fused_block Kernel (DR_OUT, RECOMPUTE
    libraries where they apply) with cuBLAS handed over, else None."""
    parsed = runtime.parse_plan(plan)
    if parsed.family != "fused_block":
        return None
    from .kernels import fused_block

    if x.dtype not in fused_block.TAKES or fused_block.unavailable(x.device) is not None:
        return None
    T, B, _ = x.shape
    NH, G, DH = R.shape[0], get_cell(cell).num_gates, R.shape[2]
    like_gx = types.SimpleNamespace(shape=(T, B, NH, G, DH), dtype=x.dtype, device=x.device)
    params = parsed.params
    kern, _ = fused_block._resolve(cell, like_gx, params)
    if kern is None or kern.dr_in_kernel != fused_block.DR_TILES:
        # DR_GEMM tilings (GRU 12x64, 6x128): measured slower through the one-call backward, with
        # the plan's library (session 7: GRU 12x64 1.765 -> 1.984 ms) and through DR_OUT and the
        # lean save (session 8: LSTM 6x128 4.475 -> 7.176)
        return None
    if DR_OUT and get_cell(cell).rhb_grad_is_gx:  # the tiling's FRNN_DR_OUT library (its own if that one is refused)
        params = {**fused_block._FAMILY.params(cell, like_gx, params), "DR_OUT": 1}
        if RECOMPUTE and cell not in fused_block.JUMP_CELLS:
            params["RECOMPUTE"] = 1
        kern = fused_block._resolve(cell, like_gx, params)[0] or kern
    why = _blas_ready(kern.lib)
    if why is not None:
        if why not in _WARNED:
            _WARNED.add(why)
            warnings.warn(f"flashrnn: recurrent_layer: {why}; running F.linear then recurrence()", RuntimeWarning,
                          stacklevel=4)
        return None
    return kern


_ONES: dict = {}  # (device, dtype) -> a ones vector, grown as needed (the db GEMM's right operand)


def _ones(n: int, like: Tensor) -> Tensor:
    key = (like.device, like.dtype)
    if key not in _ONES or _ONES[key].numel() < n:
        _ONES[key] = torch.ones(n, dtype=like.dtype, device=like.device)
    return _ONES[key]


@functools.lru_cache(maxsize=None)
def _blas_entry_points():
    """(the cuBLAS entry points of the libcublas this process loaded (torch's), the library (the
    cache holds it, so the handle to it stays open), None), or (None, None, the reason there are
    none); once per process."""
    torch.cuda.current_blas_handle()  # torch loads libcublas and makes a handle
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.rsplit(" ", 1)[-1].strip() for line in maps]
    except OSError as e:
        return None, None, f"cannot read /proc/self/maps to find libcublas ({e})"
    path = next((p for p in paths if os.path.basename(p).startswith("libcublas.so")), None)
    if path is None:
        return None, None, "libcublas is not loaded in this process"
    lib = ctypes.CDLL(path)
    names = ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetMathMode", "cublasGemmEx", "cublasGemmStridedBatchedEx")
    return tuple(ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names), lib, None


def _blas_ready(lib) -> Optional[str]:
    """Hand the cuBLAS entry points to a configuration's library (once); None, or why not."""
    if any(lib is done for done in _BLAS_LIBS):  # (once per call signature: _SIGNATURES)
        return None
    ptrs, _, why = _blas_entry_points()
    if why is not None:
        return why
    lib.frnn_layer_set_blas(*(ctypes.c_void_p(p) for p in ptrs))
    _BLAS_LIBS.append(lib)
    return None


def fwd_chunks(T: int) -> int:
    """The one-call forward's time chunks for T steps: FWD_CHUNKS, else min(3, T // 256); within
    1 .. min((T + 1) // 2, 16) (T >= 2K - 1: no empty chunk)."""
    k = FWD_CHUNKS if FWD_CHUNKS is not None else min(3, T // 256)
    return max(1, min(k, (T + 1) // 2, MAX_CHUNKS))


def _laid_out(x, W, b_in, R, b, s0):
    """The library call's operands: x [T, B, I] aligned (16-byte copies), the others contiguous."""
    from .kernels import _variants

    return (_variants.aligned(x), W.contiguous(), None if b_in is None else b_in.contiguous(), R.contiguous(),
            b.contiguous(), s0.contiguous())


class _Layer(torch.autograd.Function):
    """recurrent_layer's fused_block path: frnn_layer_forward (the projection's GEMM and the forward
    kernel, b_in added inside it), then frnn_layer_backward."""

    @staticmethod
    def forward(ctx, x, W, b_in, R, b, s0, cell, reverse, kern, K):
        from .kernels import fused_block

        x, W, b_in, R, b, s0 = _laid_out(x, W, b_in, R, b, s0)
        h, sT, gx, states_in, rhb = fused_block.layer_forward(kern, x, W, b_in, R, b, s0, reverse,
                                                              chunks=fwd_chunks(x.shape[0]))
        if kern.recompute:
            STATS["recompute"] += 1
        ctx.save_for_backward(x, W, gx, R, states_in, rhb, h, s0, b, b_in)
        ctx.cell, ctx.reverse, ctx.kern, ctx.K = cell, reverse, kern, K
        ctx.set_materialize_grads(False)
        return h, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dsT):
        from .kernels import _variants, fused_block
        from .kernels._variants import aligned, on, ptr, stream

        x, W, gx, R, states_in, rhb, h, s0, b, b_in = ctx.saved_tensors
        spec = get_cell(ctx.cell)
        T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
        I, S, K, kern = x.shape[2], spec.num_states, ctx.K, ctx.kern
        dh = gx.new_zeros(T, B, NH, DH) if dh is None else aligned(dh.to(gx.dtype))  # [T, B, NH, DH]
        dsT = None if dsT is None else dsT.to(gx.dtype).contiguous()  # [S, B, NH, DH]; None: zeros
        want_dx, want_dW = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dgx = torch.empty_like(gx)  # [T, B, NH, G, DH]
        ds0 = gx.new_empty(S, B, NH, DH)  # [S, B, NH, DH]
        dx = torch.empty_like(x) if want_dx else None  # [T, B, I]
        # the float32 scratch in one allocation (host time before the launch is GPU idle time):
        # dw [K, NBT, NH, G*DH*DH + G*DH] (DR_TILES: dR | db partials per chunk and batch tile) or dR
        # [NH, G, DH, DH] and db [NH*G*DH] (DR_FROM_DGX: GEMMs of dgx on the side stream); dW [NH*G*DH, I];
        # dsbuf [2, S, B, NH, DH] (K > 1)
        tiles, nbt = kern.dr_in_kernel == fused_block.DR_TILES, -(-B // kern.batch_tile)
        sizes = ((("dw", K * nbt * NH * (G * DH * DH + G * DH)),) if tiles else
                 (("dR", NH * G * DH * DH), ("db", NH * G * DH))) + (("dW", W.numel() if want_dW else 0),
                                                                    ("dsbuf", 2 * S * B * NH * DH if K > 1 else 0))
        offs, n = {}, 0
        for name, size in sizes:
            offs[name], n = (n, size), n + (size + 63) // 64 * 64  # 256-byte aligned parts
        ws = torch.empty(n, dtype=torch.float32, device=x.device)
        base = ws.data_ptr()
        at = {name: (base + 4 * o if size else None) for name, (o, size) in offs.items()}
        ones = None if tiles else _ones(T * B, gx)
        if fused_block.POISON:
            _variants.poison(True, [t for t in (dgx, ds0, dx, ws) if t is not None])
        with on(x.device):
            rc = kern.lib.frnn_layer_backward(T, B, NH, I, int(ctx.reverse), K, ptr(dh), ptr(dsT), ptr(gx), ptr(R),
                                              ptr(states_in), ptr(rhb), ptr(x), ptr(W), ptr(dgx), ptr(ds0), at.get("dw"),
                                              at.get("dR"), at.get("db"), ptr(h), ptr(s0), ptr(ones), ptr(dx), at["dW"],
                                              at["dsbuf"], ptr(b), ptr(b_in), stream(x.device))
        if rc != 0:
            raise RuntimeError(f"flashrnn recurrent_layer backward ({ctx.cell}): {kern.lib.frnn_error().decode()}")

        def part(name, *shape):
            o, size = offs[name]
            return ws[o:o + size].view(*shape)

        dW = part("dW", *W.shape) if want_dW else None
        if tiles:
            dR, db = fused_block._tile_sums(part("dw", K * nbt, NH, G * DH * DH + G * DH), NH, G, DH)
        else:
            dR, db = part("dR", NH, G, DH, DH), part("db", NH, G, DH)
        db_in = None
        if b_in is not None and ctx.needs_input_grad[2]:
            db_in = (db if spec.rhb_grad_is_gx else dgx.sum((0, 1), dtype=torch.float32)).reshape(-1).to(x.dtype)
        return (dx, None if dW is None else dW.to(W.dtype), db_in, dR.to(R.dtype), db.to(R.dtype), ds0,
                None, None, None, None)  # cell, reverse, kern, K
