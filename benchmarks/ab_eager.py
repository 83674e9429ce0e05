"""A/B of recurrence()'s eager fast path (ops.EAGER_FAST_PATH, ops._Eager) against the custom-op path,
in one process, interleaved: the layer suite's "ours" layer (x W^T + b, then recurrence()) forward
and forward + backward, CUDA events around each call, median of --reps, the order of the two paths
reversed every other rep.

    python benchmarks/ab_eager.py [--reps 40] [--rows lstm:bf16,gru:bf16,lstm:fp16,slstm:bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites import common, layer  # noqa: E402
from flashrnn_compile import ops, planner, runtime  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--rows", default="lstm:bf16,gru:bf16,lstm:fp16,slstm:bf16")
    args = p.parse_args()
    print("| cell | dtype | 12x64 B16 T1024 | fwd op path | fwd fast path | fwd+bwd op path | fwd+bwd fast path |")
    print("|---|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        cell, dt = row.split(":")
        cfg = layer.Config(cell, dt, 16, 1024, 12, 64)
        chosen = planner.plan(cell, 16, 12, 64, common.DTYPES[dt], families=("fused_block",))
        fwd, fwd_bwd = layer.ours_fns(cfg, runtime.plan_json(chosen.family, chosen.params), torch.device("cuda"))
        times = {(m, k): [] for m in (False, True) for k in ("fwd", "fwd+bwd")}
        for rep in range(args.reps + 5):
            modes = (False, True) if rep % 2 == 0 else (True, False)
            for mode in modes:
                ops.EAGER_FAST_PATH = mode
                for k, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                    t = common._one_call_ms(fn, torch.device("cuda"))
                    if rep >= 5:
                        times[(mode, k)].append(t)
        med = {key: statistics.median(v) for key, v in times.items()}
        print(f"| {cell} | {dt} | {chosen.family} | {med[(False, 'fwd')]:.3f} | {med[(True, 'fwd')]:.3f} | "
              f"{med[(False, 'fwd+bwd')]:.3f} | {med[(True, 'fwd+bwd')]:.3f} |", flush=True)
    ops.EAGER_FAST_PATH = True


if __name__ == "__main__":
    main()
