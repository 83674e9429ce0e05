"""The alternating CUDA kernels against the float64 reference, within 2x PyTorch's own error.

For every case: fresh random inputs, outputs poisoned with NaN before each kernel run, and for each
of float32, bfloat16, float16

    err(ours)  = rel_err(kernel result,                             float64 reference)
    err(torch) = rel_err(reference computed natively in that dtype, float64 reference)

for h, sT and the gradients of gx, R, b, s0 (through the core op's autograd, i.e. our backward
kernel), each required to satisfy err(ours) <= 2 err(torch). Two rules of conftest.float64_failures
keep that comparison about rounding: shapes with fewer than 64 elements per state pool 4 draws, and
elman_relu in float32 compares each side's gradients with the float64 subgradient at its own ReLU
kinks, failing any kink flip not within rounding (one flip moves a T=1024 gradient by 1e-4).

Both paths of the family: the step kernel (STEP_KERNEL=1, one launch per step; also what a plan
without STEP_KERNEL runs) on the whole matrix, the cuBLAS path (STEP_KERNEL=0) on part of it.

Matrix (step kernel): every cell x {1x768, 12x64, 3x5, 7x33} x B in {1, 3, 16} x T in {1, 17} x
both directions; T = 1024 on every cell with (1x768, B=16, forward), (12x64, B=16, reverse),
(7x33, B=3, forward), (3x5, B=1, reverse). FLASHRNN_GPU_LONG=full runs T = 1024 on the whole
matrix. cuBLAS path: every cell x shape x direction at B=3, T=17, and lstm (1x768, B=16, T=1024, fwd).
B = 3 and 16 take the two batch tiles of the step kernels (forward 4 and 16, backward 4 and 8 rows;
float32: 4 and 8, backward 4); 3x5 and 7x33 their unaligned copies, 1x768 and 12x64 their 16-byte
cp.async copies. The backward's launch overrides (multi-round copies, one warp per block) run too.
"""

from __future__ import annotations

import itertools
import os
import zlib

import pytest
import torch

from flashrnn_compile import reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.kernels import alternating
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err

from .conftest import NAMES, float64_failures, inputs_in, make_inputs, run_with_grads, saved_states

PLAN = runtime.plan_json("alternating")  # no STEP_KERNEL: the step kernel
PLANS = {"step": runtime.plan_json("alternating", {"STEP_KERNEL": 1}),
         "cublas": runtime.plan_json("alternating", {"STEP_KERNEL": 0})}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((1, 768), (12, 64), (3, 5), (7, 33))  # (NH, DH)


_LONG = {(1, 768, 16, False), (12, 64, 16, True), (7, 33, 3, False), (3, 5, 1, True)}


def _cases():
    full = os.environ.get("FLASHRNN_GPU_LONG") == "full"
    for cell, (NH, DH), B, reverse in itertools.product(CELLS, SHAPES, (1, 3, 16), (False, True)):
        for T in (1, 17):
            yield cell, NH, DH, B, T, reverse
        if full or (NH, DH, B, reverse) in _LONG:
            yield cell, NH, DH, B, 1024, reverse


def _cublas_cases():
    for cell, (NH, DH), reverse in itertools.product(CELLS, SHAPES, (False, True)):
        yield cell, NH, DH, 3, 17, reverse
    yield "lstm", 1, 768, 16, 1024, False


CASES = [("step",) + c for c in _cases()] + [("cublas",) + c for c in _cublas_cases()]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(alternating, "POISON", True)


def test_kernels_are_built_and_used():
    assert alternating.unavailable(torch.device("cuda")) is None
    assert runtime.implementation(PLAN, torch.device("cuda")).family == "alternating"


@pytest.mark.parametrize("path,cell,NH,DH,B,T,reverse", CASES,
                         ids=[f"{p}-{c}-{nh}x{dh}-B{b}-T{t}-{'rev' if r else 'fwd'}" for p, c, nh, dh, b, t, r in CASES])
def test_matches_float64_reference(path, cell, NH, DH, B, T, reverse):
    seed = zlib.crc32(f"{cell}-{NH}-{DH}-{B}-{T}-{reverse}".encode())
    failures = float64_failures(cell, NH, DH, B, T, reverse, seed, DTYPES, lambda dtype: PLANS[path])
    assert not failures, "; ".join(failures)


# The backward step kernel's launch overrides (csrc/alternating/step.cuh configure_wide): one phase
# per round (FLASHRNN_STEP_ALL_IN=0: many rounds of one 128-element phase per warp, 16-byte and
# unaligned copies), one warp per block (its whole K range in one round of more phases than
# cp.async groups: 2304 = 18 phases at 1x768 GRU). Forward settings change with them; results must not.
_OVERRIDES = [
    ({"FLASHRNN_STEP_ALL_IN": "0"}, ("lstm", 1, 768, 16, 17, False)),
    ({"FLASHRNN_STEP_ALL_IN": "0"}, ("slstm", 7, 33, 3, 17, True)),
    ({"FLASHRNN_STEP_KW": "1"}, ("gru", 1, 768, 3, 5, False)),
    ({"FLASHRNN_STEP_KW": "1", "FLASHRNN_STEP_ALL_IN": "0"}, ("elman_tanh", 3, 5, 1, 17, True)),
]


@pytest.mark.parametrize("env,case", _OVERRIDES, ids=[f"{'+'.join(e)}-{c[0]}" for e, c in _OVERRIDES])
def test_step_kernel_launch_overrides(monkeypatch, env, case):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cell, NH, DH, B, T, reverse = case
    seed = zlib.crc32(f"override-{cell}-{NH}-{DH}".encode())
    failures = float64_failures(cell, NH, DH, B, T, reverse, seed, DTYPES, lambda dtype: PLANS["step"])
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("path", sorted(PLANS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_save_false_matches_save_true(cell, path):
    gx, R, b, s0 = inputs_in(torch.float32, cell, 9, 3, 2, 16, seed=7)
    si, rh = saved_states(gx, R, b, s0, cell, PLANS[path])
    _, _, si_ref, rh_ref = reference.forward(gx.double(), R.double(), b.double(), s0.double(), cell, False, True)
    assert rel_err(si, si_ref) < 1e-5 and rel_err(rh, rh_ref) < 1e-5


def test_step_kernel_agrees_with_cublas_path_in_float32():
    """The two paths compute the same recurrence (float32, 1x768 B=16: 16-byte copies, 3 warps)."""
    gx, R, b, s0, dh, dsT = make_inputs("lstm", 6, 16, 1, 768, seed=9)
    low = [t.float() for t in (gx, R, b, s0)]
    step = run_with_grads(lambda *a: recurrence(*a, cell="lstm", plan=PLANS["step"]), low, dh.float(), dsT.float())
    cublas = run_with_grads(lambda *a: recurrence(*a, cell="lstm", plan=PLANS["cublas"]), low, dh.float(), dsT.float())
    for name, x, y in zip(NAMES, step, cublas):
        assert rel_err(x, y) < 1e-5, name


def test_step_kernel_param_is_checked():
    gx, R, b, s0 = inputs_in(torch.float32, "gru", 2, 1, 1, 4, seed=2)
    with pytest.raises(ValueError, match="STEP_KERNEL"):
        recurrence(gx, R, b, s0, cell="gru", plan=runtime.plan_json("alternating", {"STEP_KERNEL": 2}))


def test_noncontiguous_inputs():
    gx, R, b, s0, _, _ = make_inputs("gru", 5, 4, 2, 8, seed=3)
    gx = gx.float().transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, ...] view, not contiguous
    assert not gx.is_contiguous()
    R, b, s0 = R.float(), b.float(), s0.float()
    h, sT = recurrence(gx, R, b, s0, cell="gru", plan=PLAN)
    h_ref, sT_ref = recurrence(gx, R, b, s0, cell="gru")
    assert rel_err(h, h_ref) < 1e-5 and rel_err(sT, sT_ref) < 1e-5


def test_float64_runs_the_reference():
    gx, R, b, s0, _, _ = make_inputs("lstm", 4, 2, 1, 8, seed=5)
    with pytest.warns(RuntimeWarning, match="float64"):
        alternating._WARNED_F64 = False
        h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=PLAN)
    h_ref, sT_ref = recurrence(gx, R, b, s0, cell="lstm")
    assert torch.equal(h, h_ref) and torch.equal(sT, sT_ref)


def test_empty_sequence():
    gx, R, b, s0 = (t.requires_grad_(True) for t in inputs_in(torch.float32, "lstm", 0, 2, 1, 8, seed=1))
    h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=PLAN)
    assert h.shape == (0, 2, 1, 8) and torch.equal(sT, s0)
    (sT.sum()).backward()
    assert torch.equal(s0.grad, torch.ones_like(s0)) and torch.count_nonzero(R.grad) == 0


def test_bad_functor_is_a_clear_error():
    gx, R, b, s0 = inputs_in(torch.float32, "lstm", 2, 1, 1, 4, seed=2)
    h = gx.new_empty(2, 1, 1, 4)
    with pytest.raises(RuntimeError, match="functor"):
        torch.ops.flashrnn_alternating.forward(gx, R, b, s0, "NoSuchCell", False, h, s0.clone(),
                                               gx.new_empty(0), gx.new_empty(0))

