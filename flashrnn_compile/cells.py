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
its CUDA functor in `csrc/common/cells.cuh`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

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


CELLS = {
    spec.name: spec
    for spec in (
        CellSpec("lstm", ("i", "f", "g", "o"), ("h", "c"), (0.0, 0.0), _lstm_step, "LstmCell"),
        CellSpec("gru", ("r", "z", "n"), ("h",), (0.0,), _gru_step, "GruCell"),
        CellSpec("elman_tanh", ("a",), ("h",), (0.0,), _elman_tanh_step, "ElmanTanhCell"),
        CellSpec("elman_relu", ("a",), ("h",), (0.0,), _elman_relu_step, "ElmanReluCell"),
        CellSpec(
            "slstm",
            ("i", "f", "z", "o"),
            ("h", "c", "n", "m"),
            (0.0, 0.0, 0.0, 0.0),
            _slstm_step,
            "SlstmCell",
        ),
    )
}


def get_cell(name: str) -> CellSpec:
    """The registry entry for `name`; a ValueError naming the known cells otherwise."""
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name]
