"""The cell registry: one entry per recurrent cell, and nothing about cells anywhere else.

A cell is the pointwise part of one recurrence step. The recurrent matmul is shared by every
cell and lives outside it: for each step the caller computes

    rhb = R h + b        # [B, NH, G, DH], from R [NH, G, DH, DH] (out, in) and b [NH, G, DH]

and the cell maps (gx_t, rhb, states) to the new states. `states[0]` is always h, the output.

Axis letters (used the same way in the whole package): T time, B batch, NH heads, DH head dim,
G gates, S states.

Gate orders follow PyTorch:
    lstm        (i, f, g, o)    states (h, c)
    gru         (r, z, n)       states (h,)      n = tanh(gx_n + r * (R_n h + b_n))
    elman_tanh  (a,)            states (h,)
    elman_relu  (a,)            states (h,)
    slstm       (i, f, z, o)    states (h, c, n, m)   exponential input gate, sigmoid forget
                                                      gate in log space, stabiliser m (xLSTM)

To add a cell: write its step in PyTorch ops, add a `CellSpec` to `CELLS`, and give the name of
its CUDA functor in `csrc/common/cells.cuh`. Its pointwise backward (`step_backward`) is optional:
without one the reference backward differentiates `step` with torch.func.vjp (about 5x slower on
CPU); with one, tests/test_cells.py checks it against that vjp.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
States = Tuple[Tensor, ...]


@dataclasses.dataclass(frozen=True)
class CellSpec:
    name: str
    gates: Tuple[str, ...]  # gate names in memory order along G
    states: Tuple[str, ...]  # state names in memory order along S; states[0] is h
    initial: Tuple[float, ...]  # default initial value of each state
    step: Callable[[Tensor, Tensor, States], States]
    functor: str  # name of the CUDA pointwise functor (csrc/common/cells.cuh)
    # (gx, rhb, states, d_new_states) -> (dgx, drhb, d_states): the vjp of `step`, or None
    step_backward: Optional[Callable[[Tensor, Tensor, States, States], Tuple[Tensor, Tensor, States]]] = None
    # every gate reads gx + rhb, so dL/drhb == dL/dgx (dR and db then follow from dgx alone)
    rhb_grad_is_gx: bool = False
    # the gradient jumps (relu' at 0, the sLSTM stabiliser's max): the fused backward kernels keep
    # their MMA right-hand side as two 16-bit pieces (fused_block.cuh Precision<Cell>::JUMPS)
    gradient_jumps: bool = False

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def num_states(self) -> int:
        return len(self.states)

    def initial_states(self, batch: int, heads: int, head_dim: int, *, dtype, device) -> Tensor:
        """Default initial states s0: [S, B, NH, DH]."""
        s0 = torch.empty(self.num_states, batch, heads, head_dim, dtype=dtype, device=device)
        for k, value in enumerate(self.initial):
            s0[k].fill_(value)
        return s0


# Each step: gx [B, NH, G, DH], rhb [B, NH, G, DH], states: S tensors [B, NH, DH] -> S tensors.


def _lstm_step(gx: Tensor, rhb: Tensor, states: States) -> States:
    _, c = states
    i, f, g, o = (gx + rhb).unbind(-2)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def _gru_step(gx: Tensor, rhb: Tensor, states: States) -> States:
    (h,) = states
    gx_r, gx_z, gx_n = gx.unbind(-2)
    rh_r, rh_z, rh_n = rhb.unbind(-2)
    r = torch.sigmoid(gx_r + rh_r)
    z = torch.sigmoid(gx_z + rh_z)
    n = torch.tanh(gx_n + r * rh_n)
    return ((1 - z) * n + z * h,)


def _elman_tanh_step(gx: Tensor, rhb: Tensor, states: States) -> States:
    return (torch.tanh((gx + rhb).squeeze(-2)),)


def _elman_relu_step(gx: Tensor, rhb: Tensor, states: States) -> States:
    return (torch.relu((gx + rhb).squeeze(-2)),)


def _slstm_step(gx: Tensor, rhb: Tensor, states: States) -> States:
    _, c, n, m = states
    i_raw, f_raw, z_raw, o_raw = (gx + rhb).unbind(-2)
    log_f_plus_m = m + F.logsigmoid(f_raw)
    m_new = torch.maximum(i_raw, log_f_plus_m)
    i = torch.exp(i_raw - m_new)
    f = torch.exp(log_f_plus_m - m_new)
    c_new = f * c + i * torch.tanh(z_raw)
    n_new = f * n + i
    h_new = torch.sigmoid(o_raw) * c_new / n_new
    return h_new, c_new, n_new, m_new


# Pointwise backward of each step: gx, rhb [B, NH, G, DH], states and ds (gradient of the new
# states): S tensors [B, NH, DH] -> dgx, drhb [B, NH, G, DH] and the gradient of the old states
# (their pointwise part: h reaches the next step only through rhb, which the caller handles).


def _lstm_backward(gx: Tensor, rhb: Tensor, states: States, ds: States):
    _, c = states
    dh, dc = ds
    i_raw, f_raw, g_raw, o_raw = (gx + rhb).unbind(-2)
    i, f, g, o = torch.sigmoid(i_raw), torch.sigmoid(f_raw), torch.tanh(g_raw), torch.sigmoid(o_raw)
    tc = torch.tanh(f * c + i * g)  # tanh(c_new)
    dc_new = dc + dh * o * (1 - tc * tc)
    d_pre = torch.stack(
        (dc_new * g * i * (1 - i), dc_new * c * f * (1 - f), dc_new * i * (1 - g * g), dh * tc * o * (1 - o)), -2
    )
    return d_pre, d_pre, (torch.zeros_like(dh), dc_new * f)


def _gru_backward(gx: Tensor, rhb: Tensor, states: States, ds: States):
    (h,) = states
    (dh,) = ds
    gx_r, gx_z, gx_n = gx.unbind(-2)
    rh_r, rh_z, rh_n = rhb.unbind(-2)
    r, z = torch.sigmoid(gx_r + rh_r), torch.sigmoid(gx_z + rh_z)
    n = torch.tanh(gx_n + r * rh_n)
    dn_pre = dh * (1 - z) * (1 - n * n)
    dr_pre = dn_pre * rh_n * r * (1 - r)
    dz_pre = dh * (h - n) * z * (1 - z)
    dgx = torch.stack((dr_pre, dz_pre, dn_pre), -2)
    drhb = torch.stack((dr_pre, dz_pre, dn_pre * r), -2)
    return dgx, drhb, (dh * z,)


def _elman_tanh_backward(gx: Tensor, rhb: Tensor, states: States, ds: States):
    a = torch.tanh(gx + rhb)  # [B, NH, 1, DH]
    d_pre = ds[0].unsqueeze(-2) * (1 - a * a)
    return d_pre, d_pre, (torch.zeros_like(ds[0]),)


def _elman_relu_backward(gx: Tensor, rhb: Tensor, states: States, ds: States):
    d_pre = ds[0].unsqueeze(-2) * ((gx + rhb) > 0)  # relu'(0) = 0, as torch.relu's backward
    return d_pre, d_pre, (torch.zeros_like(ds[0]),)


def _slstm_backward(gx: Tensor, rhb: Tensor, states: States, ds: States):
    _, c, n, m = states
    dh, dc, dn, dm = ds
    i_raw, f_raw, z_raw, o_raw = (gx + rhb).unbind(-2)
    log_f_plus_m = m + F.logsigmoid(f_raw)
    m_new = torch.maximum(i_raw, log_f_plus_m)
    i, f = torch.exp(i_raw - m_new), torch.exp(log_f_plus_m - m_new)
    tz, so = torch.tanh(z_raw), torch.sigmoid(o_raw)
    c_new, n_new = f * c + i * tz, f * n + i
    dc_new = dc + dh * so / n_new
    dn_new = dn - dh * so * c_new / (n_new * n_new)
    di, df = dc_new * tz + dn_new, dc_new * c + dn_new * n
    dm_new = dm - di * i - df * f
    # torch.maximum sends the gradient to the larger argument, half to each on a tie
    w_i = (i_raw > log_f_plus_m).to(dm_new.dtype) + 0.5 * (i_raw == log_f_plus_m).to(dm_new.dtype)
    d_log_f = df * f + dm_new * (1 - w_i)
    d_pre = torch.stack(
        (di * i + dm_new * w_i, d_log_f * torch.sigmoid(-f_raw), dc_new * i * (1 - tz * tz), dh * c_new / n_new * so * (1 - so)),
        -2,
    )
    return d_pre, d_pre, (torch.zeros_like(dh), dc_new * f, dn_new * f, d_log_f)


CELLS = {
    spec.name: spec
    for spec in (
        CellSpec("lstm", ("i", "f", "g", "o"), ("h", "c"), (0.0, 0.0), _lstm_step, "LstmCell", _lstm_backward, True),
        CellSpec("gru", ("r", "z", "n"), ("h",), (0.0,), _gru_step, "GruCell", _gru_backward),
        CellSpec("elman_tanh", ("a",), ("h",), (0.0,), _elman_tanh_step, "ElmanTanhCell", _elman_tanh_backward, True),
        CellSpec("elman_relu", ("a",), ("h",), (0.0,), _elman_relu_step, "ElmanReluCell", _elman_relu_backward, True,
                 gradient_jumps=True),
        CellSpec(
            "slstm",
            ("i", "f", "z", "o"),
            ("h", "c", "n", "m"),
            (0.0, 0.0, 0.0, 0.0),
            _slstm_step,
            "SlstmCell",
            _slstm_backward,
            True,
            gradient_jumps=True,
        ),
    )
}


def get_cell(name: str) -> CellSpec:
    """The registry entry for `name`; a ValueError naming the known cells otherwise."""
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name]
