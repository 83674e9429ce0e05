"""tests/gpu/: need a CUDA device; skipped (with the reason) where there is none.

Inputs shared by the GPU tests: random values rounded so that float32, bfloat16 and float16 hold
them exactly (one float64 reference serves the three dtypes).
"""

from __future__ import annotations

import pytest
import torch

from flashrnn_compile.cells import get_cell


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (tests/gpu/)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def exact(x: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and drop magnitudes under float16's normal range: exact in all three."""
    x = x.to(torch.bfloat16).double()
    return torch.where(x.abs() < 2.0**-14, torch.zeros_like(x), x)


# initial value of each state by name (the sLSTM normaliser n must stay positive)
_STATE_SAMPLERS = {
    "h": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
    "c": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
    "n": lambda shape, g: 1.0 + torch.rand(shape, generator=g, dtype=torch.float64),
    "m": lambda shape, g: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64),
}


def make_inputs(cell: str, T: int, B: int, NH: int, DH: int, seed: int, device="cuda"):
    """Fresh float64 inputs (exact in every dtype): gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH],
    s0 [S,B,NH,DH], and upstream gradients dh [T,B,NH,DH], dsT [S,B,NH,DH]."""
    spec = get_cell(cell)
    G = spec.num_gates
    g = torch.Generator().manual_seed(seed)
    gx = exact(torch.randn(T, B, NH, G, DH, generator=g, dtype=torch.float64))
    R = exact(0.7 / DH**0.5 * torch.randn(NH, G, DH, DH, generator=g, dtype=torch.float64))
    b = exact(0.1 * torch.randn(NH, G, DH, generator=g, dtype=torch.float64))
    s0 = exact(torch.stack([_STATE_SAMPLERS[name]((B, NH, DH), g) for name in spec.states]))
    dh = exact(torch.randn(T, B, NH, DH, generator=g, dtype=torch.float64))
    dsT = exact(torch.randn(spec.num_states, B, NH, DH, generator=g, dtype=torch.float64))
    return tuple(t.to(device) for t in (gx, R, b, s0, dh, dsT))


NAMES = ("h", "sT", "dgx", "dR", "db", "ds0")


def run_with_grads(fn, inputs, dh, dsT):
    """Outputs (h, sT) and gradients (dgx, dR, db, ds0) of fn(gx, R, b, s0) -> (h, sT)."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, sT = fn(*inputs)
    loss = (h.to(dh.dtype) * dh).sum() + (sT.to(dsT.dtype) * dsT).sum()
    grads = torch.autograd.grad(loss, inputs)
    return (h.detach(), sT.detach()) + tuple(grads)


def float64_failures(cell, NH, DH, B, T, reverse, seed, dtypes, plan_for_dtype):
    """Run the op with the plan of each dtype against the float64 reference; the list of
    (dtype, output) whose error exceeds 2x PyTorch's own error in that dtype. A fallback to the
    reference (a RuntimeWarning) fails the test."""
    import warnings

    from flashrnn_compile import reference
    from flashrnn_compile.ops import recurrence
    from flashrnn_compile.testing import rel_err, within

    gx, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed)
    ref = run_with_grads(lambda *a: reference.forward(*a, cell, reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    failures = []
    for dtype in dtypes:
        plan = plan_for_dtype(dtype)
        low = [t.to(dtype) for t in (gx, R, b, s0)]
        dh_d, dsT_d = dh.to(dtype), dsT.to(dtype)
        native = run_with_grads(lambda *a: reference.forward(*a, cell, reverse, False, compute_dtype=dtype)[:2],
                                low, dh_d, dsT_d)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            ours = run_with_grads(lambda *a: recurrence(*a, cell=cell, reverse=reverse, plan=plan), low, dh_d, dsT_d)
        for name, o, n, r in zip(NAMES, ours, native, ref):
            assert o.dtype == dtype and o.shape == r.shape, (name, o.dtype, o.shape)
            e_ours, e_torch = rel_err(o, r), rel_err(n, r)
            if not within(e_ours, e_torch):
                failures.append(f"{dtype} {name}: ours {e_ours:.3g} > 2 x torch {e_torch:.3g}")
    return failures
