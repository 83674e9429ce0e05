"""Time the fused_block kernels beside the alternating kernels and cuDNN on the current GPU.

    python benchmarks/bench_fused_block.py [--out results.json] [--reps 10] [--no-alternating]
    python benchmarks/bench_fused_block.py --layer [--out layer.json]   the layer suite's timing of
        our fused_block rows only (x W^T + b then the op; forward, and forward+backward to x, W, b_in,
        R, b: benchmarks/suites/layer.py ours_fns with its timing settings), plus one profiled
        forward+backward of LSTM 12x64 (device time per kernel, and the GPU-idle share of the call)

Medians of CUDA-event timings after warm-up, random inputs, tiling from the planner for this GPU
(fused_block only). Our kernels take the input pre-activations gx (x W^T is outside the core op,
as in FlashRNN); cuDNN's times include its input projection (nn.LSTM 1x768).
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_alternating import DT, cudnn, ours, table_columns  # noqa: E402
from suites import common  # noqa: E402

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


# the layer suite's headline rows that run on fused_block: cell, dtype, B, NH, DH (T = 1024)
LAYER_ROWS = [("lstm", "bf16", 16, 12, 64), ("lstm", "bf16", 16, 24, 32), ("gru", "bf16", 16, 12, 64),
              ("gru", "bf16", 16, 24, 32), ("lstm", "fp16", 16, 12, 64), ("lstm", "bf16", 1, 12, 64),
              ("lstm", "bf16", 64, 12, 64), ("lstm", "bf16", 256, 12, 64)]


def layer_rows():
    """Each LAYER_ROWS row timed as the layer suite times 'ours fused_block' (same callables, same
    `common.measure` settings), so the numbers compare with `benchmarks.run --suite layer`."""
    from suites import common, layer

    out = []
    for cell, dt, B, NH, DH in LAYER_ROWS:
        cfg = layer.Config(cell, dt, B, 1024, NH, DH)
        chosen = fused_plan(cell, NH, DH, DT[dt], B)
        fwd, fwd_bwd = layer.ours_fns(cfg, runtime.plan_json(chosen.family, chosen.params), "cuda")
        timing = dict(warmup=3, min_reps=10, max_reps=50, target_s=0.5)
        f, fb = common.measure(fwd, "cuda", **timing), common.measure(fwd_bwd, "cuda", **timing)
        out.append(dict(cell=cell, dtype=dt, B=B, heads=f"{NH}x{DH}", params=chosen.params,
                        fwd_ms=round(f.median_ms, 4), fwd_bwd_ms=round(fb.median_ms, 4)))
        print(json.dumps(out[-1]), flush=True)
    return out


def layer_profile(cell="lstm", dt="bf16", B=16, NH=12, DH=64):
    """Device time per kernel of one forward and of one forward+backward layer call."""
    from suites import layer

    cfg = layer.Config(cell, dt, B, 1024, NH, DH)
    chosen = fused_plan(cell, NH, DH, DT[dt], B)
    fwd, fwd_bwd = layer.ours_fns(cfg, runtime.plan_json(chosen.family, chosen.params), "cuda")
    rows = []
    for what, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        reps = 5
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        kernels = {ev.key[:70]: round(ev.device_time_total / 1000 / reps, 4) for ev in prof.key_averages()
                   if ev.device_time_total > 0}
        kernels = dict(sorted(kernels.items(), key=lambda kv: -kv[1]))
        rows.append({"profile": f"{cell} {NH}x{DH} {dt} B{B} {what}",
                     "device_ms_per_call": round(sum(kernels.values()), 4), "kernels": kernels})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    p = common.bench_parser()
    p.add_argument("--no-alternating", action="store_true")
    p.add_argument("--layer", action="store_true")
    args = p.parse_args()
    if args.layer:
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": layer_rows(),
                  "profile": layer_profile()}
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        return
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
    common.bench_report(rows, args.out, args.reps, table_columns(system=18, cell=10))


if __name__ == "__main__":
    main()
