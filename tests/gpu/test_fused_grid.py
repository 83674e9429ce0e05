"""The fused_grid kernels (sm_80+), forward and backward, against the float64 reference, within 2x
PyTorch's error.

As tests/gpu/test_fused_cluster.py: fresh inputs exact in every dtype, outputs (and the backward's
drhb exchange buffer) NaN-poisoned before each kernel run, and for bfloat16 and float16 err(ours)
<= 2 err(PyTorch natively in that dtype) against float64 for h, sT and the gradients of gx, R, b,
s0. The gradients come from this family's own backward kernel (fused_grid.cuh backward_kernel) run
from the states our forward saved. A fallback (any RuntimeWarning: the alternating family or the
reference running instead) fails a case.

Matrix: PLANNED (the planner's fused_grid choice for this GPU: dense 1x1024 LSTM, GRU and sLSTM at
B16, elman 1x1024 at B3, 2x512 LSTM, 1x768 LSTM) at T in {1, 17}, both directions, plus LSTM 1x1024
B16 T64 (and T1024 forward unless FLASHRNN_GPU_LONG=0); EXPLICIT small tilings of every cell (1x48
split over 3 blocks, 5 heads of 48, 2 to 16 blocks per head, K slices 1 to 4, several batch tiles
with a partial last one, R partly in shared memory or all in registers) at T in {1, 17}, both
directions.

    python -m tests.gpu.test_fused_grid      a small case for compute-sanitizer memcheck / racecheck
"""

from __future__ import annotations

import itertools
import os
import warnings

import pytest
import torch

from flashrnn_compile import planner, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.kernels import fused_grid
from flashrnn_compile.ops import recurrence

from .conftest import (assert_matches_float64, assert_tiling_matches_float64, case_id, family_plan, inputs_in, make_inputs,
                       saved_states, tiling_case_ids)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
    reason="fused_grid needs a CUDA device of compute capability 8.0 or newer")

DTYPES = (torch.bfloat16, torch.float16)
LONG = os.environ.get("FLASHRNN_GPU_LONG") != "0"

# (cell, NH, DH, B) the planner gives to fused_grid on an H100 / H200 (families=("fused_grid",))
# (elman_relu is refused: fused_grid.REFUSED_CELLS; test_refused_cell_runs_the_alternating_family)
CELLS_RUN = sorted(set(CELLS) - set(fused_grid.REFUSED_CELLS))
PLANNED = [("lstm", 1, 1024, 16), ("gru", 1, 1024, 16), ("slstm", 1, 1024, 16), ("elman_tanh", 1, 1024, 3),
           ("lstm", 2, 512, 16), ("lstm", 1, 768, 16)]
PLANNED_CASES = [(c, nh, dh, b, T, r) for c, nh, dh, b in PLANNED for T in (1, 17) for r in (False, True)]
PLANNED_CASES.append(("lstm", 1, 1024, 16, 64, False))
PLANNED_CASES.append(("lstm", 1, 1024, 16, 64, True))

# (NH, DH, B, params, what the layout exercises), run for every cell
EXPLICIT = [
    (1, 48, 3, {"GRID_SPLIT": 3, "WARPS": 1, "BATCH_TILE": 8, "R_REG_TILES": 4},
     "1x48 split over 3 blocks of 16 units, one warp, partial batch tile, R partly in shared memory"),
    (5, 48, 3, {"GRID_SPLIT": 3, "WARPS": 3, "BATCH_TILE": 8, "R_REG_TILES": 2},
     "5 heads of 48 (15 blocks), 3 K slices of one k-tile, R partly in shared memory"),
    (2, 64, 19, {"GRID_SPLIT": 2, "WARPS": 4, "BATCH_TILE": 16, "R_REG_TILES": 4},
     "2 blocks per head, 2 unit groups x 2 K slices, 2 batch tiles (the second partial)"),
    (1, 256, 9, {"GRID_SPLIT": 16, "WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 2},
     "16 blocks per head, one unit group x 4 K slices, 2 batch tiles"),
    (1, 128, 5, {"GRID_SPLIT": 4, "WARPS": 2, "BATCH_TILE": 8, "R_REG_TILES": 64},
     "4 blocks per head, 2 unit groups, all of R in registers"),
]
EXPLICIT_CASES = [(c, nh, dh, b, prm, T, r) for c in CELLS_RUN for nh, dh, b, prm, _ in EXPLICIT
                  for T in (1, 17) for r in (False, True)]
# the knob WAIT=1 (fused_grid.cuh FRNN_GRID_WAIT: each thread acquires its own h chunks' source
# flags, no block barrier; the default is 0) on the tilings with 3 and 16 blocks per head
WAIT1_CASES = [(c, nh, dh, b, {**prm, "WAIT": 1}, 17, r) for c in ("lstm", "slstm") for nh, dh, b, prm, _ in
               (EXPLICIT[1], EXPLICIT[3]) for r in (False, True)]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    from flashrnn_compile.kernels import alternating

    monkeypatch.setattr(fused_grid, "POISON", True)
    monkeypatch.setattr(alternating, "POISON", True)


def test_kernels_are_available_and_the_planner_uses_them_with_the_env(monkeypatch):
    assert fused_grid.unavailable(torch.device("cuda")) is None
    chosen = planner.plan("lstm", 16, 1, 1024, torch.bfloat16)
    assert chosen.family == "fused_grid", chosen.reason
    plan = runtime.plan_json("fused_grid", chosen.params)
    assert runtime.implementation(plan, torch.device("cuda")).family == "fused_grid"
    from flashrnn_compile import context
    from flashrnn_compile.context import BackendOptions, PassContext

    monkeypatch.setenv(fused_grid.OFFER_ENV, "0")
    off = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 1024, torch.bfloat16, "cuda")
    assert off.family != "fused_grid"
    monkeypatch.delenv(fused_grid.OFFER_ENV, raising=False)
    on = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 1024, torch.bfloat16, "cuda")
    assert on.family == "fused_grid", on.reason


@pytest.mark.parametrize("cell,NH,DH,B,T,reverse", PLANNED_CASES,
                         ids=[case_id(*case) for case in PLANNED_CASES])
def test_planned_matches_float64_reference(cell, NH, DH, B, T, reverse):
    assert_matches_float64("grid", cell, NH, DH, B, T, reverse, DTYPES,
                           lambda dtype: family_plan("fused_grid", cell, B, NH, DH, dtype))


@pytest.mark.parametrize("cell,NH,DH,B,params,T,reverse", EXPLICIT_CASES,
                         ids=tiling_case_ids(EXPLICIT_CASES, {"GRID_SPLIT": "GS", "WARPS": "W", "BATCH_TILE": "BT"}))
def test_explicit_tilings_match_float64_reference(cell, NH, DH, B, params, T, reverse):
    assert_tiling_matches_float64("fused_grid", params, "grid-explicit", cell, NH, DH, B, T, reverse, DTYPES)


@pytest.mark.parametrize("cell,NH,DH,B,params,T,reverse", WAIT1_CASES,
                         ids=tiling_case_ids(WAIT1_CASES, {"GRID_SPLIT": "GS", "WARPS": "W", "WAIT": "WAIT"}))
def test_wait1_knob_matches_float64_reference(cell, NH, DH, B, params, T, reverse):
    assert_tiling_matches_float64("fused_grid", params, "grid-wait1", cell, NH, DH, B, T, reverse, DTYPES)


@pytest.mark.skipif(not LONG, reason="FLASHRNN_GPU_LONG=0")
def test_planned_dense_1024_forward_over_1024_steps():
    """h and sT of the planner's tiling for LSTM 1x1024 B16 over T=1024 steps within 2x PyTorch's error."""
    from flashrnn_compile import reference
    from flashrnn_compile.testing import rel_err, within

    gx, R, b, s0, _, _ = make_inputs("lstm", 1024, 16, 1, 1024, seed=1024)
    h_ref, sT_ref, _, _ = reference.forward(gx, R, b, s0, "lstm", False, False)
    plan = family_plan("fused_grid", "lstm", 16, 1, 1024, torch.bfloat16)
    low = [t.bfloat16() for t in (gx, R, b, s0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        h, sT = recurrence(*low, cell="lstm", plan=plan)
    h_t, sT_t, _, _ = reference.forward(*low, "lstm", False, False, compute_dtype=torch.bfloat16)
    for name, o, n, r in (("h", h, h_t, h_ref), ("sT", sT, sT_t, sT_ref)):
        assert within(rel_err(o, r), rel_err(n, r)), (name, rel_err(o, r), rel_err(n, r))


@pytest.mark.parametrize("cell", CELLS_RUN)
def test_save_false_matches_save_true(cell):
    """The inference forward (no states kept) gives the same h and sT, bit for bit."""
    gx, R, b, s0 = inputs_in(torch.bfloat16, cell, 9, 5, 1, 64, seed=11)
    plan = runtime.plan_json("fused_grid", EXPLICIT[2][3])
    si, rh = saved_states(gx, R, b, s0, cell, plan)
    assert torch.isfinite(si).all() and torch.isfinite(rh).all()


@pytest.mark.parametrize("cell", CELLS_RUN)
def test_forward_is_deterministic(cell):
    """Two forward runs give the same h, sT, states_in and rhb bit for bit (fixed-order partial sums,
    no atomics), every poisoned element written."""
    gx, R, b, s0 = inputs_in(torch.bfloat16, cell, 17, 9, 1, 256, seed=21)
    plan = runtime.plan_json("fused_grid", EXPLICIT[3][3])
    one = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, True)
    two = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, True)
    for name, x, y in zip(("h", "sT", "states_in", "rhb"), one, two):
        assert torch.isfinite(x).all() and torch.equal(x, y), name


def test_empty_sequence_and_noncontiguous_input():
    gx, R, b, s0 = inputs_in(torch.float16, "lstm", 0, 3, 1, 64, seed=1)
    plan = runtime.plan_json("fused_grid", EXPLICIT[2][3])
    h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=plan)
    assert h.shape == (0, 3, 1, 64) and torch.equal(sT, s0)
    gx, R, b, s0, _, _ = make_inputs("gru", 6, 3, 1, 64, seed=3)
    gx = gx.half().transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, ...] view, not contiguous
    R, b = R.half(), b.half()
    s0 = s0.half().transpose(1, 2).contiguous().transpose(1, 2)  # [S, B, NH, DH] view, not contiguous
    h, sT = recurrence(gx, R, b, s0, cell="gru", plan=plan)
    h_c, sT_c = recurrence(gx.contiguous(), R, b, s0.contiguous(), cell="gru", plan=plan)
    assert torch.equal(h, h_c) and torch.equal(sT, sT_c)


def test_a_grid_larger_than_the_device_runs_the_alternating_family_with_a_warning():
    """More blocks than the device holds at once (a cooperative grid must be resident): the
    alternating family runs instead, one warning naming the reason; the result is still right."""
    from flashrnn_compile import reference
    from flashrnn_compile.testing import rel_err

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    prm = {"GRID_SPLIT": 16, "WARPS": 1, "BATCH_TILE": 8, "R_REG_TILES": 4}
    B = 8 * (64 * sms // 16 + 1)  # > 64 blocks per SM in all: more than any device holds
    gx, R, b, s0, _, _ = make_inputs("elman_tanh", 3, B, 1, 256, seed=4)
    low = [t.half() for t in (gx, R, b, s0)]
    with pytest.warns(RuntimeWarning, match="resident"):
        h, sT = recurrence(*low, cell="elman_tanh", plan=runtime.plan_json("fused_grid", prm))
    h_ref, _, _, _ = reference.forward(gx, R, b, s0, "elman_tanh", False, False)
    assert rel_err(h, h_ref) < 0.02


def test_refused_cell_runs_the_alternating_family_with_a_warning():
    """elman_relu (fused_grid.REFUSED_CELLS) runs the alternating family, one warning naming the
    reason, and its gradients are right (within 2x PyTorch's error, as everywhere)."""
    from flashrnn_compile.kernels import alternating

    with pytest.warns(RuntimeWarning, match="elman_relu"):
        fused_grid._FAMILY._warned.clear()
        fused_grid.forward(*[t.bfloat16().cuda() for t in make_inputs("elman_relu", 3, 3, 1, 48, seed=2)[:4]],
                           "elman_relu", False, EXPLICIT[0][3], False)
    calls = []
    real = alternating.forward
    alternating.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert_tiling_matches_float64("fused_grid", EXPLICIT[0][3], "grid-refused", "elman_relu", 1, 48, 3, 17,
                                          False, DTYPES)
    finally:
        alternating.forward = real
    assert calls, "the alternating forward did not run"


def test_dense_2048_at_batch_16_is_refused_by_the_planner_with_the_reason():
    p = planner.plan("lstm", 16, 1, 2048, torch.bfloat16, families=("fused_grid",))
    assert p.family != "fused_grid"
    assert "fused_grid: impossible" in p.reason, p.reason


def test_the_own_backward_runs_not_the_alternating_one(monkeypatch):
    """The gradients of a planned case come from the grid's own kernel: the alternating backward is
    never called (it would raise here), and they are within 2x PyTorch's error. With
    FLASHRNN_GRID_BWD=0 the alternating backward runs instead."""
    from flashrnn_compile.kernels import alternating

    real = alternating.backward

    def refuse(*args, **kwargs):
        raise AssertionError("the alternating backward ran")

    monkeypatch.setattr(alternating, "backward", refuse)
    assert fused_grid.grid_backward_enabled()
    assert_matches_float64("grid-own-bwd", "lstm", 1, 1024, 16, 17, False, DTYPES,
                           lambda dtype: family_plan("fused_grid", "lstm", 16, 1, 1024, dtype))
    calls = []
    monkeypatch.setattr(alternating, "backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(fused_grid.BWD_ENV, "0")
    assert_matches_float64("grid-alt-bwd", "gru", 1, 1024, 16, 5, True, DTYPES,
                           lambda dtype: family_plan("fused_grid", "gru", 16, 1, 1024, dtype))
    assert calls, "the alternating backward did not run with FLASHRNN_GRID_BWD=0"


@pytest.mark.parametrize("cell", CELLS_RUN)
def test_backward_is_deterministic(cell):
    """Two backward runs give the same dgx, dR, db, ds0 bit for bit (each block reduces its own
    units over all of drhb in a fixed order: no atomics, no cross-block partial sums)."""
    gx, R, b, s0 = inputs_in(torch.bfloat16, cell, 17, 9, 1, 256, seed=23)
    plan = runtime.plan_json("fused_grid", EXPLICIT[3][3])
    _, _, si, rh = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, True, plan, True)
    dh = torch.randn(17, 9, 1, 256, device="cuda", dtype=torch.bfloat16)  # [T, B, NH, DH]
    dsT = torch.randn_like(s0)  # [S, B, NH, DH]
    one = torch.ops.flashrnn.recurrence_bwd(dh, dsT, gx, R, si, rh, cell, True, plan)
    two = torch.ops.flashrnn.recurrence_bwd(dh, dsT, gx, R, si, rh, cell, True, plan)
    for name, x, y in zip(("dgx", "dR", "db", "ds0"), one, two):
        assert torch.isfinite(x).all() and torch.equal(x, y), name


def sanitizer_case() -> None:
    """A small forward of every cell on the explicit tilings (1x48 over 3 blocks, 16 blocks with 2
    batch tiles, the same with the WAIT=1 knob), both directions, T=5, states kept, for `compute-sanitizer --tool memcheck |
    racecheck`; raises on an h further than 0.05 (relative) from the float64 reference."""
    from flashrnn_compile import reference
    from flashrnn_compile.testing import rel_err

    wait1 = EXPLICIT[3][:3] + ({**EXPLICIT[3][3], "WAIT": 1}, "the WAIT=1 knob")
    for cell, (NH, DH, B, prm, _), reverse in itertools.product(CELLS_RUN, (EXPLICIT[0], EXPLICIT[3], wait1),
                                                                (False, True)):
        gx, R, b, s0, _, _ = make_inputs(cell, 5, B, NH, DH, seed=5)
        low = [t.bfloat16() for t in (gx, R, b, s0)]
        h, sT, si, rh = torch.ops.flashrnn.recurrence_fwd(*low, cell, reverse, runtime.plan_json("fused_grid", prm), True)
        h_ref, _, _, _ = reference.forward(gx, R, b, s0, cell, reverse, False)
        err = rel_err(h, h_ref)
        assert err < 0.05 and torch.isfinite(si).all() and torch.isfinite(rh).all(), (cell, prm, reverse, err)
    torch.cuda.synchronize()
    print("sanitizer case: ok")


def sanitizer_case_backward() -> None:
    """A small forward + backward of every cell on the explicit tilings (1x48 over 3 blocks, 16
    blocks with 2 batch tiles), both directions, T=5, for `compute-sanitizer`; raises on a dgx
    further than 0.05 (relative) from the float64 reference's."""
    from flashrnn_compile import reference
    from flashrnn_compile.testing import rel_err

    for cell, (NH, DH, B, prm, _), reverse in itertools.product(CELLS_RUN, (EXPLICIT[0], EXPLICIT[3]), (False, True)):
        gx, R, b, s0, dh, dsT = make_inputs(cell, 5, B, NH, DH, seed=6)  # dh [T, B, NH, DH], dsT [S, B, NH, DH]
        plan = runtime.plan_json("fused_grid", prm)
        low = [t.bfloat16() for t in (gx, R, b, s0)]
        _, _, si, rh = torch.ops.flashrnn.recurrence_fwd(*low, cell, reverse, plan, True)
        dgx = torch.ops.flashrnn.recurrence_bwd(dh.bfloat16(), dsT.bfloat16(), low[0], low[1], si, rh, cell, reverse, plan)[0]
        _, _, si64, rh64 = reference.forward(gx, R, b, s0, cell, reverse, True)
        dgx_ref = reference.backward(dh, dsT, gx, R, si64, rh64, cell, reverse)[0]
        err = rel_err(dgx, dgx_ref)
        assert err < 0.05, (cell, prm, reverse, err)
    torch.cuda.synchronize()
    print("sanitizer case (backward): ok")


if __name__ == "__main__":  # python -m tests.gpu.test_fused_grid [bwd] (from the repository root)
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback is not the kernel under test
        sanitizer_case_backward() if sys.argv[1:] == ["bwd"] else sanitizer_case()
