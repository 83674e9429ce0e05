"""Time the alternating kernels (and cuDNN side by side) on the current GPU; print a table.

    python benchmarks/bench_alternating.py [--out results.json] [--reps 20] [--configs 0,2] [--no-variants]

Times are medians of CUDA-event timings after warm-up, on random inputs. Our kernels take the
input pre-activations gx (x W^T is outside the core op, as in FlashRNN); cuDNN's times include
its input projection. Each configuration runs both paths of the family side by side: the step
kernel (STEP_KERNEL=1, one launch per step) and cuBLAS (STEP_KERNEL=0, GEMM + pointwise per step).
"""

from __future__ import annotations

import os
import statistics

import torch

from flashrnn_compile import runtime
from flashrnn_compile.cells import get_cell
from flashrnn_compile.ops import recurrence
from suites import common

PATHS = {"ours step kernel": runtime.plan_json("alternating", {"STEP_KERNEL": 1}),
         "ours cuBLAS": runtime.plan_json("alternating", {"STEP_KERNEL": 0})}
PLAN = PATHS["ours step kernel"]  # what bench_fused_block compares against
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

CONFIGS = [  # cell, NH, DH, dtype, B, T
    ("lstm", 1, 768, "bf16", 16, 1024),
    ("lstm", 12, 64, "bf16", 16, 1024),
    ("gru", 1, 768, "bf16", 16, 1024),
    ("lstm", 1, 768, "fp16", 16, 1024),
    ("slstm", 12, 64, "bf16", 16, 1024),
]


def timeit(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def core_inputs(cell, NH, DH, dtype, B, T, dev="cuda"):
    """Random inputs of the core op: gx, R (scaled by DH**-0.5), b, s0 (sLSTM's n positive)."""
    spec = get_cell(cell)
    G, S = spec.num_gates, spec.num_states
    gx = torch.randn(T, B, NH, G, DH, device=dev, dtype=dtype)  # [T, B, NH, G, DH]
    R = (torch.randn(NH, G, DH, DH, device=dev) / DH**0.5).to(dtype)  # [NH, G, DH, DH]
    b = 0.1 * torch.randn(NH, G, DH, device=dev, dtype=dtype)  # [NH, G, DH]
    s0 = 0.5 * torch.randn(S, B, NH, DH, device=dev, dtype=dtype)  # [S, B, NH, DH]
    if cell == "slstm":
        s0[2] = 1.0 + s0[2].abs()
    return gx, R, b, s0


def ours(plan, cell, NH, DH, dtype, B, T, reps):
    """Forward, forward keeping states, and forward+backward of the core op under `plan`, ms."""
    dev = "cuda"
    gx, R, b, s0 = core_inputs(cell, NH, DH, dtype, B, T, dev)
    dh = torch.randn(T, B, NH, DH, device=dev, dtype=dtype)
    fwd = lambda: torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, False)  # noqa: E731
    fwd_save = lambda: torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, True)  # noqa: E731
    leaves = [t.detach().requires_grad_(True) for t in (gx, R, b, s0)]

    def fwd_bwd():
        h, _ = recurrence(*leaves, cell=cell, plan=plan)
        torch.autograd.grad(h, leaves, dh)

    return {"forward_ms": timeit(fwd, reps), "forward_save_ms": timeit(fwd_save, reps),
            "fwd_bwd_ms": timeit(fwd_bwd, reps)}


def cudnn(cell, H, dtype, B, T, reps):
    mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H).to("cuda", dtype)
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(T, B, H, device="cuda", dtype=dtype)

    def fwd():
        with torch.no_grad():
            mod(x)

    def fwd_bwd():
        y, _ = mod(x)
        y.backward(dy)

    return {"forward_ms": timeit(fwd, reps), "fwd_bwd_ms": timeit(fwd_bwd, reps)}


# Step-kernel launch settings tried on the first configuration (dense LSTM 1x768 bf16 B=16),
# through the kernels' tuning overrides (csrc/alternating/step.cuh: env_int); same results.
# FLASHRNN_STEP_KW sets the warps per block of the forward and the backward kernel alike.
VARIANTS = [
    ("step: no PDL", {"FLASHRNN_STEP_PDL": "0"}),
    ("step: chunked", {"FLASHRNN_STEP_ALL_IN": "0"}),
    ("step: KW=4", {"FLASHRNN_STEP_KW": "4"}),
    ("step: KW=6", {"FLASHRNN_STEP_KW": "6"}),
]


def forward_only(plan, cell, NH, DH, dtype, B, T, reps):
    """Forward (inference) and forward keeping states of the core op under `plan`, ms."""
    gx, R, b, s0 = core_inputs(cell, NH, DH, dtype, B, T)
    fwd = lambda: torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, False)  # noqa: E731
    fwd_save = lambda: torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, True)  # noqa: E731
    return {"forward_ms": timeit(fwd, reps), "forward_save_ms": timeit(fwd_save, reps), "fwd_bwd_ms": None}


ALT = PATHS["ours step kernel"]  # the step kernel, for the fused families' benches


def baseline_rows(cell, NH, DH, dtype, B, T, reps, base):
    """The rows a fused family's bench sets beside its own: the alternating step kernel, and cuDNN
    in fp16 and bf16 for a dense (NH = 1) LSTM or GRU (its times include the input projection)."""
    out = [dict(system="alternating step", params=None, **base, **ours(ALT, cell, NH, DH, dtype, B, T, reps))]
    if NH == 1 and cell in ("lstm", "gru"):
        for cdt in ("fp16", "bf16"):
            c = cudnn(cell, DH, DT[cdt], B, T, reps)
            out.append(dict(system=f"cuDNN nn.{cell.upper()} {cdt}", params=None, **{**base, "dtype": cdt},
                            forward_save_ms=None, **c))
    return out


def variants(cell, NH, DH, dtype, B, T, reps):
    """Rows of the step kernel under each of VARIANTS (environment restored after each)."""
    rows = []
    for name, env in VARIANTS:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            r = ours(PATHS["ours step kernel"], cell, NH, DH, DT[dtype], B, T, reps)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        rows.append(dict(system=name, cell=cell, heads=f"{NH}x{DH}", dtype=dtype, B=B, T=T, **r))
    return rows


def main():
    p = common.bench_parser()
    p.add_argument("--no-variants", action="store_true", help="skip the step-kernel launch-setting rows")
    p.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS (default: all)")
    args = p.parse_args()
    chosen = CONFIGS if args.configs is None else [CONFIGS[int(i)] for i in args.configs.split(",")]
    rows = []
    if not args.no_variants:
        rows += variants(*CONFIGS[0], args.reps)
    for cell, NH, DH, dt, B, T in chosen:
        for system, plan in PATHS.items():
            r = ours(plan, cell, NH, DH, DT[dt], B, T, args.reps)
            rows.append(dict(system=system, cell=cell, heads=f"{NH}x{DH}", dtype=dt, B=B, T=T, **r))
        if NH == 1 and cell in ("lstm", "gru") and dt != "fp32":
            c = cudnn(cell, DH, DT[dt], B, T, args.reps)
            rows.append(dict(system="cuDNN nn." + cell.upper(), cell=cell, heads=f"1x{DH}", dtype=dt, B=B, T=T,
                             forward_save_ms=None, **c))
    common.bench_report(rows, args.out, args.reps, table_columns(system=20, cell=6, dtype=("dtype", 5), digits=2))


def tested_variants(family: str, t, configs, gpu: str) -> set:
    """(cell, dtype, DH, params items) of a fused family's GPU test module `t` (its PLANNED shapes
    and DTYPES, every cell on its EXPLICIT tilings) and of a bench's `configs` (cell, NH, DH, dtype
    name, B, T) with the planner's tiling for the preset `gpu`: what --prebuild builds."""
    from flashrnn_compile import planner

    out = set()
    planned = [(c, nh, dh, b, d) for c, nh, dh, b in t.PLANNED for d in t.DTYPES]
    planned += [(c, nh, dh, b, DT[d]) for c, nh, dh, d, b, _ in configs]
    for cell, NH, DH, B, dtype in planned:
        chosen = planner.plan(cell, B, NH, DH, dtype, gpu=gpu, families=(family,))
        if chosen.family == family:
            out.add((cell, dtype, DH, tuple(sorted(chosen.params.items()))))
    for cell in sorted(t.CELLS):
        for NH, DH, B, prm, _ in t.EXPLICIT:
            for dtype in t.DTYPES:
                out.add((cell, dtype, DH, tuple(sorted(prm.items()))))
    return out


def table_columns(system: int, cell: int, dtype=("dtype", 5), digits: int = 3):
    """The columns of the bench_*.py tables (suites.common.text_table): the system and cell columns
    `system` and `cell` wide, the dtype column (header, width), times with `digits` decimals."""
    dtype_header, dtype_width = dtype
    return [("system", "system", -system, None), ("cell", "cell", -cell, None), ("NHxDH", "heads", -7, None),
            (dtype_header, "dtype", -dtype_width, None), ("B", "B", 3, None), ("T", "T", 5, None),
            ("fwd", "forward_ms", 8, digits), ("fwd+save", "forward_save_ms", 9, digits),
            ("fwd+bwd", "fwd_bwd_ms", 8, digits)]


if __name__ == "__main__":
    main()
