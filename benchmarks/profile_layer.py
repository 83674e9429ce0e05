"""Where a layer's forward + backward goes: the layer suite's "ours" layer (x W^T + b, then the core
op) under torch.profiler, its CUDA kernels summed by name, beside the CUDA-event time of the whole.

    python benchmarks/profile_layer.py [--cell lstm] [--heads 12x64] [--dtype bf16] [--B 16] [--T 1024]
                                       [--family fused_block] [--reps 20]

Prints one table per run: kernel, calls per iteration, µs per iteration, share of the summed
kernel time; then the CUDA-event median of the whole forward + backward (the gap between the two
is time the GPU idles between kernels). Env knobs (FLASHRNN_FUSED_*) apply as everywhere.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites import common, layer  # noqa: E402
from flashrnn_compile import planner, runtime  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", default="lstm")
    p.add_argument("--heads", default="12x64")
    p.add_argument("--dtype", default="bf16", choices=sorted(common.DTYPES))
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--family", default="fused_block")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    NH, DH = (int(v) for v in args.heads.split("x"))
    cfg = layer.Config(args.cell, args.dtype, args.B, args.T, NH, DH)
    chosen = planner.plan(args.cell, args.B, NH, DH, common.DTYPES[args.dtype], families=(args.family,))
    if chosen.family != args.family:
        raise SystemExit(f"profile_layer: the planner gives no {args.family} plan: {chosen.reason}")
    plan = runtime.plan_json(chosen.family, chosen.params)
    _, fwd_bwd = layer.ours_fns(cfg, plan, torch.device("cuda"))
    for _ in range(5):
        fwd_bwd()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.reps):
            fwd_bwd()
        torch.cuda.synchronize()
    per = collections.defaultdict(lambda: [0, 0.0])  # kernel name -> [calls, total µs]
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name][0] += 1
            per[ev.name][1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    total = sum(us for _, us in per.values())
    env = {k: v for k, v in os.environ.items() if k.startswith("FLASHRNN_")}
    print(f"\n{cfg.cell} {cfg.heads} {cfg.dtype} B{cfg.B} T{cfg.T} {chosen.family} {dict(chosen.params)} env {env}")
    print("| kernel | calls/iter | µs/iter | share |")
    print("|---|---|---|---|")
    for name, (calls, us) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name[:90]} | {calls / args.reps:.0f} | {us / args.reps:.1f} | {100 * us / total:.1f}% |")
    print(f"| **sum of kernels** | | {total / args.reps:.1f} | |")
    times = []
    for _ in range(args.reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fwd_bwd()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1000)
    times.sort()
    print(f"CUDA events, whole fwd+bwd: median {times[len(times) // 2]:.1f} µs over {args.reps}")


if __name__ == "__main__":
    main()
