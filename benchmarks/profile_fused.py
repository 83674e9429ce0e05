"""The fused_block kernels up close (LSTM 12x64 bf16 B16 T1024 unless told otherwise).

    python benchmarks/profile_fused.py            one forward + backward, for `ncu --section
                                                  WarpStateStats ...` in benchmarks/gpu_check.sh
                                                  (PROFILE=1): where a step waits
    python benchmarks/profile_fused.py --time     per-kernel times (torch.profiler) of forward, forward
                                                  with saved states and backward, for the planner's
                                                  tiling and the alternatives in --params

--params takes JSON tilings to compare, e.g. '[{"WARPS": 4, "BATCH_TILE": 8, "R_REG_TILES": 16}]'.
"""

import argparse
import json

import torch

from flashrnn_compile import planner, runtime
from flashrnn_compile.cells import get_cell
from flashrnn_compile.kernels import fused_block
from flashrnn_compile.ops import recurrence


def inputs(cell, T, B, NH, DH, dtype):
    """Random gx [T,B,NH,G,DH], R [NH,G,DH,DH], b [NH,G,DH], s0 [S,B,NH,DH], dh [T,B,NH,DH]."""
    spec = get_cell(cell)
    G, S = spec.num_gates, spec.num_states
    dt = dict(device="cuda", dtype=dtype)
    gx = torch.randn(T, B, NH, G, DH, **dt)
    R = (torch.randn(NH, G, DH, DH, device="cuda") / DH**0.5).to(dtype)
    b = 0.1 * torch.randn(NH, G, DH, **dt)
    s0 = 0.5 * torch.randn(S, B, NH, DH, **dt)
    if cell == "slstm":
        s0[2] = 1.0 + s0[2].abs()
    return gx, R, b, s0, torch.randn(T, B, NH, DH, **dt)


def kernel_times(fn, reps):
    """{kernel name: mean device ms per call of fn} over reps calls (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if ev.device_time_total > 0:
            out[ev.key[:60]] = round(ev.device_time_total / 1000 / reps, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])


def time_configs(cell, T, B, NH, DH, dtype, extra, reps):
    chosen = planner.plan(cell, B, NH, DH, dtype, families=("fused_block",))
    tilings = [dict(chosen.params)] + [p for p in extra if p != dict(chosen.params)]
    gx, R, b, s0, dh = inputs(cell, T, B, NH, DH, dtype)
    dsT = torch.zeros_like(s0)
    for params in tilings:
        try:
            h, sT, si, rh = fused_block.forward(gx, R, b, s0, cell, False, params, True)
        except Exception as e:  # reported, never counted as a time
            print(json.dumps({"cell": cell, "params": params, "error": f"{type(e).__name__}: {e}"[:300]}))
            continue
        row = {"cell": cell, "NHxDH": f"{NH}x{DH}", "B": B, "T": T, "params": params,
               "planner": params == dict(chosen.params),
               "forward": kernel_times(lambda: fused_block.forward(gx, R, b, s0, cell, False, params, False), reps),
               "forward_save": kernel_times(lambda: fused_block.forward(gx, R, b, s0, cell, False, params, True), reps),
               "backward": kernel_times(lambda: fused_block.backward(dh, dsT, gx, R, si, rh, cell, False, params), reps)}
        print(json.dumps(row))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--time", action="store_true")
    p.add_argument("--cell", default="lstm")
    p.add_argument("--shape", default="12,64,16", help="NH,DH,B")
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--params", default="[]")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    NH, DH, B = (int(v) for v in args.shape.split(","))
    if args.time:
        time_configs(args.cell, args.T, B, NH, DH, torch.bfloat16, json.loads(args.params), args.reps)
        return
    chosen = planner.plan(args.cell, B, NH, DH, torch.bfloat16, families=("fused_block",))
    plan = runtime.plan_json(chosen.family, chosen.params)
    gx, R, b, s0, dh = inputs(args.cell, args.T, B, NH, DH, torch.bfloat16)
    leaves = [t.requires_grad_(True) for t in (gx, R, b, s0)]
    h, sT = recurrence(*leaves, cell=args.cell, plan=plan)
    h.backward(dh)
    torch.cuda.synchronize()
    print("profiled", chosen.params)


if __name__ == "__main__":
    main()
