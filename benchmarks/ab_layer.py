"""A/B of recurrent_layer's one-call path (flashrnn_compile/layer.py, FAST_PATH) against F.linear then
recurrence(), and of its chunk count, in one process, interleaved: the layer suite's "ours" layer
(fused_block) forward and forward + backward, CUDA events around each call, median of --reps, the
order of the variants rotated every rep.

    python benchmarks/ab_layer.py [--reps 30] [--rows lstm:bf16:12x64,lstm:fp16:12x64] [--chunks 1,2,4,8]
                                  [--dr-out-chunks 4] [--recompute-chunks 4] [--handles-chunks 4]
                                  [--torch-gemm-chunks 4]

"one call" rows run the plan's own library (layer.DR_OUT off), "DR_OUT" rows the FRNN_DR_OUT
library, "RECOMPUTE" rows it with the lean save (layer.RECOMPUTE), "handles" rows that with a cuBLAS
handle per stream (layer.set_stream_handles), "torch GEMM" rows the lean save with x W^T by
torch.mm before the library call (layer.TORCH_GEMM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites import common, layer as suite  # noqa: E402
from flashrnn_compile import layer, planner, runtime  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rows", default="lstm:bf16:12x64,lstm:fp16:12x64")
    p.add_argument("--chunks", default="1,2,4,8")
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--dr-out-chunks", default="", help="also these chunk counts with layer.DR_OUT (FRNN_DR_OUT libraries)")
    p.add_argument("--recompute-chunks", default="", help="also these chunk counts with DR_OUT and layer.RECOMPUTE")
    p.add_argument("--handles-chunks", default="", help="also these with the lean save and a cuBLAS handle per stream")
    p.add_argument("--torch-gemm-chunks", default="", help="also these with the lean save and x W^T by torch.mm")
    args = p.parse_args()
    dev = torch.device("cuda")
    # (name, chunks (None: F.linear then recurrence()), (layer.DR_OUT, layer.RECOMPUTE, handle per stream,
    # layer.TORCH_GEMM))
    variants = [("linear + recurrence()", None, (False, False, False, False))]
    variants += [(f"one call K={k}", int(k), (False, False, False, False)) for k in args.chunks.split(",") if k]
    variants += [(f"one call K={k} DR_OUT", int(k), (True, False, False, False)) for k in args.dr_out_chunks.split(",") if k]
    variants += [(f"one call K={k} RECOMPUTE", int(k), (True, True, False, False))
                 for k in args.recompute_chunks.split(",") if k]
    variants += [(f"one call K={k} RECOMPUTE handles", int(k), (True, True, True, False))
                 for k in args.handles_chunks.split(",") if k]
    variants += [(f"one call K={k} RECOMPUTE torch GEMM", int(k), (True, True, False, True))
                 for k in args.torch_gemm_chunks.split(",") if k]
    print(f"B{args.B} T1024, fused_block; ms, median of {args.reps}")
    print("| cell | dtype | heads | variant | fwd | fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        cell, dt, heads = row.split(":")
        NH, DH = (int(v) for v in heads.split("x"))
        cfg = suite.Config(cell, dt, args.B, 1024, NH, DH)
        chosen = planner.plan(cell, args.B, NH, DH, common.DTYPES[dt], families=("fused_block",))
        fwd, fwd_bwd = suite.ours_fns(cfg, runtime.plan_json(chosen.family, chosen.params), dev)
        times = {(v, k): [] for v, _, _ in variants for k in ("fwd", "fwd+bwd")}
        for rep in range(args.reps + 3):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for name, chunks, (dr_out, recompute, handles, torch_gemm) in order:
                layer.FAST_PATH, layer.DR_OUT, layer.RECOMPUTE = chunks is not None, dr_out, recompute
                layer.TORCH_GEMM = torch_gemm
                layer.set_stream_handles(handles)
                os.environ["FLASHRNN_LAYER_CHUNKS"] = str(chunks or 1)
                for k, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                    t = common._one_call_ms(fn, dev)
                    if rep >= 3:
                        times[(name, k)].append(t)
        for name, _, _ in variants:
            print(f"| {cell} | {dt} | {heads} | {name} | {statistics.median(times[(name, 'fwd')]):.3f} | "
                  f"{statistics.median(times[(name, 'fwd+bwd')]):.3f} |", flush=True)
    layer.FAST_PATH, layer.DR_OUT, layer.RECOMPUTE, layer.TORCH_GEMM = True, True, True, False
    layer.set_stream_handles(False)
    os.environ.pop("FLASHRNN_LAYER_CHUNKS", None)


if __name__ == "__main__":
    main()
