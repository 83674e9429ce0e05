"""Each cell's analytic pointwise backward against torch.func.vjp of its step, in float64, on
random inputs and on the points where the derivative has a kink (relu at 0, the sLSTM
stabiliser's max on a tie)."""

import pytest
import torch

from flashrnn_compile.cells import CELLS, get_cell

CELL_NAMES = sorted(CELLS)


def _inputs(cell, B=3, NH=2, DH=5, seed=0):
    spec = get_cell(cell)
    g = torch.Generator().manual_seed(seed)
    G, S = spec.num_gates, spec.num_states
    gx = torch.randn(B, NH, G, DH, generator=g, dtype=torch.float64)
    rhb = torch.randn(B, NH, G, DH, generator=g, dtype=torch.float64)
    states = [torch.randn(B, NH, DH, generator=g, dtype=torch.float64) for _ in range(S)]
    if cell == "slstm":
        states[2] = 1.0 + torch.rand(B, NH, DH, generator=g, dtype=torch.float64)  # n > 0
    ds = tuple(torch.randn(B, NH, DH, generator=g, dtype=torch.float64) for _ in range(S))
    return gx, rhb, tuple(states), ds


def _vjp(spec, gx, rhb, states, ds):
    _, f = torch.func.vjp(spec.step, gx, rhb, states)
    return f(ds)


def _assert_same(ours, ref):
    dgx, drhb, dst = ours
    rgx, rrhb, rst = ref
    torch.testing.assert_close(dgx, rgx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(drhb, rrhb, rtol=1e-12, atol=1e-12)
    assert len(dst) == len(rst)
    for a, b in zip(dst, rst):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_step_backward_matches_vjp(cell, seed):
    spec = get_cell(cell)
    assert spec.step_backward is not None
    args = _inputs(cell, seed=seed)
    _assert_same(spec.step_backward(*args), _vjp(spec, *args))


def test_relu_kink():
    spec = get_cell("elman_relu")
    gx, rhb, states, ds = _inputs("elman_relu")
    rhb = -gx.clone()
    rhb[0, 0, 0, :2] += 1.0  # two positive pre-activations, the rest exactly 0
    _assert_same(spec.step_backward(gx, rhb, states, ds), _vjp(spec, gx, rhb, states, ds))


def test_slstm_tie():
    """i_raw equal to m + log sigmoid(f_raw): torch.maximum splits the gradient in half."""
    spec = get_cell("slstm")
    gx, rhb, states, ds = _inputs("slstm")
    _, _, _, m = states
    f_raw = (gx + rhb)[..., 1, :]
    gx = gx.clone()
    gx[..., 0, :] = m + torch.nn.functional.logsigmoid(f_raw) - rhb[..., 0, :]
    pre = gx + rhb
    assert (pre[..., 0, :] == m + torch.nn.functional.logsigmoid(pre[..., 1, :])).sum() > 10
    _assert_same(spec.step_backward(gx, rhb, states, ds), _vjp(spec, gx, rhb, states, ds))
