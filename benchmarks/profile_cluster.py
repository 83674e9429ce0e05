"""Where a fused_cluster forward step's time goes, phase by phase (SM clocks, FRNN_CLUSTER_PROFILE).

    python benchmarks/profile_cluster.py [--knobs SYNC=0,...] [--prebuild h200]
    python benchmarks/profile_cluster.py --summarize LOG    the means over the blocks, per warp (markdown)

For each configuration: the planner's tiling built with PROFILE=1, one warm-up launch and one
profiled launch (forward, then forward keeping states). Lane 0 of every warp of the first cluster
prints one line: the mean clocks a step spends in each phase of fused_cluster.cuh's forward loop
(0 prefetch and copy-read wait, 1 waiting for the peers' h, 2 MMAs, 3 partial-sum stores, 4 gx
wait and block barrier, 5 cell, 6 send) and their sum; then forward + the own backward, whose
lines (`bwd`) split its step: 0 the peers' partials, 1 cell, 2 next inputs and barrier, 3 MMAs,
4 partial-sum stores, 5 send. The results of a profiled launch are the
kernel's (the probe only reads the clock).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_alternating import core_inputs, recurrence  # noqa: E402

from flashrnn_compile import planner, runtime  # noqa: E402

CONFIGS = [("lstm", 1, 768, torch.bfloat16, 16, 1024), ("gru", 1, 768, torch.bfloat16, 16, 1024)]


def profiled(cell, B, NH, DH, dtype, knobs, gpu=None):
    chosen = planner.plan(cell, B, NH, DH, dtype, gpu=gpu, families=("fused_cluster",))
    if chosen.family != "fused_cluster":
        raise SystemExit(f"no fused_cluster plan for {cell} {NH}x{DH}: {chosen.reason}")
    return {**chosen.params, **knobs, "PROFILE": 1}


def summarize(path: str) -> str:
    """Markdown tables of a profile log: per section and kernel, each warp's mean clocks a step per
    phase over the blocks that printed, and their sum."""
    sec, data = None, collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.startswith("=== end"):
                sec = None
            elif line.startswith("==="):
                sec = line.split(" params")[0][4:].strip()
            else:
                m = re.match(r"(fwd|bwd) block (\d+) warp (\d+): (.*) \| (\d+)", line)
                if m and sec:
                    data[(sec, m.group(1))].append((int(m.group(3)), [int(v) for v in m.group(4).split()], int(m.group(5))))
    out = []
    for (name, kernel), rows in data.items():
        n = 7 if kernel == "fwd" else 6
        out += [f"{name}, {kernel} ({len({r[0] for r in rows})} warps, {len(rows)} lines)", "",
                "| warp | " + " | ".join(f"phase {i}" for i in range(n)) + " | step |", "|---" * (n + 2) + "|"]
        for w in sorted({r[0] for r in rows}):
            rr = [r for r in rows if r[0] == w]
            cells = [str(round(statistics.mean(r[1][i] for r in rr))) for i in range(n)]
            out.append(f"| {w} | " + " | ".join(cells) + f" | {round(statistics.mean(r[2] for r in rr))} |")
        out.append("")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prebuild", default=None, metavar="GPU_PRESET")
    p.add_argument("--summarize", default=None, metavar="LOG", help="print the tables of a profile log, then exit")
    p.add_argument("--knobs", default="", help="more kernel switches, e.g. SYNC=0 (fused_cluster.KNOBS)")
    a = p.parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        return
    knobs = {k: int(v) for k, v in (kv.split("=") for kv in a.knobs.split(",") if kv)}
    if a.prebuild:
        from flashrnn_compile import build
        from flashrnn_compile.kernels import fused_cluster

        for cell, NH, DH, dtype, B, T in CONFIGS:
            prm = profiled(cell, B, NH, DH, dtype, knobs, a.prebuild)
            build.ensure_variant(fused_cluster.SOURCE, fused_cluster.defines(cell, dtype, DH, prm))
            build.ensure_variant(fused_cluster.SOURCE, fused_cluster.backward_defines(cell, dtype, DH, prm))
        return
    import flashrnn_compile  # noqa: F401  (registers torch.ops.flashrnn)

    for cell, NH, DH, dtype, B, T in CONFIGS:
        prm = profiled(cell, B, NH, DH, dtype, knobs)
        plan = runtime.plan_json("fused_cluster", prm)
        gx, R, b, s0 = core_inputs(cell, NH, DH, dtype, B, T)
        for save in (False, True):
            torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, save)
            torch.cuda.synchronize()
            print(f"=== {cell} {NH}x{DH} B{B} T{T} {dtype} save={save} params={prm}", flush=True)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, cell, False, plan, save)
            end.record()
            end.synchronize()
            print(f"=== end: {start.elapsed_time(end):.3f} ms (printf included)", flush=True)
        # forward + the family's own backward (its lines: `bwd ...`)
        leaves = [t.detach().requires_grad_(True) for t in (gx, R, b, s0)]
        dh = torch.randn(T, B, NH, DH, device="cuda", dtype=dtype)
        for rep in range(2):
            if rep:
                print(f"=== {cell} {NH}x{DH} B{B} T{T} {dtype} fwd+bwd params={prm}", flush=True)
            h, _ = recurrence(*leaves, cell=cell, plan=plan)
            torch.autograd.grad(h, leaves, dh)
            torch.cuda.synchronize()
        print("=== end", flush=True)


if __name__ == "__main__":
    main()
