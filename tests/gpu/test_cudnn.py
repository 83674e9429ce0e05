"""Dense (NH = 1) lstm / gru / elman: the alternating kernels against cuDNN's own error too.

PyTorch's nn.LSTM / nn.GRU / nn.RNN run the core op's recurrence exactly when the input weights
are the identity (input size G*DH, W_ih = I, b_ih = 0: x W_ih^T = gx), W_hh = R[0], b_hh = b and
(h0, c0) = s0; reverse runs on the time-flipped sequence. For each dtype,
err(ours) <= 2 err(cuDNN) against the float64 reference, for h, sT and every gradient.
`torch_rnn` is checked on CPU in float64 first (tests/test_cudnn_mapping.py), so a failure here is
about numbers, not the mapping.
"""

from __future__ import annotations

import pytest
import torch

from flashrnn_compile import reference, runtime
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err, within

from .conftest import make_inputs

PLAN = runtime.plan_json("alternating")
MODULES = {"lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {}),
           "elman_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
           "elman_relu": (torch.nn.RNN, {"nonlinearity": "relu"})}


def torch_rnn(cell, gx, R, b, s0, reverse):
    """(h [T,B,1,DH], sT [S,B,1,DH]) of the core op computed by nn.LSTM/GRU/RNN (differentiable)."""
    T, B, NH, G, DH = gx.shape
    assert NH == 1
    cls, kw = MODULES[cell]
    mod = cls(G * DH, DH, **kw).to(device=gx.device, dtype=gx.dtype)
    eye = torch.eye(G * DH, device=gx.device, dtype=gx.dtype)
    w_hh, b_hh = R[0].reshape(G * DH, DH), b[0].reshape(G * DH)
    params = {"weight_ih_l0": eye, "weight_hh_l0": w_hh, "bias_ih_l0": torch.zeros_like(b_hh), "bias_hh_l0": b_hh}
    x = gx.reshape(T, B, G * DH)
    if reverse:
        x = x.flip(0)
    h0 = [s.reshape(1, B, DH) for s in s0]  # [1, B, DH] each
    hx = (h0[0], h0[1]) if cell == "lstm" else h0[0]
    y, hn = torch.func.functional_call(mod, params, (x, hx))
    if reverse:
        y = y.flip(0)
    sT = torch.stack(hn) if cell == "lstm" else hn[None]
    return y.reshape(T, B, 1, DH), sT.reshape(-1, B, 1, DH)


def _run(fn, inputs, dh, dsT):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, sT = fn(*inputs)
    grads = torch.autograd.grad((h.to(dh.dtype) * dh).sum() + (sT.to(dsT.dtype) * dsT).sum(), inputs)
    return (h.detach(), sT.detach()) + tuple(grads)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T", [17, 256])
@pytest.mark.parametrize("cell", sorted(MODULES))
def test_within_2x_of_cudnn(cell, T, reverse):
    gx, R, b, s0, dh, dsT = make_inputs(cell, T, 16, 1, 768, seed=T + 7 * reverse + len(cell))
    ref = _run(lambda *a: reference.forward(*a, cell, reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    failures = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        low = [t.to(dtype) for t in (gx, R, b, s0)]
        dh_d, dsT_d = dh.to(dtype), dsT.to(dtype)
        cudnn = _run(lambda *a: torch_rnn(cell, *a, reverse), low, dh_d, dsT_d)
        ours = _run(lambda *a: recurrence(*a, cell=cell, reverse=reverse, plan=PLAN), low, dh_d, dsT_d)
        for name, o, c, r in zip(("h", "sT", "dgx", "dR", "db", "ds0"), ours, cudnn, ref):
            e_ours, e_cudnn = rel_err(o, r), rel_err(c, r)
            if not within(e_ours, e_cudnn):
                failures.append(f"{dtype} {name}: ours {e_ours:.3g} > 2 x cuDNN {e_cudnn:.3g}")
    assert not failures, "; ".join(failures)
