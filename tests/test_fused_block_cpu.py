"""fused_block on CPU: configuration checks (a configuration the kernel cannot take is a clear
error), the per-configuration build (its -D defines reach the library: `frnn_config` reports
them back), the variant cache, and the fallback to the reference off CUDA."""

from __future__ import annotations

import ctypes
import warnings

import pytest
import torch

from flashrnn_compile import build, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.kernels import fused_block
from flashrnn_compile.ops import recurrence

P = {"WARPS": 2, "BATCH_TILE": 8, "R_REG_TILES": 2}


def test_defines_of_a_plan():
    d = fused_block.defines("gru", torch.bfloat16, 32, P)
    assert d == {"FRNN_CELL": "GruCell", "FRNN_DTYPE": 1, "FRNN_DH": 32, "FRNN_WARPS": 2,
                 "FRNN_BATCH_TILE": 8, "FRNN_R_REG_TILES": 2}


@pytest.mark.parametrize("cell,dtype,DH,params,match", [
    ("lstm", torch.bfloat16, 24, P, "DH=24"),
    ("lstm", torch.float64, 32, P, "dtype"),
    ("lstm", torch.bfloat16, 32, {**P, "BATCH_TILE": 12}, "BATCH_TILE=12"),
    ("lstm", torch.bfloat16, 32, {**P, "WARPS": 0}, "WARPS=0"),
    ("lstm", torch.bfloat16, 32, {"WARPS": 4}, "missing"),
    # DH 16: one unit group; 3 warps are neither one warp nor row halves
    ("gru", torch.bfloat16, 16, {**P, "WARPS": 3}, "times 1, or times 2"),
    # 4 warps on one unit group: row halves x 2, but a batch tile of 8 has one n-tile to split
    ("gru", torch.bfloat16, 16, {**P, "WARPS": 4}, "n-tiles"),
    # DH 64: 4 unit groups of 16; 2 warps cannot own them
    ("lstm", torch.bfloat16, 64, {**P, "WARPS": 2}, "unit groups"),
])
def test_configurations_the_kernel_cannot_take_are_clear_errors(cell, dtype, DH, params, match):
    with pytest.raises(ValueError, match=match):
        fused_block.defines(cell, dtype, DH, params)


def test_planner_configurations_are_accepted():
    from flashrnn_compile import planner

    for cell in ("lstm", "gru", "elman_tanh", "slstm"):
        for NH, DH, B in ((12, 64, 16), (24, 32, 3), (5, 48, 1), (6, 128, 256)):
            for dtype in (torch.bfloat16, torch.float16):
                chosen = planner.plan(cell, B, NH, DH, dtype, gpu="h100-sxm", families=("fused_block",))
                assert chosen.family == "fused_block", chosen.reason
                fused_block.defines(cell, dtype, DH, chosen.params)  # raises if the kernel cannot take it


def test_float32_is_refused_by_the_kernel_and_the_planner():
    from flashrnn_compile import planner

    with pytest.raises(ValueError, match="float32"):
        fused_block.defines("lstm", torch.float32, 64, P)
    chosen = planner.plan("lstm", 16, 12, 64, torch.float32, gpu="h100-sxm")
    assert chosen.family != "fused_block", chosen


def test_unavailable_off_cuda():
    assert "CUDA device" in fused_block.unavailable(torch.device("cpu"))


def test_cpu_plan_falls_back_to_reference():
    gx = torch.randn(3, 2, 1, 4, 16)  # [T, B, NH, G, DH]
    R, b, s0 = torch.randn(1, 4, 16, 16) * 0.1, torch.zeros(1, 4, 16), torch.zeros(2, 2, 1, 16)
    plan = runtime.plan_json("fused_block", P)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=plan)
    h_ref, sT_ref = recurrence(gx, R, b, s0, cell="lstm")
    assert torch.equal(h, h_ref) and torch.equal(sT, sT_ref)
    assert any("fused_block" in str(w.message) for w in caught)


@pytest.mark.skipif(build.find_nvcc() is None, reason="needs nvcc to build a variant")
def test_variant_build_carries_its_defines_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    defs = fused_block.defines("elman_tanh", torch.float16, 16, {"WARPS": 1, "BATCH_TILE": 8, "R_REG_TILES": 1})
    path = build.ensure_variant(fused_block.SOURCE, defs, ["9.0"])
    assert build.ensure_variant(fused_block.SOURCE, defs, ["9.0"]) == path  # cached: same entry
    out = (ctypes.c_int * 9)()
    ctypes.CDLL(str(path)).frnn_config(out)
    G, S, DH, W, BT, RREG, code, fwd_smem, bwd_smem = out
    assert (G, S, DH, W, BT, RREG, code) == (1, 1, 16, 1, 8, 1, 2)
    # no R in shared memory (1 fragment, in registers); h double-buffered [2][8][16 + 8] fp16; 6 stages
    # of gx [8][16 + 8] fp16 (cp.async ring)
    assert fwd_smem == 2 * 8 * 24 * 2 + 6 * 8 * 24 * 2
    other = dict(defs, FRNN_DH=32)
    assert build.variant_key(fused_block.SOURCE, other, ["9.0"]) != build.variant_key(fused_block.SOURCE, defs, ["9.0"])


@pytest.mark.skipif(build.find_nvcc() is None, reason="needs nvcc to build a variant")
def test_dr_in_kernel_is_reported_and_can_be_switched_off(tmp_path, monkeypatch):
    """The library says whether its backward kernel accumulates dR / db (the Python side then passes
    the per-batch-tile buffer instead of drhb); FRNN_DR_KERNEL=0 keeps the GEMM path, and a tiling
    whose accumulators would crowd the registers (one warp over 8 m-tiles of dR) keeps it too;
    FRNN_DR_OUT=1 (knob FLASHRNN_FUSED_DROUT) leaves both to the caller."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    small = fused_block.defines("lstm", torch.bfloat16, 16, {"WARPS": 2, "BATCH_TILE": 8, "R_REG_TILES": 2})
    crowded = fused_block.defines("lstm", torch.bfloat16, 32, {"WARPS": 2, "BATCH_TILE": 16, "R_REG_TILES": 2})
    got = {name: fused_block.dr_in_kernel(ctypes.CDLL(str(build.ensure_variant(fused_block.SOURCE, d, ["9.0"]))))
           for name, d in (("small", small), ("off", dict(small, FRNN_DR_KERNEL=0)), ("crowded", crowded),
                           ("out", dict(small, FRNN_DR_OUT=1)))}
    assert got == {"small": fused_block.DR_TILES, "off": fused_block.DR_GEMM, "crowded": fused_block.DR_GEMM,
                   "out": fused_block.DR_FROM_DGX}


def test_tile_sums_add_the_batch_tiles_partials():
    """dR | db partials per batch tile [NBT, NH, G*DH*DH + G*DH] -> dR [NH, G, DH, DH], db [NH, G, DH]."""
    from flashrnn_compile.kernels.fused_block import _tile_sums

    NBT, NH, G, DH = 3, 2, 4, 5
    dw = torch.randn(NBT, NH, G * DH * DH + G * DH, generator=torch.Generator().manual_seed(1))
    dR, db = _tile_sums(dw, NH, G, DH)
    want = dw.double().sum(0)
    torch.testing.assert_close(dR.double(), want[:, : G * DH * DH].reshape(NH, G, DH, DH))
    torch.testing.assert_close(db.double(), want[:, G * DH * DH:].reshape(NH, G, DH))
    dR1, db1 = _tile_sums(dw[:1], NH, G, DH)  # one tile: its partials as they are
    assert torch.equal(dR1, dw[0, :, : G * DH * DH].reshape(NH, G, DH, DH))
    assert torch.equal(db1, dw[0, :, G * DH * DH:].reshape(NH, G, DH))


def test_parsed_plans_are_cached_but_their_params_are_fresh():
    """runtime.parse_plan parses a plan string once (the op asks on every call); each call still
    gets its own params dict, so a caller's change cannot leak into the next call."""
    plan = runtime.plan_json("fused_block", P)
    runtime._parse.cache_clear()
    first = runtime.parse_plan(plan)
    first.params["WARPS"] = 99
    second = runtime.parse_plan(plan)
    assert second.params == P and second.family == "fused_block"
    assert runtime._parse.cache_info().hits == 1
    with pytest.raises(ValueError, match="params"):
        runtime.parse_plan('{"family": "fused_block", "params": [1]}')


def test_unavailable_is_cached_per_device(monkeypatch):
    """The runtime asks on every call; the checks (capability, nvcc on disk) run once per device."""
    calls = []
    monkeypatch.setattr(fused_block._FAMILY, "_unavailable", {})
    monkeypatch.setattr(fused_block._FAMILY, "_unavailable_uncached", lambda d: calls.append(d) or "no")
    assert fused_block.unavailable(torch.device("cpu")) == "no" == fused_block.unavailable("cpu")
    assert calls == [torch.device("cpu")]


@pytest.mark.parametrize("start", ["none", "ieee", "tf32"])
@pytest.mark.parametrize("tf32", [False, True])
def test_weight_grads_leave_the_tf32_setting_as_it_was(start, tf32):
    """dR and db are the sums of d(rhb) h^T and d(rhb); the TF32 switch around their GEMM restores
    the caller's fp32_precision exactly, whatever it was (the legacy allow_tf32 flag raises after a
    user set fp32_precision, so the module must not touch it)."""
    from flashrnn_compile.kernels.fused_block import _weight_grads

    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        matmul.fp32_precision = start
        g = torch.Generator().manual_seed(0)
        T, B, NH, G, S, DH = 3, 2, 2, 4, 2, 5
        drhb = torch.randn(T, B, NH, G, DH, generator=g)  # [T, B, NH, G, DH]
        states_in = torch.randn(T, S, B, NH, DH, generator=g)  # [T, S, B, NH, DH]
        dR, db = _weight_grads(drhb, states_in, tf32=tf32)
        assert matmul.fp32_precision == start
        want_dR = torch.einsum("tbngi,tbnj->ngij", drhb.double(), states_in[:, 0].double())
        torch.testing.assert_close(dR.double(), want_dR, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(db.double(), drhb.double().sum((0, 1)), rtol=1e-5, atol=1e-5)
    finally:
        matmul.fp32_precision = saved



def test_knobs_add_their_defines_only_when_set(monkeypatch):
    params = {"WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 8}
    for env in fused_block.KNOBS:
        monkeypatch.delenv(env, raising=False)
    base = fused_block.defines("lstm", torch.bfloat16, 64, params)
    assert not set(base) & {d for d, _ in fused_block.KNOBS.values()}
    monkeypatch.setenv("FLASHRNN_FUSED_DROUT", "2")  # not a value of the knob: ignored
    assert fused_block.defines("lstm", torch.bfloat16, 64, params) == base
    monkeypatch.setenv("FLASHRNN_FUSED_DROUT", "1")  # only cells whose d(rhb) is d(gx)
    assert fused_block.defines("lstm", torch.bfloat16, 64, params)["FRNN_DR_OUT"] == 1
    assert "FRNN_DR_OUT" not in fused_block.defines("gru", torch.bfloat16, 64, params)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_rhb_grad_is_gx_matches_the_cells_backward(cell):
    """CellSpec.rhb_grad_is_gx (which lets fused_block take dR from dgx) agrees with the cell's own
    vjp on random inputs: equal gradients where it says so, different ones where it does not."""
    spec = CELLS[cell]
    g = torch.Generator().manual_seed(3)
    B, NH, DH, G, S = 3, 2, 5, spec.num_gates, spec.num_states
    gx, rhb = (torch.randn(B, NH, G, DH, generator=g, dtype=torch.float64) for _ in range(2))
    states = tuple(torch.randn(B, NH, DH, generator=g, dtype=torch.float64) for _ in range(S))
    if cell == "slstm":
        states = states[:3] + (states[3].abs() + 1.0,)
    d_new = tuple(torch.randn(B, NH, DH, generator=g, dtype=torch.float64) for _ in range(S))
    dgx, drhb, _ = spec.step_backward(gx, rhb, states, d_new)
    assert torch.equal(dgx, drhb) == spec.rhb_grad_is_gx


def test_weight_grads_from_dgx_is_the_sum_over_steps_and_batch():
    """dR = sum_(t, b) dgx h_in^T, db = sum dgx, from dgx [T, B, NH, G, DH] and the saved states
    states_in [T, S, B, NH, DH] (float32; h_in = states_in[:, 0], rounded to dgx's dtype)."""
    from flashrnn_compile.kernels.fused_block import _weight_grads_from_dgx

    g = torch.Generator().manual_seed(4)
    T, B, NH, G, DH, S = 3, 5, 2, 4, 6, 2
    dgx = torch.randn(T, B, NH, G, DH, generator=g)
    states_in = torch.randn(T, S, B, NH, DH, generator=g)
    dR, db = _weight_grads_from_dgx(dgx, states_in, torch.float32)
    want_dR = torch.einsum("tbngo,tbnu->ngou", dgx.double(), states_in[:, 0].double())
    torch.testing.assert_close(dR.double(), want_dR, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db.double(), dgx.double().sum((0, 1)), rtol=1e-5, atol=1e-5)


def test_dr_out_param_selects_the_dr_out_library():
    """recurrent_layer's DR_OUT backward asks for a tiling's FRNN_DR_OUT library through params;
    a cell whose d(rhb) is not d(gx) (GRU) is refused by name."""
    assert fused_block.defines("lstm", torch.bfloat16, 32, {**P, "DR_OUT": 1})["FRNN_DR_OUT"] == 1
    assert "FRNN_DR_OUT" not in fused_block.defines("lstm", torch.bfloat16, 32, P)
    with pytest.raises(ValueError, match=r"DR_OUT: cell 'gru'"):
        fused_block.defines("gru", torch.bfloat16, 32, {**P, "DR_OUT": 1})


def test_recompute_param_selects_the_lean_save_library():
    """recurrent_layer's lean save (RECOMPUTE) needs DR_OUT and h in one piece: the jump cells
    (h in two pieces) and a request without DR_OUT are refused by name."""
    defs = fused_block.defines("lstm", torch.bfloat16, 32, {**P, "DR_OUT": 1, "RECOMPUTE": 1})
    assert defs["FRNN_BWD_RECOMPUTE"] == 1 and defs["FRNN_DR_OUT"] == 1
    assert "FRNN_BWD_RECOMPUTE" not in fused_block.defines("lstm", torch.bfloat16, 32, {**P, "DR_OUT": 1})
    with pytest.raises(ValueError, match=r"RECOMPUTE: expected DR_OUT"):
        fused_block.defines("lstm", torch.bfloat16, 32, {**P, "RECOMPUTE": 1})
    for cell in fused_block.JUMP_CELLS:
        with pytest.raises(ValueError, match=rf"RECOMPUTE: cell '{cell}'"):
            fused_block.defines(cell, torch.bfloat16, 32, {**P, "DR_OUT": 1, "RECOMPUTE": 1})


@pytest.mark.skipif(build.find_nvcc() is None, reason="needs nvcc to build a variant")
def test_recompute_library_reports_its_save_and_refuses_the_op_paths(tmp_path, monkeypatch):
    """A FRNN_BWD_RECOMPUTE library says how many states its forward saves (an LSTM's backward
    reads c only: 1; elman_tanh's its one state), and refuses the op's full-save calls (a forward
    given an rhb buffer, frnn_backward) with an error before any launch."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    prm = {"WARPS": 2, "BATCH_TILE": 8, "R_REG_TILES": 2, "DR_OUT": 1}
    got = {}
    for cell, rc in (("lstm", 1), ("lstm", 0), ("elman_tanh", 1)):
        defs = fused_block.defines(cell, torch.bfloat16, 16, {**prm, "RECOMPUTE": rc} if rc else prm)
        lib = ctypes.CDLL(str(build.ensure_variant(fused_block.SOURCE, defs, ["9.0"])))
        fused_block._bind(lib)
        got[(cell, rc)] = lib.frnn_recompute()
        if rc:
            buf = ctypes.c_void_p(16)  # never dereferenced: the call fails first
            assert lib.frnn_forward(1, 1, 1, 0, *[buf] * 8, None) != 0
            assert "saves no rhb" in lib.frnn_error().decode()
            assert lib.frnn_layer_forward(1, 1, 1, 1, 0, 1, *[buf] * 12, None) != 0
            assert "frnn_layer_forward" in lib.frnn_error().decode() and "saves no rhb" in lib.frnn_error().decode()
            assert lib.frnn_backward(1, 1, 1, 0, *[buf] * 10, None) != 0
            assert "frnn_layer_backward" in lib.frnn_error().decode()
            assert lib.frnn_layer_forward(3, 1, 1, 1, 0, 2, *[buf] * 12, None) != 0
            assert "frnn_layer_forward" in lib.frnn_error().decode() and "saves no rhb" in lib.frnn_error().decode()
        # the forward refuses K out of 1 .. 16 or past T >= 2K - 1, and a missing x or sbuf,
        # before it touches the device
        buf = ctypes.c_void_p(16)
        for T, K, x, sbuf in ((3, 0, buf, buf), (3, 17, buf, buf), (4, 3, buf, buf), (3, 2, None, buf), (3, 2, buf, None)):
            assert lib.frnn_layer_forward(T, 1, 1, 1, 0, K, x, *[buf] * 8, None, None, sbuf, None) != 0
            assert lib.frnn_error().decode().startswith("frnn_layer_forward: ")
    assert got == {("lstm", 1): 1, ("lstm", 0): 0, ("elman_tanh", 1): 1}
