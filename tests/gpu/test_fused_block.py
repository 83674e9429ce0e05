"""The fused_block CUDA kernels against the float64 reference, within 2x PyTorch's own error.

As tests/gpu/test_alternating.py: fresh inputs exact in every dtype, outputs NaN-poisoned before
each kernel run, and for each of bfloat16, float16 err(ours) <= 2 err(PyTorch natively in
that dtype) against float64 for h, sT and the gradients of gx, R, b, s0 (our backward kernel);
bfloat16 and float16 (float32 is refused by the family and the planner).
Tiling parameters come from the planner for this GPU (fused_block only), as the backend's would.

Matrix: every cell x (NH x DH, B) in {12x64 B16, 24x32 B3, 5x48 B3, 2x16 B1, 6x128 B16} x T in
{1, 17} x both directions; T = 1024 for lstm 12x64 B16 (forward), gru 5x48 B3 (reverse) and slstm
24x32 B3 (forward), unless FLASHRNN_GPU_LONG=0; and EXPLICIT tilings the planner does not choose
(n-tiles split over warps, several n-tiles per warp, R partly in shared memory), T in {1, 17}, both
directions. `CASES`, `PLAN_SHAPES` and `EXPLICIT` are also what benchmarks/prebuild_fused.py builds.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from flashrnn_compile import reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.kernels import fused_block
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err, within

from .conftest import (assert_matches_float64, assert_tiling_matches_float64, case_id, family_plan, inputs_in, make_inputs,
                       saved_states, sgd_losses, tiling_case_ids)

DTYPES = (torch.bfloat16, torch.float16)  # the family refuses float32 (kernels/fused_block.py TAKES)
SHAPES = ((12, 64, 16), (24, 32, 3), (5, 48, 3), (2, 16, 1), (6, 128, 16))  # (NH, DH, B)
LONG = {("lstm", 12, 64, 16, False), ("gru", 5, 48, 3, True), ("slstm", 24, 32, 3, False)}


def _cases():
    for cell, (NH, DH, B), reverse in itertools.product(sorted(CELLS), SHAPES, (False, True)):
        for T in (1, 17):
            yield cell, NH, DH, B, T, reverse
        if (cell, NH, DH, B, reverse) in LONG and os.environ.get("FLASHRNN_GPU_LONG") != "0":
            yield cell, NH, DH, B, 1024, reverse


CASES = list(_cases())
# (cell, B, NH, DH, dtype) of every plan the tests ask for
PLAN_SHAPES = sorted({(c, B, NH, DH, d) for c, NH, DH, B, _, _ in CASES for d in DTYPES}
                     | {("gru", 4, 2, 16, torch.float16), ("lstm", 2, 1, 16, torch.float16), ("lstm", 4, 1, 64, torch.bfloat16)}, key=str)


# Tilings the planner does not pick for the shapes above (it keeps batch tiles of 8 and all of R in
# registers), run with explicit plans: (cell, NH, DH, B, params, what the layout exercises)
EXPLICIT = [
    ("lstm", 4, 32, 19, {"WARPS": 2, "BATCH_TILE": 16, "R_REG_TILES": 2},
     "one warp per unit group over 2 n-tiles; 6 of its 8 R tiles in shared memory; partial last tile"),
    ("gru", 3, 32, 21, {"WARPS": 8, "BATCH_TILE": 16, "R_REG_TILES": 3},
     "row halves x 2 warps splitting the n-tiles"),
    ("slstm", 2, 16, 13, {"WARPS": 2, "BATCH_TILE": 16, "R_REG_TILES": 1},
     "row halves, each over 2 n-tiles; half of R in shared memory"),
]
EXPLICIT_CASES = [(c, nh, dh, b, prm, T, r) for c, nh, dh, b, prm, _ in EXPLICIT for T in (1, 17) for r in (False, True)]


def plan_for(cell, B, NH, DH, dtype, gpu=None) -> str:
    return family_plan("fused_block", cell, B, NH, DH, dtype, gpu)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)


def test_kernels_are_available_and_used():
    assert fused_block.unavailable(torch.device("cuda")) is None
    plan = plan_for("lstm", 16, 12, 64, torch.bfloat16)
    assert runtime.implementation(plan, torch.device("cuda")).family == "fused_block"


@pytest.mark.parametrize("cell,NH,DH,B,T,reverse", CASES,
                         ids=[case_id(*case) for case in CASES])
def test_matches_float64_reference(cell, NH, DH, B, T, reverse):
    assert_matches_float64("fused", cell, NH, DH, B, T, reverse, DTYPES, lambda dtype: plan_for(cell, B, NH, DH, dtype))


@pytest.mark.parametrize("cell,NH,DH,B,params,T,reverse", EXPLICIT_CASES,
                         ids=tiling_case_ids(EXPLICIT_CASES, {"WARPS": "W", "BATCH_TILE": "BT", "R_REG_TILES": "RREG"}))
def test_explicit_tilings_match_float64_reference(cell, NH, DH, B, params, T, reverse):
    """Layouts the planner does not choose here (EXPLICIT): same float64 comparison, same bound."""
    assert_tiling_matches_float64("fused_block", params, "fused-explicit", cell, NH, DH, B, T, reverse, DTYPES)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_save_false_matches_save_true(cell):
    gx, R, b, s0 = inputs_in(torch.float16, cell, 9, 3, 2, 16, seed=7)
    plan = plan_for(cell, 3, 2, 16, torch.float16)
    si, rh = saved_states(gx, R, b, s0, cell, plan)
    _, _, si_ref, rh_ref = reference.forward(gx.double(), R.double(), b.double(), s0.double(), cell, False, True)
    # PyTorch natively in float16 (the kernel takes h in float16 for R h, as cuDNN, with fp32 states)
    _, _, si_16, rh_16 = reference.forward(gx, R, b, s0, cell, False, True, compute_dtype=torch.float16)
    assert si.dtype == rh.dtype == torch.float32
    assert rel_err(si, si_ref) <= 2 * rel_err(si_16, si_ref) and rel_err(rh, rh_ref) <= 2 * rel_err(rh_16, rh_ref)


def test_noncontiguous_inputs():
    gx, R, b, s0, _, _ = make_inputs("gru", 5, 4, 2, 16, seed=3)
    gx = gx.half().transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, ...] view, not contiguous
    assert not gx.is_contiguous()
    R, b, s0 = R.half(), b.half(), s0.half()
    h, sT = recurrence(gx, R, b, s0, cell="gru", plan=plan_for("gru", 4, 2, 16, torch.float16))
    h_c, sT_c = recurrence(gx.contiguous(), R, b, s0, cell="gru", plan=plan_for("gru", 4, 2, 16, torch.float16))
    assert torch.equal(h, h_c) and torch.equal(sT, sT_c)


def test_empty_sequence():
    gx, R, b, s0 = (t.requires_grad_(True) for t in inputs_in(torch.float16, "lstm", 0, 2, 1, 16, seed=1))
    h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=plan_for("lstm", 2, 1, 16, torch.float16))
    assert h.shape == (0, 2, 1, 16) and torch.equal(sT, s0)
    (sT.sum()).backward()
    assert torch.equal(s0.grad, torch.ones_like(s0)) and torch.count_nonzero(R.grad) == 0


def test_unsupported_config_is_a_clear_error():
    gx, R, b, s0 = inputs_in(torch.float16, "lstm", 2, 1, 1, 24, seed=2)
    plan = runtime.plan_json("fused_block", {"WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 0})
    with pytest.raises(ValueError, match="DH=24"):
        recurrence(gx, R, b, s0, cell="lstm", plan=plan)


def test_backend_picks_fused_block_and_trains_like_eager():
    """torch.compile(nn.LSTM, backend="flashrnn") on the GPU, bfloat16: the rewrite's plan is
    fused_block, and after 3 SGD steps the losses and the parameters are within 2x the error of
    eager bfloat16 (cuDNN), both against the same model trained in float64."""
    import copy
    import functools
    import importlib.util
    import pathlib
    import sys

    from flashrnn_compile import context

    if importlib.util.find_spec("flashrnn_compile.passes") is None:  # a checkout on PYTHONPATH, not installed
        root = pathlib.Path(__file__).resolve().parents[2] / "passes"
        spec = importlib.util.spec_from_file_location("flashrnn_compile.passes", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["flashrnn_compile.passes"] = module
        spec.loader.exec_module(module)
    from flashrnn_compile.backend import flashrnn_backend

    torch.manual_seed(0)
    eager = torch.nn.LSTM(32, 64).cuda().to(torch.bfloat16)
    ours_mod = copy.deepcopy(eager)
    f64 = copy.deepcopy(eager).double()
    compiled = torch.compile(ours_mod, backend=functools.partial(flashrnn_backend, options={"inner": "aot_eager"}))
    x = torch.randn(12, 4, 32, device="cuda").to(torch.bfloat16)  # [T, B, input]
    target = torch.randn(12, 4, 64, device="cuda").to(torch.bfloat16)  # [T, B, hidden]
    runs = {"eager": eager, "ours": ours_mod, "f64": f64}
    context.reset_stats()
    losses = sgd_losses(runs, dict(runs, ours=compiled), x, target, lr=0.1, output=lambda out: out[0])
    reports = context.reports()
    families = [r["plan"]["family"] for rep in reports for r in rep["rewrites"]]
    assert families and all(f == "fused_block" for f in families), reports
    flat = {k: torch.cat([p.detach().double().flatten() for p in m.parameters()]) for k, m in runs.items()}
    l64 = torch.tensor(losses["f64"])
    e_ours, e_torch = rel_err(torch.tensor(losses["ours"]), l64), rel_err(torch.tensor(losses["eager"]), l64)
    assert within(e_ours, e_torch), (losses, e_ours, e_torch)
    e_ours, e_torch = rel_err(flat["ours"], flat["f64"]), rel_err(flat["eager"], flat["f64"])
    assert within(e_ours, e_torch), ("parameters", e_ours, e_torch)
