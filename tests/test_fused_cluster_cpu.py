"""fused_cluster on CPU: what the planner picks (and refuses, with the reason), the -D defines of a
plan, configurations the kernel cannot take as clear errors, the family's registration, and the
fallback to the reference off CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashrnn_compile
from flashrnn_compile import planner, runtime
from flashrnn_compile.kernels import fused_cluster

P = {"CLUSTER_SIZE": 2, "WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 4}


pytestmark = pytest.mark.usefixtures("isolated_plan_cache")


def plan(cell, B, NH, DH, dtype=torch.bfloat16, **kw):
    return flashrnn_compile.plan(cell, B, NH, DH, dtype, gpu="h100-sxm", **kw)


def test_dense_768_lstm_gets_a_cluster_of_16_with_a_kernel_tiling():
    p = plan("lstm", 16, 1, 768)
    assert p.family == "fused_cluster", p.reason
    # the forward: 8 warps of 2 K slices, 34 R tiles each in registers (registers left to pipeline
    # the shared-memory ones); the backward its own tiling, 12 warps of 24 tiles
    assert p.params == {"CLUSTER_SIZE": 16, "WARPS": 8, "KSLICES": 2, "BATCH_TILE": 8, "R_REG_TILES": 34,
                        "BWD_WARPS": 12, "BWD_R_REG_TILES": 24}
    fused_cluster.defines("lstm", torch.bfloat16, 768, p.params)  # the kernel takes it
    bwd = fused_cluster.backward_defines("lstm", torch.bfloat16, 768, p.params)
    assert (bwd["FRNN_WARPS"], bwd["FRNN_R_REG_TILES"], bwd["FRNN_CLUSTER_BWD"]) == (12, 24, 1)
    assert "FRNN_CLUSTER_KSLICES" not in bwd  # the forward's K slices are not the backward's


@pytest.mark.parametrize("cell,B,NH,DH", [("lstm", 16, 1, 768), ("gru", 16, 1, 768), ("lstm", 16, 2, 512),
                                          ("elman_tanh", 3, 1, 768), ("elman_relu", 3, 1, 768),
                                          ("lstm", 1, 1, 768), ("lstm", 64, 1, 768), ("gru", 256, 1, 768)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_planner_tilings_are_accepted_by_the_kernel(cell, B, NH, DH, dtype):
    p = plan(cell, B, NH, DH, dtype, families=("fused_cluster",))
    assert p.family == "fused_cluster", p.reason
    d = fused_cluster.defines(cell, dtype, DH, p.params)
    assert d["FRNN_CLUSTER_SIZE"] == p.params["CLUSTER_SIZE"] and d["FRNN_DH"] == DH


def test_dense_1024_and_float32_are_refused_with_the_reason():
    p = plan("lstm", 16, 1, 1024, families=("fused_cluster",))
    assert p.family != "fused_cluster"
    assert "fused_cluster" in p.reason and "R of one head (8388608 B)" in p.reason
    p = plan("lstm", 16, 1, 768, torch.float32, families=("fused_cluster",))
    assert p.family != "fused_cluster" and "fused_cluster" in p.reason


def test_no_clusters_before_sm_90():
    p = flashrnn_compile.plan("lstm", 16, 1, 768, torch.bfloat16, gpu="a100-80gb", families=("fused_cluster",))
    assert p.family != "fused_cluster" and "at most 0 blocks per cluster" in p.reason


def test_defines_of_a_plan():
    assert fused_cluster.defines("gru", torch.float16, 64, P) == {
        "FRNN_CELL": "GruCell", "FRNN_DTYPE": 2, "FRNN_DH": 64, "FRNN_CLUSTER_SIZE": 2, "FRNN_WARPS": 4,
        "FRNN_BATCH_TILE": 8, "FRNN_R_REG_TILES": 4}
    assert fused_cluster.defines("lstm", torch.bfloat16, 64, {**P, "H_PIECES": 2})["FRNN_CLUSTER_H_PIECES"] == 2


@pytest.mark.parametrize("cell,dtype,DH,params,match", [
    ("lstm", torch.float32, 64, P, "dtype"),
    ("lstm", torch.bfloat16, 64, {"WARPS": 4}, "missing"),
    ("lstm", torch.bfloat16, 64, {**P, "CLUSTER_SIZE": 1}, "CLUSTER_SIZE=1"),
    ("lstm", torch.bfloat16, 64, {**P, "CLUSTER_SIZE": 32}, "CLUSTER_SIZE=32"),
    ("lstm", torch.bfloat16, 48, P, "DH=48"),              # 24 units per block: not whole 16-unit tiles
    ("lstm", torch.bfloat16, 64, {**P, "WARPS": 3}, "WARPS=3"),  # 2 unit groups per block
    ("lstm", torch.bfloat16, 64, {**P, "WARPS": 6}, "K slices"),  # 3 slices of 4 k-tiles
    ("lstm", torch.bfloat16, 64, {**P, "BATCH_TILE": 12}, "BATCH_TILE=12"),
    ("lstm", torch.bfloat16, 64, {**P, "R_REG_TILES": -1}, "R_REG_TILES=-1"),
    ("lstm", torch.bfloat16, 64, {**P, "H_PIECES": 3}, "H_PIECES=3"),
    ("lstm", torch.bfloat16, 64, {**P, "ABLATE": 7}, "ABLATE=7"),
    ("lstm", torch.bfloat16, 64, {**P, "SYNC": 4}, "SYNC=4"),  # tried in session 14, slower: removed
])
def test_configurations_the_kernel_cannot_take_are_clear_errors(cell, dtype, DH, params, match):
    with pytest.raises(ValueError, match=match):
        fused_cluster.defines(cell, dtype, DH, params)


def test_registered_and_off_cuda_the_reference_runs():
    assert "fused_cluster" in runtime.implemented_families()
    assert "CUDA device" in fused_cluster.unavailable(torch.device("cpu"))
    gx = torch.randn(3, 2, 1, 4, 32)  # [T, B, NH, G, DH]
    R, b, s0 = torch.randn(1, 4, 32, 32) * 0.1, torch.zeros(1, 4, 32), torch.zeros(2, 2, 1, 32)
    from flashrnn_compile import reference
    from flashrnn_compile.ops import recurrence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one warning
        h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=runtime.plan_json("fused_cluster", P))
    h_ref, sT_ref, _, _ = reference.forward(gx, R, b, s0, "lstm", False, False)
    assert torch.allclose(h, h_ref) and torch.allclose(sT, sT_ref)


# ---- the backward kernel's decomposition (csrc/fused/fused_cluster.cuh backward_kernel) in float64 ----

def cluster_backward_model(dh, dsT, gx, R, states_in, rhb, cell, reverse, CS, WARPS, BT):
    """What fused_cluster's backward kernel computes, with its work split spelled out: clusters of
    CS blocks per (head, batch tile), block r owning units r * DHB ..; per step each block's
    pointwise backward of its units, its PARTIAL R^T d(rhb) for all DH units split over warps
    (mg, kk) as the kernel's BwdConfig (MG = gcd(WARPS, DH / 16) m-tile groups x BKS k-slices), each
    partial stored into its owner's recv[step % 2][slot = r * BKS + kk] (NaN before: a slot left
    unwritten poisons the result), the owner summing its slots the next step; ds0 from the last
    step's slots; dR, db by fused_block._weight_grads from d(rhb) and states_in. float64 throughout.
    -> dgx [T,B,NH,G,DH], dR [NH,G,DH,DH], db [NH,G,DH], ds0 [S,B,NH,DH]."""
    import math

    from flashrnn_compile.cells import get_cell
    from flashrnn_compile.kernels.fused_block import _weight_grads
    from flashrnn_compile.reference import _step_vjp

    spec = get_cell(cell)
    pw = spec.step_backward or _step_vjp(spec.step)
    T, B, NH, G, DH = gx.shape  # gx [T, B, NH, G, DH]
    S = dsT.shape[0]
    DHB, KT = DH // CS, DH // 16
    MG = math.gcd(WARPS, KT)
    BKS, MT = WARPS // MG, KT // MG
    KTW = G * DHB // 16 // BKS
    NSLOT = CS * BKS
    dgx = torch.full_like(gx, float("nan"))  # [T, B, NH, G, DH]
    drhb = torch.full_like(gx, float("nan"))  # [T, B, NH, G, DH]
    ds0 = torch.full_like(dsT, float("nan"))  # [S, B, NH, DH]
    order = range(T) if reverse else range(T - 1, -1, -1)  # the reverse of the forward's
    for nh in range(NH):
        for bt0 in range(0, B, BT):
            nb = min(BT, B - bt0)
            cols = slice(bt0, bt0 + nb)
            ds = torch.zeros(S, BT, DH, dtype=gx.dtype)  # [S, BT, DH]  columns past the batch: zeros
            ds[:, :nb] = dsT[:, cols, nh]
            recv = torch.full((CS, 2, NSLOT, BT, DHB), float("nan"), dtype=gx.dtype)  # per block
            for step, t in enumerate(order):
                X = torch.zeros(CS, BT, G * DHB, dtype=gx.dtype)  # per block [BT][(g, o)]
                for r in range(CS):
                    U = slice(r * DHB, (r + 1) * DHB)
                    dsn = ds[:, :, U].clone()  # [S, BT, DHB]
                    if step > 0:
                        dsn[0] += recv[r, (step - 1) % 2].sum(0)
                    dsn[0, :nb] += dh[t, cols, nh, U]
                    gx_in = torch.zeros(BT, G, DHB, dtype=gx.dtype)
                    rh_in = torch.zeros(BT, G, DHB, dtype=gx.dtype)
                    st_in = torch.zeros(S, BT, DHB, dtype=gx.dtype)
                    gx_in[:nb], rh_in[:nb], st_in[:, :nb] = gx[t, cols, nh, :, U], rhb[t, cols, nh, :, U], states_in[t, :, cols, nh, U]
                    if cell == "slstm":
                        st_in[2, nb:] = 1.0  # (the kernel's zeros past the batch stay in their own columns; n = 1 keeps the model finite)
                    dg, dr, dsi = pw(gx_in, rh_in, tuple(st_in.unbind(0)), tuple(dsn.unbind(0)))
                    ds[:, :, U] = torch.stack(dsi)
                    dr = dr.clone()
                    dr[nb:] = 0.0  # past the batch: nothing into X
                    dgx[t, cols, nh, :, U], drhb[t, cols, nh, :, U] = dg[:nb], dr[:nb]
                    X[r] = dr.reshape(BT, G * DHB)
                for r in range(CS):
                    # A[k][(g, o)] = R[nh, g, r * DHB + o, k]
                    A = R[nh, :, r * DHB:(r + 1) * DHB, :].reshape(G * DHB, DH).t()  # [DH, G * DHB]
                    for w in range(WARPS):
                        mg, kk = w % MG, w // MG
                        K = slice(kk * KTW * 16, (kk + 1) * KTW * 16)
                        for mt in range(MT):
                            m0 = (mg * MT + mt) * 16
                            part = A[m0:m0 + 16, K] @ X[r][:, K].t()  # [16 units, BT]
                            d, ul = m0 // DHB, m0 % DHB
                            recv[d, step % 2, r * BKS + kk, :, ul:ul + 16] = part.t()
            for r in range(CS):
                U = slice(r * DHB, (r + 1) * DHB)
                last = ds[:, :nb, U].clone()
                if T > 0:
                    last[0] += recv[r, (T - 1) % 2].sum(0)[:nb]
                ds0[:, cols, nh, U] = last
    if T == 0:
        return dgx, torch.zeros_like(R), torch.zeros(NH, G, DH, dtype=R.dtype), ds0
    dR, db = _weight_grads(drhb, states_in, tf32=False)
    return dgx, dR, db, ds0


# (NH, DH, B, CLUSTER_SIZE, WARPS, BATCH_TILE): the GPU tests' explicit tilings, plus one whose warps
# need 2 k-slices in the backward (WARPS=16 over DH / 16 = 8 m-tiles)
BWD_MODEL = [(2, 64, 3, 2, 4, 8), (1, 128, 19, 4, 2, 16), (1, 256, 9, 16, 4, 8), (1, 128, 5, 2, 16, 8)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman_tanh", "elman_relu", "slstm"])
@pytest.mark.parametrize("NH,DH,B,CS,WARPS,BT", BWD_MODEL)
@pytest.mark.parametrize("reverse", [False, True])
def test_cluster_backward_decomposition_matches_the_reference(cell, NH, DH, B, CS, WARPS, BT, reverse):
    from flashrnn_compile import reference
    from flashrnn_compile.cells import get_cell

    spec = get_cell(cell)
    G, S, T = spec.num_gates, spec.num_states, 5
    fused_cluster.backward_defines(cell, torch.bfloat16, DH, {"CLUSTER_SIZE": CS, "WARPS": WARPS, "BATCH_TILE": BT,
                                                              "R_REG_TILES": 0})  # the kernel takes it
    g = torch.Generator().manual_seed(DH * 31 + B + CS)
    f64 = dict(dtype=torch.float64, generator=g)
    gx = torch.randn(T, B, NH, G, DH, **f64)
    R = 0.7 / DH ** 0.5 * torch.randn(NH, G, DH, DH, **f64)
    b = 0.1 * torch.randn(NH, G, DH, **f64)
    s0 = 0.5 * torch.randn(S, B, NH, DH, **f64)
    if cell == "slstm":
        s0[2] = 1.0 + s0[2].abs()  # the normaliser n > 0
    dh, dsT = torch.randn(T, B, NH, DH, **f64), torch.randn(S, B, NH, DH, **f64)
    _, _, states_in, rhb = reference.forward(gx, R, b, s0, cell, reverse, True)
    want = reference.backward(dh, dsT, gx, R, states_in, rhb, cell, reverse)
    got = cluster_backward_model(dh, dsT, gx, R, states_in, rhb, cell, reverse, CS, WARPS, BT)
    for name, w, o in zip(("dgx", "dR", "db", "ds0"), want, got):
        assert torch.isfinite(o).all(), name
        assert torch.allclose(o, w, rtol=1e-10, atol=1e-12), (name, (o - w).abs().max().item())


def test_cluster_backward_model_can_fail():
    """The model's check is not vacuous: a wrong slot (one block's partial not sent) is seen."""
    from flashrnn_compile import reference

    T, B, NH, DH, G, S = 3, 3, 1, 64, 4, 2
    g = torch.Generator().manual_seed(5)
    gx = torch.randn(T, B, NH, G, DH, dtype=torch.float64, generator=g)
    R = 0.1 * torch.randn(NH, G, DH, DH, dtype=torch.float64, generator=g)
    b = torch.zeros(NH, G, DH, dtype=torch.float64)
    s0 = torch.randn(S, B, NH, DH, dtype=torch.float64, generator=g)
    dh, dsT = torch.randn(T, B, NH, DH, dtype=torch.float64, generator=g), torch.randn(S, B, NH, DH, dtype=torch.float64, generator=g)
    _, _, si, rh = reference.forward(gx, R, b, s0, "lstm", False, True)
    want = reference.backward(dh, dsT, gx, R, si, rh, "lstm", False)
    R_bad = R.clone()
    R_bad[0, :, 32:, :] = 0.0  # as if block 1's partials never arrived (its rows of R^T d(rhb) missing)
    got = cluster_backward_model(dh, dsT, gx, R_bad, si, rh, "lstm", False, 2, 4, 8)
    assert not torch.allclose(got[3], want[3], rtol=1e-6)


@pytest.mark.parametrize("params,match", [
    ({**P, "WARPS": 6}, "K slices"),  # the forward's own rule refuses it first
])
def test_backward_configurations_the_kernel_cannot_take_are_clear_errors(params, match):
    with pytest.raises(ValueError, match=match):
        fused_cluster.backward_defines("lstm", torch.bfloat16, 64, params)


def test_backward_defines_and_the_knob(monkeypatch):
    d = fused_cluster.backward_defines("lstm", torch.bfloat16, 64, P)
    assert d == {**fused_cluster.defines("lstm", torch.bfloat16, 64, P), "FRNN_CLUSTER_BWD": 1}
    monkeypatch.delenv(fused_cluster.BWD_ENV, raising=False)
    assert fused_cluster.cluster_backward_enabled()  # the default (GPU-verified in session 6)
    monkeypatch.setenv(fused_cluster.BWD_ENV, "0")
    assert not fused_cluster.cluster_backward_enabled()
    monkeypatch.setenv(fused_cluster.BWD_ENV, "1")
    assert fused_cluster.cluster_backward_enabled()
