"""recurrent_layer's fused_block path (its backward is one library call, csrc/fused/layer.cuh)
against the float64 reference.

For every cell, bfloat16 and float16, both directions and chunk counts from 1 to 16 (including
counts that do not divide T, odd batch and input sizes): h, sT and
the gradients of x, W, b_in, R, b and s0, each within 2x the error of PyTorch computing the same
layer natively in that dtype (F.linear then the reference recurrence in the dtype), with the
outputs NaN-poisoned before every launch. Each test asserts which path ran (layer.STATS): the
one-call backward for tilings whose kernel accumulates dR (DR_TILES), F.linear then recurrence()
for the others (6x128's DR_GEMM tiling), so a silent fallback fails.

W has one nonzero per row, a power of two, and b_in is zero, so gx = x W^T + b_in is exact in
every dtype: as in tests/gpu/test_fused_block.py, the recurrences start from the same gx, and cells
with a kink on the gates' path (elman_relu's ReLU, slstm's stabiliser max) are not swamped by
flips at the kink that a rounded gx moves (session 7: with a dense bfloat16 W, one draw's gradient
error swung ~20x either way for PyTorch's own bfloat16 as for ours; benchmarks/probe_layer_errors.py).
The GEMMs still run dense: dx = dgx W and dW = dgx^T x do not know W is sparse.
"""

from __future__ import annotations

import itertools
import types
import zlib

import pytest
import torch
import torch.nn.functional as F

from flashrnn_compile import layer, reference, runtime
from flashrnn_compile.cells import CELLS, get_cell
from flashrnn_compile.kernels import fused_block
from flashrnn_compile.testing import within

from .conftest import SMALL_DRAWS, SMALL_ELEMENTS, exact, family_plan, make_inputs

DTYPES = (torch.bfloat16, torch.float16)
NAMES = ("h", "sT", "dx", "dW", "db_in", "dR", "db", "ds0")
# (NH, DH, B, I, T, chunks)
SHAPES = [(12, 64, 16, 768, 1024, 4), (5, 48, 3, 37, 17, 1), (5, 48, 3, 37, 17, 3), (2, 16, 1, 8, 17, 9),
          (6, 128, 16, 100, 64, 5), (24, 32, 3, 19, 40, 2)]
CASES = [(c, *s, r) for c, s, r in itertools.product(sorted(CELLS), SHAPES, (False, True))
         if s[4] < 1024 or (c == "lstm" and not r) or (c == "gru" and r)]


def _ids(cases):
    return [f"{c}-{nh}x{dh}-B{b}-I{i}-T{t}-K{k}-{'rev' if r else 'fwd'}" for c, nh, dh, b, i, t, k, r in cases]


def _layer_inputs(cell, T, B, NH, DH, I, seed, with_b_in=False):
    """float64 inputs exact in every dtype, with x W^T + b_in exact too (see the module): x, W, b_in,
    R, b, s0, dh, dsT. b_in is zero unless with_b_in (then exact values, whose sum with x W^T
    F.linear may round: the one-call path adds b_in in float32 inside the kernels)."""
    G = get_cell(cell).num_gates
    _, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed)
    g = torch.Generator().manual_seed(seed ^ 0x5A5A)
    x = exact(torch.randn(T, B, I, generator=g, dtype=torch.float64))
    W = torch.zeros(NH * G * DH, I, dtype=torch.float64)
    cols = torch.randint(0, I, (NH * G * DH,), generator=g)
    scale = torch.tensor([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], dtype=torch.float64)
    W[torch.arange(NH * G * DH), cols] = scale[torch.randint(0, 6, (NH * G * DH,), generator=g)]
    b_in = torch.zeros(NH * G * DH, dtype=torch.float64)
    if with_b_in:
        b_in = exact(0.5 * torch.randn(NH * G * DH, generator=g, dtype=torch.float64))
    return tuple(t.cuda() for t in (x, W, b_in)) + (R, b, s0), dh, dsT


def _dr_tiles(cell, T, B, NH, DH, dtype, plan) -> bool:
    """Whether the plan's fused_block library accumulates dR in the kernel (the one-call backward)."""
    from flashrnn_compile import runtime

    G = get_cell(cell).num_gates
    kern, why = fused_block._resolve(cell, torch.empty(1, B, NH, G, DH, dtype=dtype, device="cuda"),
                                     runtime.parse_plan(plan).params)
    assert kern is not None, why
    return kern.dr_in_kernel == fused_block.DR_TILES


def _run(fn, inputs, dh, dsT):
    """(h, sT) and the gradients of all six inputs under loss = <h, dh> + <sT, dsT>."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, sT = fn(*inputs)
    loss = (h.to(dh.dtype) * dh).sum() + (sT.to(dsT.dtype) * dsT).sum()
    return (h.detach(), sT.detach()) + tuple(torch.autograd.grad(loss, inputs))


def _linear_then_reference(cell, reverse, dtype):
    def fn(x, W, b_in, R, b, s0):
        T, B, _ = x.shape
        gx = F.linear(x, W, b_in).view(T, B, R.shape[0], -1, R.shape[2])
        return reference.forward(gx, R, b, s0, cell, reverse, False, compute_dtype=dtype)[:2]
    return fn


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse", CASES,
                         ids=_ids(CASES))
def test_layer_matches_float64(cell, NH, DH, B, I, T, chunks, reverse, monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "DR_OUT", False)  # the plan's own library (DR_TILES or DR_GEMM)
    _check_layer(cell, NH, DH, B, I, T, chunks, reverse, _tiles_path(cell, T, B, NH, DH))


# the one-call backward through FRNN_DR_OUT libraries (layer.DR_OUT, the default): cells
# whose d(rhb) is d(gx), the chunk holding s0's step first or last, K from 1 to 9; 6x128 (where the
# plan's own library of lstm and slstm writes drhb: F.linear then recurrence() instead) included
DR_OUT_CASES = [(c, *s, r) for c, s, r in itertools.product(("lstm", "elman_tanh", "slstm"), SHAPES[1:], (False, True))]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse", DR_OUT_CASES,
                         ids=_ids(DR_OUT_CASES))
def test_layer_dr_out_matches_float64(cell, NH, DH, B, I, T, chunks, reverse, monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "DR_OUT", True)
    monkeypatch.setattr(layer, "RECOMPUTE", False)
    _check_layer(cell, NH, DH, B, I, T, chunks, reverse, _tiles_path(cell, T, B, NH, DH))


def _tiles_path(cell, T, B, NH, DH, one_calls=None):
    """expected_path for _check_layer: the one-call path where the plan's own library accumulates dR
    (DR_TILES: its DR_OUT / lean-save library then runs), else F.linear then recurrence(); each
    one-call expectation appended to one_calls."""
    def path(dtype, plan):
        one = _dr_tiles(cell, T, B, NH, DH, dtype, plan)
        if one_calls is not None:
            one_calls.append(one)
        return "one_call" if one else "linear_then_recurrence"
    return path


# the lean save (layer.RECOMPUTE: FRNN_BWD_RECOMPUTE libraries, the backward recomputes R h + b):
# the cells whose h is one piece; slstm (two pieces) keeps the full save (the negative case)
RECOMPUTE_CASES = [(c, *s, r) for c, s, r in itertools.product(("lstm", "elman_tanh"), SHAPES[1:], (False, True))]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse", RECOMPUTE_CASES, ids=_ids(RECOMPUTE_CASES))
def test_layer_recompute_matches_float64(cell, NH, DH, B, I, T, chunks, reverse, monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "DR_OUT", True)
    monkeypatch.setattr(layer, "RECOMPUTE", True)
    before, one_calls = layer.STATS["recompute"], []
    _check_layer(cell, NH, DH, B, I, T, chunks, reverse, _tiles_path(cell, T, B, NH, DH, one_calls))
    assert layer.STATS["recompute"] == before + sum(one_calls), "the lean save did not run where it applies"


# a nonzero b_in (added in float32 inside the kernels on the one-call path): every cell, each
# library kind (DR_TILES, DR_OUT, the lean save), both directions
B_IN_CASES = [(c, 5, 48, 3, 37, 17, 3, r, mode) for c in sorted(CELLS) for r in (False, True)
              for mode in ("tiles", "dr_out", "recompute")
              if mode == "tiles" or (get_cell(c).rhb_grad_is_gx and (mode == "dr_out" or c not in fused_block.JUMP_CELLS))]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse,mode", B_IN_CASES,
                         ids=[f"{i}-{m}" for i, m in zip(_ids([c[:8] for c in B_IN_CASES]), [c[8] for c in B_IN_CASES])])
def test_layer_with_input_bias_matches_float64(cell, NH, DH, B, I, T, chunks, reverse, mode, monkeypatch):
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "DR_OUT", mode != "tiles")
    monkeypatch.setattr(layer, "RECOMPUTE", mode == "recompute")
    _check_layer(cell, NH, DH, B, I, T, chunks, reverse, _tiles_path(cell, T, B, NH, DH), with_b_in=True)


FWD_FLOAT64_CASES = [("lstm", 12, 64, 16, 96, 300, 4, False), ("lstm", 5, 48, 3, 37, 17, 3, True)]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse", FWD_FLOAT64_CASES, ids=_ids(FWD_FLOAT64_CASES))
@pytest.mark.parametrize("fwd_chunks", [1, 3])
def test_layer_forward_chunks_match_float64(fwd_chunks, cell, NH, DH, B, I, T, chunks, reverse, monkeypatch):
    """The one-call forward in one and in 3 time chunks (layer.FWD_CHUNKS; the default takes 3 at
    T >= 768) within 2x torch's error for h, sT and every gradient, with every output poisoned first."""
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "FWD_CHUNKS", fwd_chunks)
    _check_layer(cell, NH, DH, B, I, T, chunks, reverse, _tiles_path(cell, T, B, NH, DH), with_b_in=True)


# (cell, NH, DH, B, I, T, forward chunks, reverse): T = 2K - 1 (chunk 0 one step), odd sizes
FWD_CHUNK_CASES = [("lstm", 12, 64, 16, 96, 300, 4, False), ("lstm", 5, 48, 3, 40, 7, 4, True),
                   ("gru", 3, 32, 5, 24, 33, 5, False), ("slstm", 2, 16, 3, 8, 9, 2, True),
                   ("elman_tanh", 2, 16, 1, 8, 31, 16, False)]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,K,reverse", FWD_CHUNK_CASES, ids=_ids(FWD_CHUNK_CASES))
@pytest.mark.parametrize("save", [True, False])
def test_forward_chunks_equal_one_chunk_bit_for_bit(cell, NH, DH, B, I, T, K, reverse, save, monkeypatch):
    """fused_block.layer_forward in K time chunks (the GEMM of a chunk beside the previous chunk's
    recurrence, the states passed on in float) gives h, sT, gx and the save of one chunk to the bit,
    with every output poisoned first; the library saves the lean or the full states alike."""
    monkeypatch.setattr(fused_block, "POISON", True)
    inputs, _, _ = _layer_inputs(cell, T, B, NH, DH, I, 23, with_b_in=True)
    for dtype in DTYPES:
        x, W, b_in, R, b, s0 = (t.to(dtype).detach() for t in inputs)
        plan = family_plan("fused_block", cell, B, NH, DH, dtype)
        kern = layer._fused_kernel(x, W, b_in, R, b, s0, cell, plan)
        if kern is None:  # a tiling off the one-call path (GRU's DR_GEMM): its own library, the full save
            like_gx = types.SimpleNamespace(shape=(T, B, NH, get_cell(cell).num_gates, DH), dtype=dtype, device=x.device)
            kern = fused_block._resolve(cell, like_gx, runtime.parse_plan(plan).params)[0]
            assert kern is not None and layer._blas_ready(kern.lib) is None, (cell, dtype)
        outs = [fused_block.layer_forward(kern, *layer._laid_out(x, W, b_in, R, b, s0), reverse, save=save,
                                          chunks=k) for k in (1, K)]
        for name, a, c in zip(("h", "sT", "gx", "states_in", "rhb"), *outs):
            assert (a is None) == (c is None), name
            if a is not None:
                assert torch.isfinite(a).all() and torch.equal(a, c), (dtype, name, (a.double() - c.double()).abs().max())
    with pytest.raises(ValueError, match="chunks"):
        fused_block.layer_forward(kern, *layer._laid_out(x, W, b_in, R, b, s0), reverse, chunks=(T + 3) // 2)


RECOMPUTE_SAME = [("lstm", 12, 64, 16, 96, 300, 4, False), ("lstm", 5, 48, 3, 37, 17, 3, True),
                  ("elman_tanh", 2, 16, 1, 8, 17, 9, False), ("slstm", 2, 16, 3, 8, 9, 2, True)]


@pytest.mark.parametrize("cell,NH,DH,B,I,T,chunks,reverse", RECOMPUTE_SAME, ids=_ids(RECOMPUTE_SAME))
def test_recompute_gives_the_full_saves_results_bit_for_bit(cell, NH, DH, B, I, T, chunks, reverse, monkeypatch):
    """The recomputed rhb is the forward's to the bit (the same MMA operands and summation order),
    so h, sT and every gradient equal the full save's (DR_OUT) exactly; slstm (h in two pieces)
    keeps the full save under RECOMPUTE: the lean path does not run."""
    monkeypatch.setattr(fused_block, "POISON", True)
    monkeypatch.setattr(layer, "DR_OUT", True)
    inputs, dh, dsT = _layer_inputs(cell, T, B, NH, DH, I, 11, with_b_in=True)
    for dtype in DTYPES:
        low = [t.to(dtype) for t in inputs]
        plan = family_plan("fused_block", cell, B, NH, DH, dtype)
        got = {}
        for rc in (False, True):
            monkeypatch.setattr(layer, "RECOMPUTE", rc)
            before = layer.STATS["recompute"]
            got[rc] = _run(lambda *a: layer.recurrent_layer(*a, cell=cell, reverse=reverse, plan=plan, chunks=chunks),
                           low, dh.to(dtype), dsT.to(dtype))
            assert layer.STATS["recompute"] == before + (rc and cell not in fused_block.JUMP_CELLS)
        for name, a, b in zip(NAMES, got[False], got[True]):
            assert torch.isfinite(a).all() and torch.equal(a, b), (dtype, name, (a.double() - b.double()).abs().max())


def _check_layer(cell, NH, DH, B, I, T, chunks, reverse, expected_path, with_b_in=False) -> None:
    """recurrent_layer within 2x PyTorch's native error for h, sT and every gradient, in each dtype,
    through the path expected_path(dtype, plan) names (a layer.STATS key)."""
    seed = zlib.crc32(f"layer-{cell}-{NH}-{DH}-{B}-{I}-{T}-{chunks}-{reverse}-{with_b_in}".encode())
    draws = SMALL_DRAWS if B * NH * DH < SMALL_ELEMENTS else 1  # as conftest pools small outputs
    sq = {}  # (dtype, name) -> [|ours - ref|^2, |torch - ref|^2, |ref|^2] summed over the draws
    for k in range(draws):
        inputs, dh, dsT = _layer_inputs(cell, T, B, NH, DH, I, seed + k, with_b_in)
        ref = _run(_linear_then_reference(cell, reverse, torch.float64), inputs, dh, dsT)
        for dtype in DTYPES:
            plan = family_plan("fused_block", cell, B, NH, DH, dtype)
            low = [t.to(dtype) for t in inputs]
            native = _run(_linear_then_reference(cell, reverse, dtype), low, dh.to(dtype), dsT.to(dtype))
            path = expected_path(dtype, plan)
            before = layer.STATS[path]
            ours = _run(lambda *a: layer.recurrent_layer(*a, cell=cell, reverse=reverse, plan=plan, chunks=chunks),
                        low, dh.to(dtype), dsT.to(dtype))
            assert layer.STATS[path] == before + 1, f"the {path} path did not run"
            for name, o, n, r in zip(NAMES, ours, native, ref):
                assert o.dtype == dtype and o.shape == r.shape, (name, o.dtype, o.shape, r.shape)
                acc = sq.setdefault((dtype, name), [0.0, 0.0, 0.0])
                acc[0] += (o.double() - r).square().sum().item() if torch.isfinite(o).all() else float("nan")
                acc[1] += (n.double() - r).square().sum().item()
                acc[2] += r.square().sum().item()
    failures = []
    for (dtype, name), (d_o, d_n, r2) in sq.items():
        e_o, e_n = (d_o / max(r2, 1e-300)) ** 0.5, (d_n / max(r2, 1e-300)) ** 0.5
        if not within(e_o, e_n):
            failures.append(f"{dtype} {name}: ours {e_o:.3g} > 2 x torch {e_n:.3g}")
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("chunks", [2, 4, 7])
def test_chunks_keep_the_one_launch_state_gradient(chunks):
    """ds0 with K chunks is that of one chunk, bit for bit: the chunks pass their state gradients
    on in float32, as the one launch does from step to step."""
    cell, T, B, NH, DH, I = "lstm", 61, 5, 4, 32, 16
    inputs, dh, dsT = _layer_inputs(cell, T, B, NH, DH, I, 7)
    low = [t.to(torch.bfloat16) for t in inputs]
    plan = family_plan("fused_block", cell, B, NH, DH, torch.bfloat16)
    grads = [_run(lambda *a: layer.recurrent_layer(*a, cell=cell, plan=plan, chunks=k), low, dh.to(torch.bfloat16),
                  dsT.to(torch.bfloat16)) for k in (1, chunks)]
    assert torch.equal(grads[0][NAMES.index("ds0")], grads[1][NAMES.index("ds0")])


def test_inference_takes_the_one_call_forward(monkeypatch):
    """Without a gradient to compute, the layer is the same library call saving nothing: h and sT
    equal the training forward's to the bit (the same kernel source, its save left out; that one is
    held to float64 by the tests above), with every output poisoned first."""
    monkeypatch.setattr(fused_block, "POISON", True)
    cell, T, B, NH, DH, I = "lstm", 130, 3, 2, 16, 20
    inputs, _, _ = _layer_inputs(cell, T, B, NH, DH, I, 3, with_b_in=True)
    low = [t.to(torch.bfloat16) for t in inputs]
    plan = family_plan("fused_block", cell, B, NH, DH, torch.bfloat16)
    before = dict(layer.STATS)
    with torch.no_grad():
        h, sT = layer.recurrent_layer(*low, cell=cell, plan=plan)
    assert layer.STATS["one_call_inference"] == before.get("one_call_inference", 0) + 1
    assert layer.STATS["one_call"] == before.get("one_call", 0)
    h1, s1 = layer.recurrent_layer(*(t.clone().requires_grad_() for t in low), cell=cell, plan=plan)
    assert layer.STATS["one_call"] == before.get("one_call", 0) + 1
    assert torch.isfinite(h).all() and torch.isfinite(sT).all()
    assert torch.equal(h, h1.detach()) and torch.equal(sT, s1.detach())


def test_non_fused_plans_take_linear_then_recurrence():
    """Under the alternating plan the layer is F.linear then recurrence(): the same values."""
    from flashrnn_compile import recurrence, runtime

    inputs, _, _ = _layer_inputs("lstm", 9, 3, 2, 16, 20, 3)
    low = [t.to(torch.bfloat16) for t in inputs]
    plan = runtime.plan_json("alternating", {})
    before = dict(layer.STATS)
    h, sT = layer.recurrent_layer(*low, cell="lstm", plan=plan)
    assert layer.STATS["linear_then_recurrence"] == before.get("linear_then_recurrence", 0) + 1
    x, W, b_in, R, b, s0 = low
    h2, s2 = recurrence(F.linear(x, W, b_in).view(9, 3, 2, 4, 16), R, b, s0, cell="lstm", plan=plan)
    assert torch.equal(h, h2) and torch.equal(sT, s2)
