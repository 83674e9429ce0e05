"""The reference implementation of the core op, in PyTorch ops, for any device.

It is the semantics every kernel must reproduce, and the fallback where no kernel applies.
Half-precision inputs are computed in float32 and rounded once at the end, as the kernels do
(fp32 accumulation and fp32 states).

Layouts (time positions, not processing order: with reverse=True step T-1 runs first):
    gx        [T, B, NH, G, DH]   input pre-activations (x W^T + input bias)
    R         [NH, G, DH, DH]     recurrent weights, R[n, g, out, in]
    b         [NH, G, DH]         recurrent bias
    s0        [S, B, NH, DH]      initial states
    h         [T, B, NH, DH]      output h at every time position
    sT        [S, B, NH, DH]      states after the last processed step
    states_in [T, S, B, NH, DH]   states entering the step at each time position (saved)
    rhb       [T, B, NH, G, DH]   R h + b at each time position (saved)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .cells import get_cell

Tensor = torch.Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def recurrent_matmul(h: Tensor, R_t: Tensor, b_row: Tensor) -> Tensor:
    """R h + b per head and gate, as one batched GEMM over heads.

    h [B, NH, DH], R_t [NH, DH(in), G*DH(out)] and b_row [NH, 1, G*DH] from `gemm_operands`
    -> rhb [B, NH, G, DH] (a view).
    """
    B, NH, DH = h.shape
    rhb = torch.baddbmm(b_row, h.transpose(0, 1), R_t)  # [NH, B, G*DH]
    return rhb.view(NH, B, -1, DH).transpose(0, 1)


def gemm_operands(R: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """R [NH, G, DH, DH], b [NH, G, DH] -> R_t [NH, DH(in), G*DH(out)], b_row [NH, 1, G*DH]."""
    NH, G, DH, _ = R.shape
    return R.permute(0, 3, 1, 2).reshape(NH, DH, G * DH), b.reshape(NH, 1, G * DH)


def forward(
    gx: Tensor,
    R: Tensor,
    b: Tensor,
    s0: Tensor,
    cell: str,
    reverse: bool,
    save: bool,
    compute_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """compute_dtype: None computes half types in float32 (as the kernels do); the tests pass the
    input dtype itself to measure what plain PyTorch ops in that dtype get wrong."""
    spec = get_cell(cell)
    T, B, NH, G, DH = gx.shape
    S = spec.num_states
    cdt = compute_dtype or _compute_dtype(gx.dtype)
    gx_c = gx.to(cdt)
    R_t, b_row = gemm_operands(R.to(cdt), b.to(cdt))
    states = tuple(s0.to(cdt).unbind(0))  # S x [B, NH, DH]
    h = gx.new_empty(T, B, NH, DH)  # [T, B, NH, DH]
    if save:
        states_in = gx.new_empty(T, S, B, NH, DH, dtype=cdt)  # [T, S, B, NH, DH]
        rhb_all = gx.new_empty(T, B, NH, G, DH, dtype=cdt)  # [T, B, NH, G, DH]
    else:
        states_in = gx.new_empty(0, dtype=cdt)
        rhb_all = gx.new_empty(0, dtype=cdt)
    for t in _time_order(T, reverse):
        rhb = recurrent_matmul(states[0], R_t, b_row)  # [B, NH, G, DH]
        if save:
            states_in[t] = torch.stack(states)
            rhb_all[t] = rhb
        states = spec.step(gx_c[t], rhb, states)
        h[t] = states[0]
    sT = torch.stack(states).to(gx.dtype)  # [S, B, NH, DH]
    return h, sT, states_in, rhb_all


def _step_vjp(step):
    """The pointwise backward of a cell without `step_backward`: torch.func.vjp of its step
    (it works below autograd, where the op runs)."""

    def pointwise_backward(gx_t, rhb_t, states, ds):
        _, step_vjp = torch.func.vjp(step, gx_t, rhb_t, states)
        return step_vjp(ds)

    return pointwise_backward


def backward(
    dh: Tensor,
    dsT: Tensor,
    gx: Tensor,
    R: Tensor,
    states_in: Tensor,
    rhb: Tensor,
    cell: str,
    reverse: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dgx [T,B,NH,G,DH], dR [NH,G,DH,DH], db [NH,G,DH], ds0 [S,B,NH,DH]).

    Per step: the cell's pointwise backward (its `step_backward`, else the vjp of its step) and
    dh += R^T d(rhb).
    dR and db are reduced once over all steps after the loop.
    """
    spec = get_cell(cell)
    pointwise_backward = spec.step_backward or _step_vjp(spec.step)
    T, B, NH, G, DH = gx.shape
    cdt = states_in.dtype if states_in.numel() else _compute_dtype(gx.dtype)
    R_rows = R.to(cdt).reshape(NH, G * DH, DH)  # [NH, G*DH(out), DH(in)]: R^T d(rhb) as one bmm
    ds = dsT.to(cdt).clone()  # [S, B, NH, DH]
    dgx = torch.empty(T, B, NH, G, DH, dtype=cdt, device=gx.device)
    drhb = torch.empty(T, B, NH, G, DH, dtype=cdt, device=gx.device)
    dh_c = dh.to(cdt)
    for t in reversed(list(_time_order(T, reverse))):
        ds[0] += dh_c[t]
        dgx[t], drhb[t], ds_in = pointwise_backward(
            gx[t].to(cdt), rhb[t], tuple(states_in[t].unbind(0)), tuple(ds.unbind(0))
        )
        ds = torch.stack(ds_in)
        ds[0] += torch.bmm(drhb[t].reshape(B, NH, G * DH).transpose(0, 1), R_rows).transpose(0, 1)
    h_in = states_in[:, 0]  # [T, B, NH, DH]
    dR = torch.einsum("tbngi,tbnj->ngij", drhb, h_in)
    db = drhb.sum(dim=(0, 1))
    return dgx.to(gx.dtype), dR.to(R.dtype), db.to(R.dtype), ds.to(gx.dtype)
