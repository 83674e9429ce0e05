"""Where a layer's forward + backward goes: the layer suite's "ours" layer (x W^T + b, then the core
op) under torch.profiler, its CUDA kernels summed by name, beside the CUDA-event time of the whole.

    python benchmarks/profile_layer.py [--cell lstm] [--heads 12x64] [--dtype bf16] [--B 16] [--T 1024]
                                       [--family fused_block] [--reps 20]

Prints one table per run: kernel, calls per iteration, µs per iteration, share of the summed
kernel time; then the CUDA-event median of the whole forward + backward (the gap between the two
is time the GPU idles between kernels); where the GPU idles (the gaps between consecutive kernels of
one iteration, by the kernels on either side); the CPU time of one call without a synchronisation
(when it is near the CUDA-event time, the launches, not the kernels, set the pace); and every
synchronising call one iteration makes (torch.cuda.set_sync_debug_mode). Env knobs
(FLASHRNN_FUSED_*) apply as everywhere.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
import warnings

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
        for _ in range(args.reps):  # synchronised per iteration, as the harness times it
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
    print_gaps(prof, args.reps)
    cpu = []
    for _ in range(args.reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fwd_bwd()
        cpu.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    print(f"CPU time of one fwd+bwd call (no synchronisation inside it): median {statistics.median(cpu):.1f} µs")
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd_bwd()
    torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message).lower()]
    print(f"synchronising calls in one fwd+bwd: {len(syncs)}" + "".join(f"\n  {m}" for m in syncs))


def print_gaps(prof, reps: int) -> None:
    """The GPU's idle time between consecutive kernels of one iteration (the profiled loop
    synchronises after each: the same number of kernels each), summed per (kernel before, after)."""
    kernels = sorted((ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda ev: ev.time_range.start)
    per_iter = len(kernels) // reps
    gaps = collections.defaultdict(float)
    for i, (before, after) in enumerate(zip(kernels, kernels[1:])):
        if per_iter and (i + 1) % per_iter == 0:
            continue  # the pause between two iterations
        gap = after.time_range.start - before.time_range.end
        if gap > 0:
            gaps[(before.name[:50], after.name[:50])] += gap
    print("| idle after | before | µs/iter |")
    print("|---|---|---|")
    for (b, a), us in sorted(gaps.items(), key=lambda kv: -kv[1])[:8]:
        print(f"| {b} | {a} | {us / reps:.1f} |")
    print(f"| **all gaps** | | {sum(gaps.values()) / reps:.1f} |")


if __name__ == "__main__":
    main()
