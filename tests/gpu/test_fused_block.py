"""The fused_block CUDA kernels against the float64 reference, within 2x PyTorch's own error.

As tests/gpu/test_alternating.py: fresh inputs exact in every dtype, outputs NaN-poisoned before
each kernel run, and for each of float32, bfloat16, float16 err(ours) <= 2 err(PyTorch natively in
that dtype) against float64 for h, sT and the gradients of gx, R, b, s0 (our backward kernel).
Tiling parameters come from the planner for this GPU (fused_block only), as the backend's would.

Matrix: every cell x (NH x DH, B) in {12x64 B16, 24x32 B3, 5x48 B3, 2x16 B1, 6x128 B16} x T in
{1, 17} x both directions; T = 1024 for lstm 12x64 B16 (forward), gru 5x48 B3 (reverse) and slstm
24x32 B3 (forward). `CASES` and `PLAN_SHAPES` are also what benchmarks/prebuild_fused.py builds.
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import pytest
import torch

from flashrnn_compile import planner, reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.kernels import fused_block
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err, within

from .conftest import make_inputs

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((12, 64, 16), (24, 32, 3), (5, 48, 3), (2, 16, 1), (6, 128, 16))  # (NH, DH, B)
LONG = {("lstm", 12, 64, 16, False), ("gru", 5, 48, 3, True), ("slstm", 24, 32, 3, False)}
NAMES = ("h", "sT", "dgx", "dR", "db", "ds0")


def _cases():
    for cell, (NH, DH, B), reverse in itertools.product(sorted(CELLS), SHAPES, (False, True)):
        for T in (1, 17):
            yield cell, NH, DH, B, T, reverse
        if (cell, NH, DH, B, reverse) in LONG:
            yield cell, NH, DH, B, 1024, reverse


CASES = list(_cases())
# (cell, B, NH, DH, dtype) of every plan the tests ask for
PLAN_SHAPES = sorted({(c, B, NH, DH, d) for c, NH, DH, B, _, _ in CASES for d in DTYPES}
                     | {("gru", 4, 2, 16, torch.float32), ("lstm", 2, 1, 16, torch.float32)}, key=str)


def plan_for(cell, B, NH, DH, dtype, gpu=None) -> str:
    chosen = planner.plan(cell, B, NH, DH, dtype, gpu=gpu, families=("fused_block",))
    assert chosen.family == "fused_block", chosen.reason
    return runtime.plan_json("fused_block", chosen.params)


def _run(fn, inputs, dh, dsT):
    """Outputs (h, sT) and gradients (dgx, dR, db, ds0) of fn(gx, R, b, s0) -> (h, sT)."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, sT = fn(*inputs)
    loss = (h.to(dh.dtype) * dh).sum() + (sT.to(dsT.dtype) * dsT).sum()
    grads = torch.autograd.grad(loss, inputs)
    return (h.detach(), sT.detach()) + tuple(grads)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)


def test_kernels_are_available_and_used():
    assert fused_block.unavailable(torch.device("cuda")) is None
    plan = plan_for("lstm", 16, 12, 64, torch.bfloat16)
    assert runtime.implementation(plan, torch.device("cuda")).family == "fused_block"


@pytest.mark.parametrize("cell,NH,DH,B,T,reverse", CASES,
                         ids=[f"{c}-{nh}x{dh}-B{b}-T{t}-{'rev' if r else 'fwd'}" for c, nh, dh, b, t, r in CASES])
def test_matches_float64_reference(cell, NH, DH, B, T, reverse):
    seed = zlib.crc32(f"fused-{cell}-{NH}-{DH}-{B}-{T}-{reverse}".encode())
    gx, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed)
    ref = _run(lambda *a: reference.forward(*a, cell, reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    failures = []
    for dtype in DTYPES:
        plan = plan_for(cell, B, NH, DH, dtype)
        low = [t.to(dtype) for t in (gx, R, b, s0)]
        dh_d, dsT_d = dh.to(dtype), dsT.to(dtype)
        native = _run(lambda *a: reference.forward(*a, cell, reverse, False, compute_dtype=dtype)[:2],
                      low, dh_d, dsT_d)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # any fallback fails here
            ours = _run(lambda *a: recurrence(*a, cell=cell, reverse=reverse, plan=plan), low, dh_d, dsT_d)
        for name, o, n, r in zip(NAMES, ours, native, ref):
            assert o.dtype == dtype and o.shape == r.shape, (name, o.dtype, o.shape)
            e_ours, e_torch = rel_err(o, r), rel_err(n, r)
            if not within(e_ours, e_torch):
                failures.append(f"{dtype} {name}: ours {e_ours:.3g} > 2 x torch {e_torch:.3g}")
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_save_false_matches_save_true(cell):
    gx, R, b, s0, _, _ = make_inputs(cell, 9, 3, 2, 16, seed=7)
    gx, R, b, s0 = (t.float() for t in (gx, R, b, s0))
    plan = plan_for(cell, 3, 2, 16, torch.float32)
    h1, s1, si, rh = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, True)
    h2, s2, si2, rh2 = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, False)
    assert torch.equal(h1, h2) and torch.equal(s1, s2)
    assert si2.numel() == 0 and rh2.numel() == 0
    _, _, si_ref, rh_ref = reference.forward(gx.double(), R.double(), b.double(), s0.double(), cell, False, True)
    assert rel_err(si, si_ref) < 1e-5 and rel_err(rh, rh_ref) < 1e-5


def test_noncontiguous_inputs():
    gx, R, b, s0, _, _ = make_inputs("gru", 5, 4, 2, 16, seed=3)
    gx = gx.float().transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, ...] view, not contiguous
    assert not gx.is_contiguous()
    R, b, s0 = R.float(), b.float(), s0.float()
    h, sT = recurrence(gx, R, b, s0, cell="gru", plan=plan_for("gru", 4, 2, 16, torch.float32))
    h_ref, sT_ref = recurrence(gx, R, b, s0, cell="gru")
    assert rel_err(h, h_ref) < 1e-5 and rel_err(sT, sT_ref) < 1e-5


def test_empty_sequence():
    gx, R, b, s0, _, _ = make_inputs("lstm", 0, 2, 1, 16, seed=1)
    gx, R, b, s0 = (t.float().requires_grad_(True) for t in (gx, R, b, s0))
    h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=plan_for("lstm", 2, 1, 16, torch.float32))
    assert h.shape == (0, 2, 1, 16) and torch.equal(sT, s0)
    (sT.sum()).backward()
    assert torch.equal(s0.grad, torch.ones_like(s0)) and torch.count_nonzero(R.grad) == 0


def test_unsupported_config_is_a_clear_error():
    gx, R, b, s0, _, _ = make_inputs("lstm", 2, 1, 1, 24, seed=2)
    gx, R, b, s0 = (t.float() for t in (gx, R, b, s0))
    plan = runtime.plan_json("fused_block", {"WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 0})
    with pytest.raises(ValueError, match="DH=24"):
        recurrence(gx, R, b, s0, cell="lstm", plan=plan)
