"""A/B of recurrent_layer's one-call path (flashrnn_compile/layer.py, FAST_PATH) against F.linear then
recurrence(), and of its chunk count, in one process, interleaved: the layer suite's "ours" layer
(fused_block) forward and forward + backward, CUDA events around each call, median of --reps, the
order of the variants rotated every rep.

    python benchmarks/ab_layer.py [--reps 30] [--rows lstm:bf16:12x64,lstm:fp16:12x64] [--chunks 1,2,4,8]
                                  [--dr-out-chunks 4] [--recompute-chunks 4] [--fwd-chunks 1,3]
                                  [--fwd-chunks-bwd 4]

"one call" rows run the plan's own library (layer.DR_OUT off), "DR_OUT" rows the FRNN_DR_OUT
library, "RECOMPUTE" rows it with the lean save (layer.RECOMPUTE), "fwd chunks" rows the lean save
with the forward in that many time chunks (layer.FWD_CHUNKS; backward chunks --fwd-chunks-bwd; the
other rows take the default, min(3, T // 256)).
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
    p.add_argument("--fwd-chunks", default="", help="also the lean save with the forward in these many time chunks")
    p.add_argument("--fwd-chunks-bwd", type=int, default=4, help="the backward's chunks of the --fwd-chunks rows")
    args = p.parse_args()
    dev = torch.device("cuda")
    # (name, chunks (None: F.linear then recurrence()), (layer.DR_OUT, layer.RECOMPUTE, layer.FWD_CHUNKS))
    variants = [("linear + recurrence()", None, (False, False, None))]
    variants += [(f"one call K={k}", int(k), (False, False, None)) for k in args.chunks.split(",") if k]
    variants += [(f"one call K={k} DR_OUT", int(k), (True, False, None)) for k in args.dr_out_chunks.split(",") if k]
    variants += [(f"one call K={k} RECOMPUTE", int(k), (True, True, None)) for k in args.recompute_chunks.split(",") if k]
    variants += [(f"one call K={args.fwd_chunks_bwd} RECOMPUTE fwd chunks {f}", args.fwd_chunks_bwd, (True, True, int(f)))
                 for f in args.fwd_chunks.split(",") if f]
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
            for name, chunks, (dr_out, recompute, fwd_chunks) in order:
                layer.FAST_PATH, layer.DR_OUT, layer.RECOMPUTE = chunks is not None, dr_out, recompute
                layer.FWD_CHUNKS = fwd_chunks
                os.environ["FLASHRNN_LAYER_CHUNKS"] = str(chunks or 1)
                for k, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                    t = common._one_call_ms(fn, dev)
                    if rep >= 3:
                        times[(name, k)].append(t)
        for name, _, _ in variants:
            print(f"| {cell} | {dt} | {heads} | {name} | {statistics.median(times[(name, 'fwd')]):.3f} | "
                  f"{statistics.median(times[(name, 'fwd+bwd')]):.3f} |", flush=True)
    layer.FAST_PATH, layer.DR_OUT, layer.RECOMPUTE, layer.FWD_CHUNKS = True, True, True, None
    os.environ.pop("FLASHRNN_LAYER_CHUNKS", None)


if __name__ == "__main__":
    main()
