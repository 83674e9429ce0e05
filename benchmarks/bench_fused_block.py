"""Time the fused_block kernels beside the alternating kernels and cuDNN on the current GPU.

    python benchmarks/bench_fused_block.py [--out results.json] [--reps 10] [--no-alternating]

Medians of CUDA-event timings after warm-up, random inputs, tiling from the planner for this GPU
(fused_block only). Our kernels take the input pre-activations gx (x W^T is outside the core op,
as in FlashRNN); cuDNN's times include its input projection (nn.LSTM 1x768).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_alternating import DT, cudnn, ours  # noqa: E402

from flashrnn_compile import planner, runtime  # noqa: E402

CONFIGS = [  # cell, NH, DH, dtype, B, T
    ("lstm", 12, 64, "bf16", 16, 1024),
    ("lstm", 24, 32, "bf16", 16, 1024),
    ("lstm", 6, 128, "bf16", 16, 1024),
    ("gru", 12, 64, "bf16", 16, 1024),
    ("elman_tanh", 12, 64, "bf16", 16, 1024),
    ("slstm", 12, 64, "bf16", 16, 1024),
    ("lstm", 12, 64, "bf16", 1, 1024),
    ("lstm", 12, 64, "bf16", 64, 1024),
    ("lstm", 12, 64, "bf16", 256, 1024),
    ("lstm", 12, 64, "fp16", 16, 1024),
]  # float32 is not a fused_block dtype (kernels/fused_block.py TAKES)
ALTERNATING = [("lstm", 12, 64, "bf16", 16, 1024)]


def fused_plan(cell, NH, DH, dtype, B, gpu=None):
    chosen = planner.plan(cell, B, NH, DH, dtype, gpu=gpu, families=("fused_block",))
    return chosen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--no-alternating", action="store_true")
    args = p.parse_args()
    rows = []
    for cell, NH, DH, dt, B, T in CONFIGS:
        chosen = fused_plan(cell, NH, DH, DT[dt], B)
        plan = runtime.plan_json(chosen.family, chosen.params)
        try:
            r = ours(plan, cell, NH, DH, DT[dt], B, T, args.reps)
        except Exception as e:  # reported in the table, never counted as a time
            print(f"FAILED {cell} {NH}x{DH} {dt} B{B}: {type(e).__name__}: {e}")
            r = {"forward_ms": None, "forward_save_ms": None, "fwd_bwd_ms": None, "error": str(e)[:300]}
        rows.append(dict(system=f"ours {chosen.family}", cell=cell, heads=f"{NH}x{DH}", dtype=dt, B=B, T=T,
                         params=chosen.params, **r))
    if not args.no_alternating:
        for cell, NH, DH, dt, B, T in ALTERNATING:
            r = ours(runtime.plan_json("alternating"), cell, NH, DH, DT[dt], B, T, args.reps)
            rows.append(dict(system="ours alternating", cell=cell, heads=f"{NH}x{DH}", dtype=dt, B=B, T=T, **r))
    for dt in ("fp16", "bf16"):
        c = cudnn("lstm", 768, DT[dt], 16, 1024, args.reps)
        rows.append(dict(system="cuDNN nn.LSTM", cell="lstm", heads="1x768", dtype=dt, B=16, T=1024,
                         forward_save_ms=None, **c))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{result['device']}, torch {result['torch']}; median ms over {args.reps} runs")
    print(f"{'system':<18} {'cell':<10} {'NHxDH':<7} {'dtype':<5} {'B':>3} {'T':>5} {'fwd':>8} {'fwd+save':>9} {'fwd+bwd':>8}")
    for r in rows:
        print(f"{r['system']:<18} {r['cell']:<10} {r['heads']:<7} {r['dtype']:<5} {r['B']:>3} {r['T']:>5} "
              f"{f(r['forward_ms']):>8} {f(r['forward_save_ms']):>9} {f(r['fwd_bwd_ms']):>8}")


if __name__ == "__main__":
    main()
