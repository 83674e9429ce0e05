"""Time the fused_cluster forward beside cuDNN (fp16 and bf16) and the alternating kernels.

    python benchmarks/bench_fused_cluster.py [--out results.json] [--reps 10] [--quick]
    python benchmarks/bench_fused_cluster.py --prebuild h100-sxm [--jobs 2]   build the variants first

Medians of CUDA-event timings after warm-up (bench_alternating.timeit), random inputs. Rows:
fused_cluster with the planner's tiling for this GPU and with EXPLICIT tilings; the alternating
step kernel; cuDNN nn.LSTM / nn.GRU in fp16 and bf16 (its times include the input projection,
ours take gx). fwd+bwd of fused_cluster is its forward plus the alternating backward; the rows
"..., own bwd" time the same with the family's own backward kernel (the default; the other rows set
FLASHRNN_CLUSTER_BWD=0). --quick:
only the dense LSTM 1x768 bf16 B16 T1024 rows, forward and forward keeping states.
--prebuild also builds the backward libraries (FRNN_CLUSTER_BWD=1) of every configuration whose
backward the tests or this benchmark run (with or without FLASHRNN_CLUSTER_BWD in the environment).
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_alternating import (DT, baseline_rows, forward_only, ours, table_columns, tested_variants,  # noqa: E402
                             timeit)
from suites import common  # noqa: E402

from flashrnn_compile import planner, runtime  # noqa: E402

CONFIGS = [  # cell, NH, DH, dtype, B, T
    ("lstm", 1, 768, "bf16", 16, 1024),
    ("gru", 1, 768, "bf16", 16, 1024),
    ("lstm", 1, 768, "fp16", 16, 1024),
    ("lstm", 2, 512, "bf16", 16, 1024),
    ("lstm", 1, 768, "bf16", 1, 1024),
    ("lstm", 1, 768, "bf16", 64, 1024),
]
# tilings the planner does not pick, for dense LSTM 1x768 (which of them is fastest on the card)
EXPLICIT = [
    {"CLUSTER_SIZE": 16, "WARPS": 6, "BATCH_TILE": 8, "R_REG_TILES": 43},
    # 8 warps of 2 K slices with 34 of their 72 R tiles in registers (fewer than fit: registers left to
    # pipeline the shared-memory fragments): 7% faster than the planner's tiling in session 11's call 2
    {"CLUSTER_SIZE": 16, "WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 34, "KSLICES": 2},
]
# --ablate: the planner's tiling for dense LSTM 1x768 bf16 B16 T1024 with one kernel switch each
# (fused_cluster.cuh FRNN_CLUSTER_*): where a step's time goes. ABLATE rows compute wrong results;
# they switch the exchange back to SYNC 0 (stores and a cluster barrier), which they probe.
DENSE_8_WARPS = {"WARPS": 8, "KSLICES": 2, "R_REG_TILES": 46}  # 2 K slices x 4 groups of 3 m-tiles, 46 of 72 R tiles in registers
ABLATIONS = [("SYNC 0: stores, one cluster barrier per step", {"SYNC": 0}),
             ("8 warps (KSLICES 2, R 46)", DENSE_8_WARPS),
             ("SYNC 0, no stores to peers", {"SYNC": 0, "ABLATE": 1}),
             ("SYNC 0, block barrier, not cluster", {"SYNC": 0, "ABLATE": 2}),
             ("SYNC 0, no MMAs", {"SYNC": 0, "ABLATE": 3})]
# the planner's tilings before session 12's register model (one tiling for the forward and the
# backward), against the planner's now (--ablate: forward and fwd+bwd with the own backward)
PREVIOUS_PLANS = [
    ("lstm", 1, 768, {"CLUSTER_SIZE": 16, "WARPS": 12, "BATCH_TILE": 8, "R_REG_TILES": 24}),
    ("gru", 1, 768, {"CLUSTER_SIZE": 12, "WARPS": 12, "BATCH_TILE": 8, "R_REG_TILES": 26}),
    ("lstm", 2, 512, {"CLUSTER_SIZE": 8, "WARPS": 8, "BATCH_TILE": 8, "R_REG_TILES": 45}),
]
# the same for the family's own backward kernel (fwd+bwd timed; the forward is the kernel's)
BWD_ABLATIONS = [("bwd: BWD_SYNC 0: stores, one cluster barrier per step", {"BWD_SYNC": 0}),
                 ("bwd: no MMAs", {"BWD_ABLATE": 2}),
                 ("bwd: BWD_SYNC 0, no stores to peers", {"BWD_SYNC": 0, "BWD_ABLATE": 1}),
                 ("bwd: BWD_SYNC 0, block barrier, not cluster", {"BWD_SYNC": 0, "BWD_ABLATE": 3})]


def variants(gpu: str):
    """(cell, dtype, DH, params) of every configuration the GPU tests and this benchmark run on
    `gpu` (a preset name), for --prebuild."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.gpu import test_fused_cluster as t

    out = tested_variants("fused_cluster", t, CONFIGS, gpu)
    for prm in EXPLICIT:
        out.add(("lstm", torch.bfloat16, 768, tuple(sorted(prm.items()))))
    base = planner.plan("lstm", 16, 1, 768, torch.bfloat16, gpu=gpu, families=("fused_cluster",)).params
    for _, knob in ABLATIONS + BWD_ABLATIONS:
        out.add(("lstm", torch.bfloat16, 768, tuple(sorted({**base, **knob}.items()))))
    for cell, NH, DH, prm in PREVIOUS_PLANS:
        out.add((cell, torch.bfloat16, DH, tuple(sorted(prm.items()))))
        now = planner.plan(cell, 16, NH, DH, torch.bfloat16, gpu=gpu, families=("fused_cluster",)).params
        out.add((cell, torch.bfloat16, DH, tuple(sorted(now.items()))))
    for cell, NH, DH, B, prm, T, _ in t.EXCHANGE_CASES + t.BWD_EXCHANGE_CASES + t.KSLICE_CASES + t.KSLICE_BWD_CASES:
        for dtype in t.DTYPES:
            out.add((cell, dtype, DH, tuple(sorted(prm.items()))))
    for cell in sorted(t.CELLS):  # the bitwise comparisons of the exchanges (bfloat16)
        for k in (0, 2):
            for i in (0, 2):
                out.add((cell, torch.bfloat16, t.EXPLICIT[i][1], tuple(sorted({**t.EXPLICIT[i][3], "SYNC": k}.items()))))
            for i in (0, 2, 3):
                prm = {**t.BWD_EXPLICIT[i][3], "BWD_SYNC": k}
                out.add((cell, torch.bfloat16, t.BWD_EXPLICIT[i][1], tuple(sorted(prm.items()))))
    for knob, planned in [(k, t.EXCHANGE_PLANNED) for k in t.EXCHANGE_KNOBS] + [(k, t.BWD_EXCHANGE_PLANNED) for k in t.BWD_EXCHANGE_KNOBS]:
        for cell in sorted({c for c, _, _ in planned}):
            for dtype in t.DTYPES:
                prm = planner.plan(cell, 16, 1, 768, dtype, gpu=gpu, families=("fused_cluster",)).params
                out.add((cell, dtype, 768, tuple(sorted({**prm, **knob}.items()))))
    return sorted(out, key=str)


def bwd_variants(gpu: str):
    """(cell, dtype, DH, params) of every configuration whose own backward (FRNN_CLUSTER_BWD=1) the
    GPU tests or this benchmark run on `gpu`: all of variants(gpu) but the forward's timing switches, and the
    tests' backward-only tilings."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.gpu import test_fused_cluster as t

    def forward_only(prm):  # a forward switch the backward's tests and rows never take
        return any(k in prm for k in ("ABLATE", "VEC", "H_PIECES")) or ("SYNC" in prm and "BWD_SYNC" not in prm)

    out = {v for v in variants(gpu) if not forward_only(dict(v[3]))}
    for cell in sorted(t.CELLS):
        for NH, DH, B, prm, _ in t.BWD_EXPLICIT:
            for dtype in t.DTYPES:
                out.add((cell, dtype, DH, tuple(sorted(prm.items()))))
    return sorted(out, key=str)


@contextlib.contextmanager
def cluster_bwd(on: bool):
    """FLASHRNN_CLUSTER_BWD set to 1 (on) or 0 inside, as it was after."""
    from flashrnn_compile.kernels import fused_cluster

    before = os.environ.get(fused_cluster.BWD_ENV)
    if on:
        os.environ[fused_cluster.BWD_ENV] = "1"
    else:
        os.environ[fused_cluster.BWD_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(fused_cluster.BWD_ENV, None)
        else:
            os.environ[fused_cluster.BWD_ENV] = before


def ablation_rows(reps):
    """Forward of dense LSTM 1x768 bf16 B16 T1024 with the planner's tiling and each ABLATIONS switch."""
    chosen = planner.plan("lstm", 16, 1, 768, torch.bfloat16, families=("fused_cluster",))
    base = dict(cell="lstm", heads="1x768", dtype="bf16", B=16, T=1024)
    rows = []
    for name, knob in [("kernel", {})] + ABLATIONS:
        prm = {**chosen.params, **knob}
        r = forward_only(runtime.plan_json("fused_cluster", prm), "lstm", 1, 768, torch.bfloat16, 16, 1024, reps)
        rows.append(dict(system=f"ablate: {name}", params=knob, **base, **r))
    with cluster_bwd(True):
        for name, knob in [("bwd: kernel", {})] + BWD_ABLATIONS:
            prm = {**chosen.params, **knob}
            r = ours(runtime.plan_json("fused_cluster", prm), "lstm", 1, 768, torch.bfloat16, 16, 1024, reps)
            rows.append(dict(system=f"ablate: {name}", params=knob, **base, **r))
    for cell, NH, DH, old in PREVIOUS_PLANS:
        now = planner.plan(cell, 16, NH, DH, torch.bfloat16, families=("fused_cluster",)).params
        for name, prm in (("planner now", now), ("planner before", old)):
            with cluster_bwd(True):
                r = ours(runtime.plan_json("fused_cluster", prm), cell, NH, DH, torch.bfloat16, 16, 1024, reps)
            rows.append(dict(system=f"plans: {name}, own bwd", params=prm, cell=cell, heads=f"{NH}x{DH}", dtype="bf16",
                             B=16, T=1024, **r))
    return rows


def ablate_variants(gpu: str):
    """(forward, backward) lists of (cell, dtype, DH, params) that `--quick --ablate` runs on `gpu`."""
    dense = planner.plan("lstm", 16, 1, 768, torch.bfloat16, gpu=gpu, families=("fused_cluster",)).params
    fwd = [("lstm", torch.bfloat16, 768, dense)] + [("lstm", torch.bfloat16, 768, dict(p)) for p in EXPLICIT]
    fwd += [("lstm", torch.bfloat16, 768, {**dense, **knob}) for _, knob in ABLATIONS]
    bwd = [("lstm", torch.bfloat16, 768, {**dense, **knob}) for _, knob in [("", {})] + BWD_ABLATIONS]
    for cell, NH, DH, old in PREVIOUS_PLANS:
        now = planner.plan(cell, 16, NH, DH, torch.bfloat16, gpu=gpu, families=("fused_cluster",)).params
        bwd += [(cell, torch.bfloat16, DH, old), (cell, torch.bfloat16, DH, now)]
    return fwd + bwd, bwd


def prebuild(gpu: str, jobs: int, scope: str = "all") -> None:
    """Build every configuration of `variants(gpu)` (scope "all") or of ablate_variants(gpu)
    (scope "ablate": the --quick --ablate rows only) into the variant cache, `jobs` at a time."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from flashrnn_compile import build
    from flashrnn_compile.kernels import fused_cluster

    if scope == "ablate":
        fwd, bwd = ablate_variants(gpu)
    else:
        fwd, bwd = variants(gpu), bwd_variants(gpu)
    todo = [fused_cluster.defines(c, d, dh, dict(p)) for c, d, dh, p in fwd]
    todo += [fused_cluster.backward_defines(c, d, dh, dict(p)) for c, d, dh, p in bwd]
    start = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        for defs, path in zip(todo, pool.map(lambda d: build.ensure_variant(fused_cluster.SOURCE, d), todo)):
            print(f"{time.time() - start:7.1f} s  {path.parent.name}  {defs}", flush=True)


def rows_for(cell, NH, DH, dt, B, T, reps, quick):
    dtype = DT[dt]
    run = forward_only if quick else ours
    chosen = planner.plan(cell, B, NH, DH, dtype, families=("fused_cluster",))
    out = []
    base = dict(cell=cell, heads=f"{NH}x{DH}", dtype=dt, B=B, T=T)
    if chosen.family == "fused_cluster":
        plan = runtime.plan_json("fused_cluster", chosen.params)
        with cluster_bwd(False):
            out.append(dict(system="fused_cluster (planner)", params=chosen.params, **base,
                            **run(plan, cell, NH, DH, dtype, B, T, reps)))
        if not quick:  # the same with the family's own backward kernel
            with cluster_bwd(True):
                out.append(dict(system="fused_cluster (planner), own bwd", params=chosen.params, **base,
                                **run(plan, cell, NH, DH, dtype, B, T, reps)))
    else:
        out.append(dict(system="fused_cluster (planner)", params=None, refused=chosen.reason, **base,
                        forward_ms=None, forward_save_ms=None, fwd_bwd_ms=None))
    if (cell, NH, DH) == ("lstm", 1, 768) and B == 16:
        for prm in EXPLICIT:
            plan = runtime.plan_json("fused_cluster", prm)
            with cluster_bwd(False):
                out.append(dict(system="fused_cluster (explicit)", params=prm, **base, **run(plan, cell, NH, DH, dtype, B, T, reps)))
    if quick:
        return out
    return out + baseline_rows(cell, NH, DH, dtype, B, T, reps, base)


def main():
    p = common.bench_parser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS (default: all)")
    p.add_argument("--prebuild", default=None, metavar="GPU_PRESET", help="only build the variants the tests and "
                   "this benchmark need on that preset (e.g. h100-sxm) into the cache, then exit")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--prebuild-scope", default="all", choices=("all", "ablate"),
                   help="with --prebuild: every variant, or only those of --quick --ablate")
    p.add_argument("--ablate", action="store_true", help="also the ABLATIONS rows (timing probes)")
    args = p.parse_args()
    if args.prebuild:
        prebuild(args.prebuild, args.jobs, args.prebuild_scope)
        return
    chosen = CONFIGS if args.configs is None else [CONFIGS[int(i)] for i in args.configs.split(",")]
    if args.quick:
        chosen = chosen[:1]
    rows = []
    for cfg in chosen:
        rows += rows_for(*cfg, args.reps, args.quick)
    if args.ablate:
        rows += ablation_rows(args.reps)
    params = (" params", lambda r: f" {r.get('params') or r.get('refused', '')}", -1, None)  # after two spaces
    common.bench_report(rows, args.out, args.reps, table_columns(system=26, cell=5, dtype=("dt", 4)) + [params])


if __name__ == "__main__":
    main()
