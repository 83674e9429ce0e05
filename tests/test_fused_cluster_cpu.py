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
    assert p.params == {"CLUSTER_SIZE": 16, "WARPS": 12, "BATCH_TILE": 8, "R_REG_TILES": 24}
    fused_cluster.defines("lstm", torch.bfloat16, 768, p.params)  # the kernel takes it


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
