"""Where the host's time goes in one layer forward + backward (the layer suite's "ours" row):
cProfile over --reps calls, each followed by a synchronisation (its own line), for the one-call
path and for F.linear then recurrence(); the top functions by own time, per call.

    python benchmarks/profile_host.py [--reps 100] [--cell lstm] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites import common, layer as suite  # noqa: E402
from flashrnn_compile import layer, planner, runtime  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    cfg = suite.Config(args.cell, "bf16", 16, 1024, 12, 64)
    chosen = planner.plan(args.cell, 16, 12, 64, common.DTYPES["bf16"], families=("fused_block",))
    _, fwd_bwd = suite.ours_fns(cfg, runtime.plan_json(chosen.family, chosen.params), torch.device("cuda"))
    for fast in (True, False):
        layer.FAST_PATH = fast
        for _ in range(5):
            fwd_bwd()
        torch.cuda.synchronize()
        t_cpu = []
        for _ in range(20):
            t0 = time.perf_counter()
            fwd_bwd()
            t_cpu.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.reps):
            fwd_bwd()
            torch.cuda.synchronize()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(f"\n### {'one-call path' if fast else 'F.linear then recurrence()'}: host time of one call "
              f"(no sync) median {sorted(t_cpu)[10] * 1e6:.0f} us; cProfile over {args.reps} calls (times are totals)")
        print(out.getvalue()[:6000])
    layer.FAST_PATH = True


if __name__ == "__main__":
    main()
