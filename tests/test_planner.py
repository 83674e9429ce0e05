"""The ConstrINT planner on hardware presets: the choices, the reasons, the checker, the cache."""

import dataclasses
import json
import os
import time
import types

import pytest
import torch

import flashrnn_compile
from flashrnn_compile import constrint, hardware, planner, runtime


pytestmark = pytest.mark.usefixtures("isolated_plan_cache")


def lstm(batch, heads, head_dim, dtype=torch.bfloat16, gpu="h100-sxm", **kw):
    return flashrnn_compile.plan("lstm", batch, heads, head_dim, dtype, gpu=gpu, **kw)


# ---- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, heads, head_dim, dtype, gpu, family",
    [
        (16, 12, 64, torch.bfloat16, "h100-sxm", "fused_block"),  # one head fits one block
        (16, 1, 768, torch.bfloat16, "h100-sxm", "fused_cluster"),  # R split over a cluster (sm_90)
        (16, 1, 8192, torch.bfloat16, "h100-sxm", "alternating"),  # R (512 MiB) fits no chip
        (16, 1, 768, torch.float32, "h100-sxm", "alternating"),  # no fused family takes float32
        (16, 12, 64, torch.float32, "h100-sxm", "alternating"),
        (16, 1, 768, torch.bfloat16, "a100-80gb", "fused_grid"),  # no clusters before sm_90
        (16, 12, 64, torch.bfloat16, "h200", "fused_block"),
        (16, 12, 64, torch.float16, "l4", "fused_block"),
        (16, 1, 768, torch.bfloat16, "rtx4090", "fused_grid"),
        (1024, 1, 768, torch.bfloat16, "h100-sxm", "alternating"),  # R copied per batch tile: waves
        (16, 1, 768, torch.float64, "h100-sxm", "reference"),  # no kernel takes float64
    ],
)
def test_table(batch, heads, head_dim, dtype, gpu, family):
    p = lstm(batch, heads, head_dim, dtype, gpu)
    assert p.family == family, p.reason
    assert p.reason.startswith(family) or family == "reference"


def test_fused_block_for_12_heads_of_64_and_why_not_the_others():
    p = lstm(16, 12, 64)
    assert p.family == "fused_block"
    assert p.params == {"WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 8}
    assert "32768 of 32768 B of R per block in registers" in p.reason
    assert "fused_cluster and fused_grid and alternating: cannot beat 224 ns/step" in p.reason


def test_dense_768_splits_r_over_a_cluster_and_says_why_one_block_is_not_enough():
    p = lstm(16, 1, 768)
    assert p.family == "fused_cluster" and 2 <= p.params["CLUSTER_SIZE"] <= 16
    assert "fused_block: impossible, since this cannot hold: R of one head (4718592 B) fits in the registers and shared memory" in p.reason


def test_dense_768_gru_and_slstm_use_a_cluster_too():
    for cell in ("gru", "slstm"):
        p = flashrnn_compile.plan(cell, 16, 1, 768, torch.bfloat16, gpu="h100-sxm")
        assert p.family == "fused_cluster", (cell, p.reason)


def test_float32_runs_the_alternating_kernels_which_take_it():
    # fused_block, fused_cluster and fused_grid take bfloat16 and float16 only; the planner's float32
    # choice must be a family whose kernels run float32
    bf16, fp32 = lstm(16, 1, 768), lstm(16, 1, 768, torch.float32)
    assert (bf16.family, fp32.family) == ("fused_cluster", "alternating")
    assert "fused_cluster: impossible, since this cannot hold: R of one head (9437184 B)" in fp32.reason
    assert "fused_grid takes bfloat16 and float16" in fp32.reason
    for cell, NH, DH in (("lstm", 12, 64), ("gru", 1, 768), ("slstm", 2, 512)):
        p = flashrnn_compile.plan(cell, 16, NH, DH, torch.float32, gpu="h100-sxm")
        assert p.family == "alternating", (cell, p.reason)


def test_large_batches_shift_the_choice():
    # 12 x 64: the step floor of a block grows with its batch tile (the cell on the SFU), so more
    # batch means more blocks, then waves of them, with part of R in shared memory to fit more per SM
    small, large = lstm(16, 12, 64), lstm(4096, 12, 64)
    assert small.family == large.family == "fused_block"
    assert large.params["BATCH_TILE"] == small.params["BATCH_TILE"] == 8
    assert large.details["fused_block"]["report"]["WAVES"] > 1
    assert large.details["fused_block"]["report"]["BLOCKS_PER_SM"] > small.details["fused_block"]["report"]["BLOCKS_PER_SM"]
    # 1 x 768: each batch tile is a cluster of its own; at B=1024 the waves cost more than two launches
    assert [lstm(b, 1, 768).family for b in (16, 256, 1024)] == ["fused_cluster", "fused_cluster", "alternating"]
    assert "fused_cluster: costs more (12640 ns/step)" in lstm(1024, 1, 768).reason


def test_a100_has_no_clusters_and_says_so():
    p = lstm(16, 1, 768, gpu="a100-80gb")
    assert p.family == "fused_grid"
    assert "fused_cluster: impossible, since this cannot hold: a thread-block cluster of this size is supported (this GPU: at most 0" in p.reason


def test_no_cuda_gives_the_reference(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = lstm(16, 12, 64, gpu=None)
    assert p.family == "reference" and p.params == {} and "no CUDA" in p.reason
    with pytest.raises(ValueError, match="gpu: device 0 requested but CUDA is not available"):
        lstm(16, 12, 64, gpu=0)


def test_float64_reason_names_the_dtype_limit():
    p = lstm(16, 12, 64, torch.float64)
    assert p.family == "reference"
    assert "the fused kernels take bfloat16, float16 or float32" in p.reason


# ---- restricted families ---------------------------------------------------------------------------


def test_families_restrict_the_choice():
    p = lstm(16, 12, 64, families=("alternating",))
    assert p.family == "alternating" and "restricted to ['alternating']" in p.reason
    p = lstm(16, 1, 768, families=("fused_block", "fused_cluster", "fused_grid"))
    assert p.family == "fused_cluster"
    p = lstm(16, 1, 768, families=("fused_grid",))
    assert p.family == "fused_grid"


def test_impossible_forced_families_fall_back_with_the_reason():
    p = lstm(16, 1, 8192, families=("fused_block", "fused_cluster", "fused_grid"))
    assert p.family == "alternating"
    assert "none of the requested families ['fused_block', 'fused_cluster', 'fused_grid'] is feasible" in p.reason
    assert "R of one head (536870912 B) fits in the registers and shared memory" in p.reason
    p = lstm(16, 1, 768, gpu="a100-80gb", families=("fused_cluster",))
    assert p.family == "fused_grid" and "at most 0 blocks per cluster" in p.reason
    assert lstm(16, 12, 64, families=("reference",)).family == "reference"
    # what choose_plan asks for when this build has only the alternating kernels
    p = lstm(16, 1, 768, families=("alternating", "reference"))
    assert p.family == "alternating" and "restricted to ['alternating', 'reference']" in p.reason
    p = lstm(16, 1, 768, torch.float64, families=("alternating", "reference"))
    assert p.family == "reference" and "the CUDA kernels take bfloat16, float16 or float32" in p.reason


# ---- every plan passes the independent checker -------------------------------------------------------


def test_every_returned_plan_passes_the_checker():
    checked = 0
    for gpu in hardware.PRESETS:
        for cell in ("lstm", "gru", "slstm"):
            for dtype in ("bfloat16", "float32"):
                for batch, heads, head_dim in ((1, 4, 32), (16, 12, 64), (64, 2, 256), (16, 1, 768), (300, 1, 1024)):
                    p = flashrnn_compile.plan(cell, batch, heads, head_dim, dtype, gpu=gpu)
                    spec = {"cell": cell, "batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype}
                    if p.family != "reference":
                        model = planner.kernel_model(p.family)
                        params = planner.model_params(p.family, spec, hardware.PRESETS[gpu])
                        values = {k: v for k, v in p.params.items() if k not in planner.PLAN_LETS.get(p.family, ())}
                        assert constrint.violations(model, params, values) == [], (spec, gpu, p)
                        checked += 1
                    assert runtime.parse_plan(p.op_arg()).family == p.family
    assert checked > 110


def test_template_parameters_are_documented_in_the_kernel_models():
    for family in planner.FAMILIES:
        model = planner.kernel_model(family)
        assert model.vars, family
        for v in model.vars:
            assert v.doc, f"{family}: variable {v.name} has no comment"
        assert [t for _, t in model.objective][0] == "STEP_NS"


# ---- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"cell": "lstmx"}, "cell: expected one of"),
        ({"batch": 0}, "batch: expected a positive int"),
        ({"heads": 1.5}, "heads: expected a positive int"),
        ({"head_dim": True}, "head_dim: expected a positive int"),
        ({"dtype": torch.int32}, "dtype: expected a torch dtype or one of"),
        ({"dtype": "bf17"}, "dtype: expected"),
        ({"gpu": "h100"}, "gpu: expected a preset name"),
        ({"gpu": 1.0}, "gpu: expected None, a device index"),
        ({"families": ()}, "families: expected a non-empty sequence"),
        ({"families": ("fused",)}, "families: expected"),
    ],
)
def test_bad_arguments_name_themselves(kw, words):
    args = {"cell": "lstm", "batch": 16, "heads": 12, "head_dim": 64, "dtype": torch.bfloat16, "gpu": "h100-sxm"}
    args.update(kw)
    with pytest.raises(ValueError, match=words):
        flashrnn_compile.plan(**args)


def test_dtype_by_name_and_gpu_object():
    a = flashrnn_compile.plan("gru", 16, 12, 64, "bfloat16", gpu=hardware.PRESETS["h100-sxm"])
    b = flashrnn_compile.plan("gru", 16, 12, 64, torch.bfloat16, gpu="h100-sxm")
    assert a == b


def test_hardware_is_read_from_device_properties(monkeypatch):
    """The CUDA path, with the properties an H100 SXM reports (no GPU on the CPU machines)."""
    props = types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
        regs_per_multiprocessor=65536, shared_memory_per_multiprocessor=233472,
        shared_memory_per_block_optin=232448, shared_memory_per_block=49152,
        max_threads_per_multi_processor=2048, warp_size=32,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    g = hardware.resolve(None)
    assert dataclasses.replace(g, name="h100-sxm") == hardware.PRESETS["h100-sxm"]
    assert lstm(16, 1, 768, gpu=0).family == "fused_cluster"
    with pytest.raises(ValueError, match=r"gpu: expected a device index in \[0, 1\), got 3"):
        hardware.resolve(3)


def test_hardware_presets_are_consistent():
    for name, g in hardware.PRESETS.items():
        assert g.smem_per_block_optin < g.smem_per_sm and g.regs_per_block <= g.regs_per_sm, name
        assert (g.max_cluster_size > 0) == (g.capability >= (9, 0)), name
    with pytest.raises(ValueError, match="GPU.sm_count"):
        hardware.GPU("x", (9, 0), -1, 1, 1, 1, 1, 1, 1, 1, 0, 1)


# ---- cache ---------------------------------------------------------------------------------------------


def _files(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_plans_are_cached_on_disk_and_reused(monkeypatch):
    first = lstm(16, 1, 768)
    folder = os.path.join(os.environ["FLASHRNN_CACHE_DIR"], "plans")
    (name,) = _files(folder)
    planner.clear_memory_cache()

    def boom(*a, **k):
        raise AssertionError("solved again instead of reading the cache")

    monkeypatch.setattr(planner, "choose", boom)
    assert lstm(16, 1, 768) == first
    assert _files(folder) == [name]  # no temp files left behind


@pytest.mark.parametrize(
    "damage",
    [
        lambda obj, text: "{not json",
        lambda obj, text: "",
        lambda obj, text: json.dumps([1, 2, 3]),
        lambda obj, text: json.dumps({**obj, "key": {**obj["key"], "planner": "someone-else"}}),
        lambda obj, text: json.dumps({**obj, "plan": {**obj["plan"], "params": {**obj["plan"]["params"], "CLUSTER_SIZE": 64}}}),
        lambda obj, text: json.dumps({**obj, "plan": {**obj["plan"], "family": "warp_drive"}}),
        lambda obj, text: json.dumps({**obj, "plan": {"family": "fused_cluster"}}),
    ],
)
def test_corrupt_or_foreign_cache_files_are_ignored_and_rewritten(damage):
    good = lstm(16, 1, 768)
    folder = os.path.join(os.environ["FLASHRNN_CACHE_DIR"], "plans")
    (name,) = _files(folder)
    path = os.path.join(folder, name)
    text = open(path).read()
    with open(path, "w") as f:
        f.write(damage(json.loads(text), text))
    planner.clear_memory_cache()
    assert lstm(16, 1, 768) == good
    assert json.loads(open(path).read()) == json.loads(text)


def test_unwritable_cache_dir_warns_and_still_plans(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FLASHRNN_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="could not write the plan cache"):
        assert lstm(16, 12, 64).family == "fused_block"


# ---- time ------------------------------------------------------------------------------------------------

SPECS = [(16, 12, 64), (16, 1, 768), (16, 1, 8192), (256, 1, 768), (4096, 12, 64), (64, 4, 256)]


def test_planning_is_fast_when_warm():
    """Warm: models parsed, the plan cache on disk. Measured per spec; the bound is the issue's 50 ms."""
    for spec in SPECS:
        lstm(*spec)  # fills the disk cache
    times = []
    for spec in SPECS:
        planner.clear_memory_cache()
        t = time.perf_counter()
        lstm(*spec)
        times.append(time.perf_counter() - t)
    assert max(times) < 0.050, times


def test_solving_from_scratch_is_fast():
    """No cache at all: every family solved (and explained where needed). Generous bound for CI.
    The slowest spec, (64, 4, 256), is the fused_cluster model's search (about 700 branch-and-bound
    nodes since session 12 gave the backward its own tiling variables): 0.41-0.55 s on our 2-core
    machine and 0.63 s once in a CI run (session 13), so the bound on the slowest is 1 s, the
    median's stays 0.15 s. A plan is solved once per spec and machine, then read from the disk cache
    (test_planning_is_fast_when_warm: under 50 ms)."""
    planner.kernel_model("fused_block")
    times = []
    for spec in SPECS:
        t = time.perf_counter()
        planner.choose({"cell": "lstm", "batch": spec[0], "heads": spec[1], "head_dim": spec[2], "dtype": "bfloat16"},
                       hardware.PRESETS["h100-sxm"], None)
        times.append(time.perf_counter() - t)
    assert sorted(times)[len(times) // 2] < 0.15 and max(times) < 1.0, times
