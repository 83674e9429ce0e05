"""Time the fused_grid forward beside cuDNN (fp16 and bf16), fused_cluster and the alternating kernels.

    python benchmarks/bench_fused_grid.py [--out results.json] [--reps 10] [--quick] [--configs 0,2]
    python benchmarks/bench_fused_grid.py --prebuild h200 [--arch 9.0] [--jobs 8]   build the variants first

Medians of CUDA-event timings after warm-up (bench_alternating.timeit), random inputs. Rows per
config: fused_grid with the planner's tiling for this GPU (families=("fused_grid",), so the row
exists even with FLASHRNN_GRID=0; a shape the planner refuses gives a row with the reason);
fused_cluster's planner tiling where one fits (1x768); the alternating step kernel; cuDNN
nn.LSTM / nn.GRU in fp16 and bf16 (its times include the input projection, ours take gx).
fwd+bwd of fused_grid is its forward plus its own backward kernel (FLASHRNN_GRID_BWD=0: the
alternating one).
--quick: only the first config, forward and forward keeping states.
--prebuild builds every fused_grid configuration the GPU tests (tests/gpu/test_fused_grid.py) and
this benchmark ask for on that GPU preset into the variant cache (TORCH_EXTENSIONS_DIR), for --arch.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_alternating import (DT, baseline_rows, forward_only, ours, table_columns, tested_variants,  # noqa: E402
                             timeit)
from suites import common  # noqa: E402

from flashrnn_compile import planner, runtime  # noqa: E402

CONFIGS = [  # cell, NH, DH, dtype, B, T
    ("lstm", 1, 1024, "bf16", 16, 1024),
    ("lstm", 1, 2048, "bf16", 16, 1024),
    ("lstm", 1, 768, "bf16", 16, 1024),
    ("gru", 1, 1024, "bf16", 16, 1024),
    ("lstm", 1, 1024, "fp16", 16, 1024),
    ("lstm", 1, 2048, "bf16", 8, 1024),
    ("lstm", 1, 1024, "bf16", 1, 1024),
    ("lstm", 2, 512, "bf16", 16, 1024),
    ("lstm", 1, 1024, "bf16", 64, 1024),
]
KNOB_ROWS = [{"WAIT": 1}]  # the first config again with each kernel knob (fused_grid.cuh FRNN_GRID_*)


def variants(gpu: str):
    """(cell, dtype, DH, params) of every fused_grid configuration the GPU tests and this benchmark
    run on `gpu` (a preset name), for --prebuild."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.gpu import test_fused_grid as t

    out = tested_variants("fused_grid", t, CONFIGS, gpu)
    for cell, NH, DH, B, prm, T, r in t.WAIT1_CASES:
        for dtype in t.DTYPES:
            out.add((cell, dtype, DH, tuple(sorted(prm.items()))))
    for cell in sorted(t.CELLS):  # sanitizer_case's WAIT=1 tiling (bfloat16)
        out.add((cell, torch.bfloat16, t.EXPLICIT[3][1], tuple(sorted({**t.EXPLICIT[3][3], "WAIT": 1}.items()))))
    for cfg in CONFIGS[:1]:  # the knob rows of the first config
        chosen = planner.plan(cfg[0], cfg[4], cfg[1], cfg[2], DT[cfg[3]], gpu=gpu, families=("fused_grid",))
        if chosen.family == "fused_grid":
            for knob in KNOB_ROWS:
                out.add((cfg[0], DT[cfg[3]], cfg[2], tuple(sorted({**chosen.params, **knob}.items()))))
    # test_a_grid_larger_than_the_device_runs_the_alternating_family_with_a_warning loads this one
    out.add(("elman_tanh", torch.float16, 256, tuple(sorted({"GRID_SPLIT": 16, "WARPS": 1, "BATCH_TILE": 8,
                                                               "R_REG_TILES": 4}.items()))))
    return sorted(out, key=str)


def prebuild_defines(gpu: str):
    """The -D defines of every configuration of variants(gpu): its forward library, and its backward's
    (FRNN_GRID_BWD=1) for the cells whose backward runs (not fused_grid.REFUSED_CELLS)."""
    from flashrnn_compile.kernels import fused_grid

    out = []
    for c, d, dh, p in variants(gpu):
        out.append(fused_grid.defines(c, d, dh, dict(p)))
        if c not in fused_grid.REFUSED_CELLS:
            out.append(fused_grid.backward_defines(c, d, dh, dict(p)))
    return out


def prebuild(gpu: str, arch: str, jobs: int) -> None:
    """Build every configuration of `variants(gpu)` for `arch` into the variant cache, `jobs` at a time."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from flashrnn_compile import build
    from flashrnn_compile.kernels import fused_grid

    todo = prebuild_defines(gpu)
    start = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        for defs, path in zip(todo, pool.map(lambda d: build.ensure_variant(fused_grid.SOURCE, d, [arch]), todo)):
            print(f"{time.time() - start:7.1f} s  {path.parent.name}  {defs}", flush=True)
    print(f"{len(todo)} fused_grid configurations ready under {build.cache_root() / 'variants'}")


def family_rows(family, cell, NH, DH, dtype, B, T, reps, run, base):
    """One row of `family` with the planner's tiling for this GPU, or a row with the refusal."""
    chosen = planner.plan(cell, B, NH, DH, dtype, families=(family,))
    if chosen.family != family:
        return [dict(system=f"{family} (planner)", params=None, refused=chosen.reason, **base,
                     forward_ms=None, forward_save_ms=None, fwd_bwd_ms=None)]
    plan = runtime.plan_json(family, chosen.params)
    return [dict(system=f"{family} (planner)", params=chosen.params, **base, **run(plan, cell, NH, DH, dtype, B, T, reps))]


def rows_for(cell, NH, DH, dt, B, T, reps, quick):
    dtype = DT[dt]
    run = forward_only if quick else ours
    base = dict(cell=cell, heads=f"{NH}x{DH}", dtype=dt, B=B, T=T)
    out = family_rows("fused_grid", cell, NH, DH, dtype, B, T, reps, run, base)
    if (cell, NH, DH, dt, B, T) == CONFIGS[0] and out[0]["params"] is not None:
        for knob in KNOB_ROWS:
            prm = {**out[0]["params"], **knob}
            out.append(dict(system=f"fused_grid {knob}", params=prm, **base,
                            **run(runtime.plan_json("fused_grid", prm), cell, NH, DH, dtype, B, T, reps)))
    if quick:
        return out
    if torch.cuda.get_device_capability()[0] >= 9:
        cluster = family_rows("fused_cluster", cell, NH, DH, dtype, B, T, reps, run, base)
        if cluster[0]["params"] is not None:
            out += cluster
    return out + baseline_rows(cell, NH, DH, dtype, B, T, reps, base)


def main():
    p = common.bench_parser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS (default: all)")
    p.add_argument("--prebuild", default=None, metavar="GPU_PRESET", help="only build the variants the tests and "
                   "this benchmark need on that preset (e.g. h200) into the cache, then exit")
    p.add_argument("--arch", default="9.0", help="with --prebuild: the compute capability to build for")
    p.add_argument("--jobs", type=int, default=8)
    args = p.parse_args()
    if args.prebuild:
        prebuild(args.prebuild, args.arch, args.jobs)
        return
    chosen = CONFIGS if args.configs is None else [CONFIGS[int(i)] for i in args.configs.split(",")]
    if args.quick:
        chosen = chosen[:1]
    rows = []
    for cfg in chosen:
        rows += rows_for(*cfg, args.reps, args.quick)
    params = (" params", lambda r: f" {r.get('params') or r.get('refused', '')}", -1, None)  # after two spaces
    common.bench_report(rows, args.out, args.reps, table_columns(system=26, cell=5, dtype=("dt", 4)) + [params])


if __name__ == "__main__":
    main()
