"""fused_grid on CPU: what the planner picks (and refuses, with the reason), the gating of the family
(offered unless FLASHRNN_GRID=0, and with it off the backend's choices are the other families'), the -D defines of a plan,
configurations the kernel cannot take as clear errors, the family's registration, the fallback to
the reference off CUDA, and the library's build for sm_80 and sm_90 (its shared memory as the
planner's model counts it)."""

from __future__ import annotations

import ctypes
import warnings

import pytest
import torch

import flashrnn_compile
from flashrnn_compile import build, context, planner, runtime
from flashrnn_compile.context import BackendOptions, PassContext
from flashrnn_compile.kernels import fused_grid

P = {"GRID_SPLIT": 2, "WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 4}

pytestmark = pytest.mark.usefixtures("isolated_plan_cache")


def plan(cell, B, NH, DH, dtype=torch.bfloat16, gpu="h100-sxm", **kw):
    return flashrnn_compile.plan(cell, B, NH, DH, dtype, gpu=gpu, **kw)


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200"])
def test_dense_1024_lstm_gets_a_grid_of_64_blocks_per_batch_tile(gpu):
    p = plan("lstm", 16, 1, 1024, gpu=gpu)
    assert p.family == "fused_grid", p.reason
    assert p.params == {"GRID_SPLIT": 64, "WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 31}
    assert "fused_cluster: impossible" in p.reason and "R of one head (8388608 B)" in p.reason
    assert fused_grid.blocks(16, 1, 64, 8) == 128 <= 132  # all resident on the 132 SMs
    fused_grid.defines("lstm", torch.bfloat16, 1024, p.params)  # the kernel takes it


def test_dense_2048_lstm_fits_the_grid_only_up_to_one_batch_tile():
    # R (32 MiB) needs 128 blocks of 256 KiB: one batch tile of 8 fits the 132 SMs, two do not
    p = plan("lstm", 8, 1, 2048, gpu="h200", families=("fused_grid",))
    assert p.family == "fused_grid", p.reason
    assert p.params == {"GRID_SPLIT": 128, "WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 27}
    p = plan("lstm", 16, 1, 2048, gpu="h200", families=("fused_grid",))
    assert p.family != "fused_grid"
    assert "fused_grid: impossible" in p.reason and "resident at once" in p.reason, p.reason


def test_a_cluster_stays_the_choice_where_one_fits():
    # the grid's step (an estimate, not measured) costs more than a cluster's measured one
    p = plan("lstm", 16, 1, 768)
    assert p.family == "fused_cluster", p.reason
    assert "fused_grid and alternating: cannot beat 790 ns/step" in p.reason


@pytest.mark.parametrize("cell,B,NH,DH", [("lstm", 16, 1, 1024), ("gru", 16, 1, 1024), ("slstm", 16, 1, 1024),
                                          ("elman_tanh", 3, 1, 1024), ("elman_relu", 3, 1, 1024),
                                          ("lstm", 16, 1, 768), ("lstm", 16, 2, 512), ("lstm", 3, 5, 48),
                                          ("lstm", 8, 1, 2048), ("lstm", 64, 1, 1024)])
@pytest.mark.parametrize("gpu", ["h100-sxm", "a100-80gb"])
def test_planner_tilings_are_accepted_by_the_kernel(cell, B, NH, DH, gpu):
    for dtype in (torch.bfloat16, torch.float16):
        p = plan(cell, B, NH, DH, dtype, gpu=gpu, families=("fused_grid",))
        if p.family != "fused_grid":
            assert "fused_grid: impossible" in p.reason, p.reason
            continue
        d = fused_grid.defines(cell, dtype, DH, p.params)
        assert d["FRNN_GRID_SPLIT"] == p.params["GRID_SPLIT"] and d["FRNN_DH"] == DH
        report = p.details["fused_grid"]["report"]
        assert report["BLOCKS"] == fused_grid.blocks(B, NH, p.params["GRID_SPLIT"], p.params["BATCH_TILE"])


def test_float32_and_float64_are_refused_with_the_reason():
    p = plan("lstm", 16, 1, 1024, torch.float32, families=("fused_grid",))
    assert p.family == "alternating" and "fused_grid takes bfloat16 and float16" in p.reason
    p = plan("lstm", 16, 12, 64, torch.float32)
    assert p.family == "alternating", p.reason  # a family whose kernels take float32
    with pytest.raises(ValueError, match="dtype"):
        fused_grid.defines("lstm", torch.float32, 64, P)


# ---- gating: offered to the planner unless FLASHRNN_GRID=0 -------------------------------------------


SHAPES = [("lstm", 16, 1, 1024, torch.bfloat16), ("lstm", 16, 1, 768, torch.bfloat16), ("gru", 16, 1, 1024, torch.float16),
          ("lstm", 16, 12, 64, torch.bfloat16), ("lstm", 16, 12, 64, torch.float32), ("lstm", 16, 1, 768, torch.float32),
          ("slstm", 3, 5, 48, torch.bfloat16), ("lstm", 8, 1, 2048, torch.bfloat16)]


@pytest.fixture
def h100_for_cuda0(monkeypatch):
    """choose_plan asks the planner for device 0; here that is the h100-sxm preset (no CUDA needed)."""
    real = planner.plan

    def on_preset(cell, batch, heads, head_dim, dtype, gpu=None, *, families=None):
        assert gpu == 0
        return real(cell, batch, heads, head_dim, dtype, gpu="h100-sxm", families=families)

    monkeypatch.setattr(planner, "plan", on_preset)
    return real


@pytest.mark.parametrize("cell,B,NH,DH,dtype", SHAPES)
def test_with_the_env_off_the_backends_choices_are_the_other_families(monkeypatch, h100_for_cuda0, cell, B, NH, DH, dtype):
    monkeypatch.setenv(fused_grid.OFFER_ENV, "0")
    assert "fused_grid" in runtime.implemented_families() and "fused_grid" not in runtime.offered_families()
    got = context.choose_plan(PassContext(BackendOptions()), cell, B, NH, DH, dtype, "cuda:0")
    # what choose_plan gave before fused_grid was registered: the planner over the other families
    before = h100_for_cuda0(cell, B, NH, DH, dtype, gpu="h100-sxm",
                            families=tuple(f for f in runtime.FAMILIES if f != "fused_grid"))
    if before.family == "fused_grid":  # none of the others feasible: the planner's pick had no kernel
        assert got.family == "reference" and "which this build has no kernel for" in got.reason
    else:
        assert (got.family, got.params) == (before.family, before.params)
    assert got.family != "fused_grid"
    fused = context.choose_plan(PassContext(BackendOptions(plan="fused")), cell, B, NH, DH, dtype, "cuda:0")
    assert fused.family != "fused_grid"


def test_by_default_the_planner_may_choose_the_grid(monkeypatch, h100_for_cuda0):
    monkeypatch.delenv(fused_grid.OFFER_ENV, raising=False)
    assert fused_grid.offered() and "fused_grid" in runtime.offered_families()
    got = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 1024, torch.bfloat16, "cuda:0")
    assert got.family == "fused_grid" and got.params["GRID_SPLIT"] == 64, got.reason
    got = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 768, torch.bfloat16, "cuda:0")
    assert got.family == "fused_cluster", got.reason
    got = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 12, 64, torch.float32, "cuda:0")
    assert got.family == "alternating", got.reason
    monkeypatch.setenv(fused_grid.OFFER_ENV, "0")
    assert not fused_grid.offered() and "fused_grid" not in runtime.offered_families()
    # the dense LSTM in float16 from batch 16: cuDNN's persistent kernel stays (it measured faster than
    # fused_grid's bf16 at 1x1024 too: 2.46 / 8.10 ms against 3.26 / 9.66, H200 session 13)
    from flashrnn_compile.passes import rnn_module

    monkeypatch.delenv(fused_grid.OFFER_ENV, raising=False)
    grid = context.choose_plan(PassContext(BackendOptions()), "lstm", 16, 1, 1024, torch.float16, "cuda:0")
    call = type("Call", (), dict(cell="lstm", dtype=torch.float16, train=False, layers=1, directions=1, dropout=0.0))()
    assert grid.family == "fused_grid", grid.reason
    assert rnn_module._cudnn_is_faster(PassContext(BackendOptions()), call, grid, torch.device("cuda"), False, 16)


def test_explicit_plans_run_the_family_with_the_env_off(monkeypatch):
    monkeypatch.setenv(fused_grid.OFFER_ENV, "0")
    impl = runtime.implementation(runtime.plan_json("fused_grid", P), torch.device("cpu"))
    assert impl.family == "reference"  # off CUDA: the reference (the family itself is registered)
    assert runtime._IMPLEMENTATIONS["fused_grid"].forward is fused_grid.forward


# ---- defines and errors ---------------------------------------------------------------------------


def test_defines_of_a_plan():
    assert fused_grid.defines("gru", torch.float16, 64, P) == {
        "FRNN_CELL": "GruCell", "FRNN_DTYPE": 2, "FRNN_DH": 64, "FRNN_GRID_SPLIT": 2, "FRNN_WARPS": 4,
        "FRNN_BATCH_TILE": 8, "FRNN_R_REG_TILES": 4}
    assert fused_grid.defines("lstm", torch.bfloat16, 64, {**P, "WAIT": 0})["FRNN_GRID_WAIT"] == 0


@pytest.mark.parametrize("cell,dtype,DH,params,match", [
    ("lstm", torch.float32, 64, P, "dtype"),
    ("lstm", torch.bfloat16, 64, {"WARPS": 4}, "missing"),
    ("lstm", torch.bfloat16, 64, {**P, "CLUSTER_SIZE": 2}, "unknown"),
    ("lstm", torch.bfloat16, 64, {**P, "GRID_SPLIT": 0}, "GRID_SPLIT=0"),
    ("lstm", torch.bfloat16, 64, {**P, "GRID_SPLIT": 8}, "GRID_SPLIT=8"),  # 8 units per block
    ("lstm", torch.bfloat16, 48, P, "DH=48"),              # 24 units per block: not whole 16-unit tiles
    ("lstm", torch.bfloat16, 64, {**P, "WARPS": 3}, "WARPS=3"),  # 2 unit groups per block
    ("lstm", torch.bfloat16, 64, {**P, "WARPS": 6}, "K slices"),  # 3 slices of 4 k-tiles
    ("lstm", torch.bfloat16, 64, {**P, "BATCH_TILE": 12}, "BATCH_TILE=12"),
    ("lstm", torch.bfloat16, 64, {**P, "R_REG_TILES": -1}, "R_REG_TILES=-1"),
    ("lstm", torch.bfloat16, 64, {**P, "WAIT": 2}, "WAIT=2"),
])
def test_configurations_the_kernel_cannot_take_are_clear_errors(cell, dtype, DH, params, match):
    with pytest.raises(ValueError, match=match):
        fused_grid.defines(cell, dtype, DH, params)


def test_registered_and_off_cuda_the_reference_runs():
    assert "fused_grid" in runtime.implemented_families()
    assert "CUDA device" in fused_grid.unavailable(torch.device("cpu"))
    gx = torch.randn(3, 2, 1, 4, 32)  # [T, B, NH, G, DH]
    R, b, s0 = torch.randn(1, 4, 32, 32) * 0.1, torch.zeros(1, 4, 32), torch.zeros(2, 2, 1, 32)
    from flashrnn_compile import reference
    from flashrnn_compile.ops import recurrence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one warning
        h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=runtime.plan_json("fused_grid", P))
    h_ref, sT_ref, _, _ = reference.forward(gx, R, b, s0, "lstm", False, False)
    assert torch.allclose(h, h_ref) and torch.allclose(sT, sT_ref)


# ---- the library builds (no GPU needed) ----------------------------------------------------------


@pytest.mark.skipif(build.find_nvcc() is None, reason="needs nvcc to build a variant")
@pytest.mark.parametrize("cell,B,NH,DH,dtype", [("lstm", 16, 1, 1024, torch.bfloat16), ("slstm", 3, 5, 48, torch.float16)])
def test_planner_variants_build_for_sm80_and_sm90_with_the_models_shared_memory(tmp_path, monkeypatch, cell, B, NH, DH, dtype):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    p = plan(cell, B, NH, DH, dtype, gpu="h200", families=("fused_grid",))
    assert p.family == "fused_grid", p.reason
    defs = fused_grid.defines(cell, dtype, DH, p.params)
    path = build.ensure_variant(fused_grid.SOURCE, defs, ["8.0", "9.0"])
    lib = ctypes.CDLL(str(path))
    fused_grid._bind(lib)
    cfg = fused_grid.config(lib)
    assert cfg[2:8] == (DH, p.params["GRID_SPLIT"], p.params["WARPS"], p.params["BATCH_TILE"],
                        p.params["R_REG_TILES"], fused_grid.DTYPE_CODES[dtype])
    # the kernel's shared memory is what the planner's model counts (GR_SMEM: R not in registers,
    # one h buffer, the K-slice partial sums)
    assert p.details["fused_grid"]["report"]["GR_SMEM"] == cfg[8]


def test_refused_cells_resolve_to_the_alternating_family_with_the_reason():
    """fused_grid.REFUSED_CELLS (elman_relu: over 2x PyTorch's error on the H200, session 6) are
    turned down before any library is built or device is asked; the other cells are not."""
    gx = torch.empty(2, 3, 1, 1, 48)  # [T, B, NH, G, DH]
    handle, reason = fused_grid._resolve("elman_relu", gx, {"GRID_SPLIT": 3, "WARPS": 1, "BATCH_TILE": 8,
                                                             "R_REG_TILES": 4})
    assert handle is None and "elman_relu" in reason and "2x PyTorch" in reason
    assert set(fused_grid.REFUSED_CELLS) == {"elman_relu"}


# ---- the backward's library ------------------------------------------------------------------------


def test_backward_defines_are_the_forwards_plus_the_switch():
    defs = fused_grid.backward_defines("gru", torch.float16, 64, P)
    assert defs == {**fused_grid.defines("gru", torch.float16, 64, P), "FRNN_GRID_BWD": 1}
    with pytest.raises(ValueError, match="WARPS=3"):
        fused_grid.backward_defines("lstm", torch.bfloat16, 64, {**P, "WARPS": 3})


@pytest.mark.skipif(build.find_nvcc() is None, reason="needs nvcc to build a variant")
@pytest.mark.parametrize("cell,B,NH,DH,dtype", [("lstm", 16, 1, 1024, torch.bfloat16), ("slstm", 3, 5, 48, torch.float16)])
def test_backward_library_builds_and_reports_its_shared_memory_and_pieces(tmp_path, monkeypatch, cell, B, NH, DH, dtype):
    """The planner's tiling builds with FRNN_GRID_BWD=1 (sm_80 and sm_90). Its backward's shared
    memory is R's fragments not in registers (as the forward's) + drhb of all units, HP pieces x
    BATCH_TILE rows of G * DH + 8, + the K slices' partial sums [KS][BATCH_TILE][DH / GRID_SPLIT + 4]
    fp32; HP is 2 for the cells whose gradient jumps (slstm), else 1."""
    from flashrnn_compile.cells import get_cell

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    p = plan(cell, B, NH, DH, dtype, gpu="h200", families=("fused_grid",))
    assert p.family == "fused_grid", p.reason
    defs = fused_grid.backward_defines(cell, dtype, DH, p.params)
    lib = ctypes.CDLL(str(build.ensure_variant(fused_grid.SOURCE, defs, ["8.0", "9.0"])))
    fused_grid._bind(lib)  # binds the backward's entry points too (the library has them)
    out = (ctypes.c_int * 3)()
    lib.frnn_bwd_config(out)
    smem, ks, hp = out
    spec = get_cell(cell)
    G, gs, warps, bt, rreg = (spec.num_gates, p.params["GRID_SPLIT"], p.params["WARPS"], p.params["BATCH_TILE"],
                              p.params["R_REG_TILES"])
    dhb = DH // gs
    assert hp == (2 if spec.gradient_jumps else 1)
    assert ks == warps // (dhb // 16)
    ktw = G * DH // 16 // ks  # A fragments per warp (one m-tile of 16 own units)

    def a16(x):
        return -(-x // 16) * 16

    a_bytes = a16(warps * max(ktw - rreg, 0) * 512)
    assert smem == a_bytes + a16(hp * bt * (G * DH + 8) * 2) + a16(ks * bt * (dhb + 4) * 4)


def test_backward_operands_layouts_outputs_and_shape_errors():
    """The persistent backwards' shared preparation (kernels/_variants.backward_operands): operands in
    gx's dtype, contiguous; the saved states fp32; dgx / ds0 / drhb allocated and NaN-filled under
    poisoning; saved states of the wrong shape a ValueError naming both and the family."""
    from flashrnn_compile.kernels import _variants

    T, B, NH, G, DH, S = 3, 2, 1, 4, 16, 2
    gx = torch.randn(T, B, NH, G, DH, dtype=torch.bfloat16)
    R = torch.randn(NH, G, DH, DH, dtype=torch.bfloat16).transpose(2, 3)  # not contiguous
    dh, dsT = torch.randn(T, B, NH, DH), torch.randn(S, B, NH, DH)  # float32: cast to gx's dtype
    states_in, rhb = torch.randn(T, S, B, NH, DH, dtype=torch.float64), torch.randn(T, B, NH, G, DH)
    ins, outs = _variants.backward_operands(fused_grid._FAMILY, dh, dsT, gx, R, states_in, rhb, True)
    for t in ins[:4]:
        assert t.dtype == torch.bfloat16 and t.is_contiguous()
    assert torch.equal(ins[3], R.contiguous()) and ins[4].dtype == ins[5].dtype == torch.float32
    assert [tuple(t.shape) for t in outs] == [(T, B, NH, G, DH), (S, B, NH, DH), (T, B, NH, G, DH)]
    assert [t.dtype for t in outs] == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert all(torch.isnan(t.float()).all() for t in outs)
    with pytest.raises(ValueError, match=r"fused_grid backward: states_in \(3, 2, 2, 1, 8\)"):
        _variants.backward_operands(fused_grid._FAMILY, dh, dsT, gx, R, states_in[..., :8], rhb, False)


def test_residency_of_a_call_is_checked_per_call():
    """A cooperative grid must be resident: GRID_SPLIT x ceil(B / BATCH_TILE) x NH blocks against
    what the device holds for the kernel (fused_grid._resident, for the forward and the backward)."""
    handle = ("lib", 128, 64, 8)  # resident blocks, GRID_SPLIT, BATCH_TILE
    gx = torch.empty(1, 16, 1, 4, 1024)  # 2 batch tiles x 64 = 128 blocks
    assert fused_grid._resident(handle, gx, "configuration") == (handle, None)
    got, why = fused_grid._resident(handle, torch.empty(1, 17, 1, 4, 1024), "backward configuration")
    assert got is None and why.startswith("backward configuration GRID_SPLIT=64, BATCH_TILE=8: B=17, NH=1 need 192 blocks")


def test_backward_results_are_the_weight_gradient_gemm_in_rs_dtype():
    """_variants.backward_results: dR, db from drhb and the saved h (fused_block._weight_grads) in
    R's dtype, dgx and ds0 passed through; zeros for an empty sequence."""
    from flashrnn_compile.kernels import _variants
    from flashrnn_compile.kernels.fused_block import _weight_grads

    T, B, NH, G, DH, S = 3, 2, 1, 4, 8, 2
    drhb, states_in = torch.randn(T, B, NH, G, DH), torch.randn(T, S, B, NH, DH)
    dgx, ds0 = torch.randn(T, B, NH, G, DH, dtype=torch.float16), torch.randn(S, B, NH, DH, dtype=torch.float16)
    R = torch.randn(NH, G, DH, DH, dtype=torch.float16)
    got = _variants.backward_results(dgx, drhb, states_in, ds0, R)
    dR, db = _weight_grads(drhb, states_in, tf32=False)
    assert got[0] is dgx and got[3] is ds0
    assert torch.equal(got[1], dR.half()) and torch.equal(got[2], db.half())
    empty = _variants.backward_results(dgx[:0], drhb[:0], states_in[:0], ds0, R)
    assert empty[1].shape == R.shape and not empty[1].any() and empty[2].shape == (NH, G, DH) and not empty[2].any()
