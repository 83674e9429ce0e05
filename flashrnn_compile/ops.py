"""The core op: one recurrence, one direction, one layer, as torch.library custom ops.

    torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, reverse, plan, save)
        gx [T, B, NH, G, DH], R [NH, G, DH, DH], b [NH, G, DH], s0 [S, B, NH, DH]
        -> h [T, B, NH, DH], sT [S, B, NH, DH], states_in [T, S, B, NH, DH], rhb [T, B, NH, G, DH]
    torch.ops.flashrnn.recurrence_bwd(dh, dsT, gx, R, states_in, rhb, cell, reverse, plan)
        -> dgx [T, B, NH, G, DH], dR [NH, G, DH, DH], db [NH, G, DH], ds0 [S, B, NH, DH]

`plan` is the planner's choice as a JSON string ({"family": ..., "params": {...}}), so a graph
written once runs on whichever implementation the family names (see `runtime`). `save` says
whether states_in and rhb are kept for backward; with save=False they are empty.

Use `recurrence(...)` from Python: it validates, fills default initial states, and returns
(h, sT). Both custom ops survive AOTAutograd as single nodes (forward and backward graph).

Eager calls of `recurrence(...)` on plain tensors (nothing tracing: not Dynamo, make_fx, a
dispatch or function mode, a functorch transform or autocast) skip the custom-op machinery: an
autograd.Function calls the same implementation and backward as the ops (`_Eager`). The
machinery's dispatch, schema and wrapper layers cost about 130 us of CPU per forward + backward on
our CPU machine and more on the GPU machine's (session 6, H200: 1.9 ms of CPU per layer fwd+bwd
against 1.74 ms of kernels, so the GPU waited on the launches).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import runtime
from .cells import get_cell

Tensor = torch.Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def validate(gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str) -> None:
    """Check the core op's arguments; a ValueError naming the argument and the expected shape."""
    spec = get_cell(cell)
    G, S = spec.num_gates, spec.num_states
    for name, t, rank, axes in (
        ("gx", gx, 5, "[T, B, NH, G, DH]"),
        ("R", R, 4, "[NH, G, DH, DH]"),
        ("b", b, 3, "[NH, G, DH]"),
        ("s0", s0, 4, "[S, B, NH, DH]"),
    ):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a tensor {axes}, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{name}: expected {rank} dims {axes}, got shape {_shape(t)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), "
                f"got {t.dtype}"
            )
    T, B, NH, Gx, DH = gx.shape
    if Gx != G:
        raise ValueError(f"gx: cell {cell!r} has G={G} gates, expected [T, B, NH, {G}, DH], got {_shape(gx)}")
    expected = {
        "R": (R, (NH, G, DH, DH), "[NH, G, DH, DH]"),
        "b": (b, (NH, G, DH), "[NH, G, DH]"),
        "s0": (s0, (S, B, NH, DH), "[S, B, NH, DH]"),
    }
    for name, (t, want, axes) in expected.items():
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name}: expected {axes} = {list(want)} (from gx {_shape(gx)} and cell {cell!r} "
                f"with S={S}), got {_shape(t)}"
            )
    for name, t in (("R", R), ("b", b), ("s0", s0)):
        if t.dtype != gx.dtype:
            raise ValueError(f"{name}: expected dtype {gx.dtype} (the dtype of gx), got {t.dtype}")
        if t.device != gx.device:
            raise ValueError(f"{name}: expected device {gx.device} (the device of gx), got {t.device}")


def _forward_impl(gx, R, b, s0, cell, reverse, plan, save) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """recurrence_fwd's body (`_Eager` runs the same)."""
    validate(gx, R, b, s0, cell)
    impl = runtime.implementation(plan, gx.device)
    return impl.forward(gx, R, b, s0, cell, reverse, runtime.parse_plan(plan).params, save)


def _backward_impl(dh, dsT, gx, R, states_in, rhb, cell, reverse, plan) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """recurrence_bwd's body (`_Eager` runs the same): the forward must have kept its states."""
    if states_in.numel() == 0 and gx.shape[0] > 0:
        raise RuntimeError(
            "flashrnn.recurrence_bwd: the forward ran with save=False (no states kept), "
            "so it cannot be differentiated"
        )
    impl = runtime.implementation(plan, gx.device)
    return impl.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse, runtime.parse_plan(plan).params)


@torch.library.custom_op("flashrnn::recurrence_fwd", mutates_args=())
def recurrence_fwd(
    gx: Tensor, R: Tensor, b: Tensor, s0: Tensor, cell: str, reverse: bool, plan: str, save: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_impl(gx, R, b, s0, cell, reverse, plan, save)


@recurrence_fwd.register_fake
def _(gx, R, b, s0, cell, reverse, plan, save):
    validate(gx, R, b, s0, cell)
    T, B, NH, G, DH = gx.shape
    S = s0.shape[0]
    cdt = torch.float64 if gx.dtype == torch.float64 else torch.float32
    h = gx.new_empty(T, B, NH, DH)
    sT = gx.new_empty(S, B, NH, DH)
    if save:
        states_in = gx.new_empty(T, S, B, NH, DH, dtype=cdt)
        rhb = gx.new_empty(T, B, NH, G, DH, dtype=cdt)
    else:
        states_in = gx.new_empty(0, dtype=cdt)
        rhb = gx.new_empty(0, dtype=cdt)
    return h, sT, states_in, rhb


@torch.library.custom_op("flashrnn::recurrence_bwd", mutates_args=())
def recurrence_bwd(
    dh: Tensor,
    dsT: Tensor,
    gx: Tensor,
    R: Tensor,
    states_in: Tensor,
    rhb: Tensor,
    cell: str,
    reverse: bool,
    plan: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward_impl(dh, dsT, gx, R, states_in, rhb, cell, reverse, plan)


@recurrence_bwd.register_fake
def _(dh, dsT, gx, R, states_in, rhb, cell, reverse, plan):
    T, B, NH, G, DH = gx.shape
    return (
        gx.new_empty(T, B, NH, G, DH),
        R.new_empty(NH, G, DH, DH),
        R.new_empty(NH, G, DH),
        gx.new_empty(dsT.shape),
    )


def _setup_context(ctx, inputs, output):
    gx, R, b, s0, cell, reverse, plan, save = inputs
    _, _, states_in, rhb = output
    ctx.save_for_backward(gx, R, states_in, rhb)
    ctx.cell, ctx.reverse, ctx.plan = cell, reverse, plan
    ctx.s0_shape = s0.shape
    # outputs without a gradient (states_in and rhb always; h or sT when unused) arrive as None,
    # not as zero tensors filled on every call (rhb alone is [T, B, NH, G, DH])
    ctx.set_materialize_grads(False)


def _backward_args(ctx, dh, dsT) -> tuple:
    """recurrence_bwd's arguments from the saved context; a gradient autograd left out (None) is zeros."""
    gx, R, states_in, rhb = ctx.saved_tensors
    T, B, NH, G, DH = gx.shape
    if dh is None:
        dh = gx.new_zeros(T, B, NH, DH)
    if dsT is None:
        dsT = gx.new_zeros(ctx.s0_shape)
    return dh.contiguous(), dsT.contiguous(), gx, R, states_in, rhb, ctx.cell, ctx.reverse, ctx.plan


def _backward(ctx, dh, dsT, _d_states_in, _d_rhb):
    dgx, dR, db, ds0 = torch.ops.flashrnn.recurrence_bwd(*_backward_args(ctx, dh, dsT))
    return dgx, dR, db, ds0, None, None, None, None


recurrence_fwd.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The core op's forward and backward without the custom-op machinery, for eager calls of
    `recurrence()` (see `_eager_ok`): the same validation, implementation, saved tensors and
    backward as recurrence_fwd / recurrence_bwd. Returns (h, sT)."""

    @staticmethod
    def forward(ctx, gx, R, b, s0, cell, reverse, plan, save):
        out = _forward_impl(gx, R, b, s0, cell, reverse, plan, save)
        _setup_context(ctx, (gx, R, b, s0, cell, reverse, plan, save), out)
        return out[0], out[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dsT):
        dgx, dR, db, ds0 = _backward_impl(*_backward_args(ctx, dh, dsT))
        return dgx, dR, db, ds0, None, None, None, None


EAGER_FAST_PATH = True  # tests switch it off to compare with the custom-op path


def _eager_ok(tensors) -> bool:
    """Whether recurrence() may take `_Eager`: an eager call on plain tensors with nothing that
    must see the custom op (Dynamo, make_fx / FakeTensor or any dispatch mode, a torch function
    mode, a functorch transform) and no autocast. is_compiling() first: under Dynamo nothing else
    is evaluated."""
    if torch.compiler.is_compiling() or not EAGER_FAST_PATH:
        return False
    if any(type(t) is not Tensor for t in tensors):
        return False
    return (_get_current_dispatch_mode() is None and not torch._C._is_torch_function_mode_enabled()
            and torch._C._functorch.peek_interpreter_stack() is None
            and not any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")))


def recurrence(
    gx: Tensor,
    R: Tensor,
    b: Tensor,
    s0: Optional[Tensor] = None,
    *,
    cell: str = "lstm",
    reverse: bool = False,
    plan: Optional[str] = None,
    save: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    """Run one recurrence; returns (h [T, B, NH, DH], sT [S, B, NH, DH]).

    s0 defaults to the cell's initial states; plan defaults to the reference; save defaults to
    whether autograd will need the states.
    """
    spec = get_cell(cell)
    if not isinstance(gx, Tensor) or gx.dim() != 5:
        shape = _shape(gx) if isinstance(gx, Tensor) else type(gx).__name__
        raise ValueError(f"gx: expected 5 dims [T, B, NH, G, DH], got {shape}")
    if s0 is None:
        _, B, NH, _, DH = gx.shape
        s0 = spec.initial_states(B, NH, DH, dtype=gx.dtype, device=gx.device)
    if plan is None:
        plan = runtime.REFERENCE_PLAN
    if save is None:
        save = torch.is_grad_enabled() and any(t.requires_grad for t in (gx, R, b, s0))
    if _eager_ok((gx, R, b, s0)):
        return _Eager.apply(gx, R, b, s0, cell, reverse, plan, save)
    h, sT, _, _ = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, reverse, plan, save)
    return h, sT
