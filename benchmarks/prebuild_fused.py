"""Build (into the variant cache) every fused_block configuration that tests/gpu/test_fused_block.py
and benchmarks/bench_fused_block.py will ask the planner for, for one GPU preset, and the tests'
explicit tilings (EXPLICIT), and every fused_grid configuration of tests/gpu/test_fused_grid.py and
benchmarks/bench_fused_grid.py (bench_fused_grid.variants), in parallel;
so a device run only loads them. Usage:

    python benchmarks/prebuild_fused.py [--gpu h100-sxm] [--arch 9.0] [--jobs 8] [--families block,grid]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from flashrnn_compile import build, planner  # noqa: E402
from flashrnn_compile.kernels import fused_block  # noqa: E402


def shapes():
    from bench_fused_block import CONFIGS
    from bench_alternating import DT
    from tests.gpu.test_fused_block import PLAN_SHAPES

    out = set(PLAN_SHAPES)
    out |= {(c, B, NH, DH, DT[d]) for c, NH, DH, d, B, _ in CONFIGS}
    for cell in ("lstm", "gru", "elman_tanh", "elman_relu", "slstm"):  # tests/gpu/memcheck_case.py fused_block
        for d in (torch.float16, torch.bfloat16):
            out.add((cell, 3, 2, 16, d))
    return sorted(out, key=str)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gpu", default="h100-sxm")
    p.add_argument("--arch", default="9.0")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--families", default="block,grid", help="which of block, grid to build")
    p.add_argument("--dr-out", action="store_true",
                   help="also each block configuration's FRNN_DR_OUT library (recurrent_layer's default backward)")
    p.add_argument("--recompute", action="store_true",
                   help="with --dr-out, also their FRNN_BWD_RECOMPUTE libraries (recurrent_layer with FLASHRNN_LAYER_RECOMPUTE=1)")
    args = p.parse_args()
    families = set(args.families.split(","))
    configs = {}
    from tests.gpu.test_fused_block import EXPLICIT  # explicit tilings of the tests

    for cell, _, DH, _, params, _ in EXPLICIT:
        for dtype in (torch.float16, torch.bfloat16):
            defs = fused_block.defines(cell, dtype, DH, params)
            configs[repr(sorted(defs.items()))] = defs
    for cell, B, NH, DH, dtype in shapes():
        chosen = planner.plan(cell, B, NH, DH, dtype, gpu=args.gpu, families=("fused_block",))
        if chosen.family != "fused_block":
            print(f"no fused_block plan for {cell} B{B} {NH}x{DH} {dtype}: {chosen.reason}")
            continue
        defs = fused_block.defines(cell, dtype, DH, chosen.params)
        configs[repr(sorted(defs.items()))] = defs
    from bench_fused_grid import prebuild_defines as grid_defines
    from flashrnn_compile.kernels import fused_grid

    if args.dr_out:
        from flashrnn_compile.cells import CELLS

        functors = {spec.functor for spec in CELLS.values() if spec.rhb_grad_is_gx}
        dr_out = [{**d, "FRNN_DR_OUT": 1} for d in configs.values() if d["FRNN_CELL"] in functors]
        if args.recompute:
            one_piece = functors - {CELLS[c].functor for c in fused_block.JUMP_CELLS}
            dr_out += [{**d, "FRNN_BWD_RECOMPUTE": 1} for d in dr_out if d["FRNN_CELL"] in one_piece]
        configs.update({repr(sorted(d.items())): d for d in dr_out})
    todo = [(fused_block.SOURCE, d) for d in configs.values()] if "block" in families else []
    todo += [(fused_grid.SOURCE, d) for d in grid_defines(args.gpu)] if "grid" in families else []
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = list(pool.map(lambda sd: build.ensure_variant(sd[0], sd[1], [args.arch]), todo))
    print(f"{len(paths)} configurations ready in {time.time() - start:.1f} s under {build.cache_root() / 'variants'}")


if __name__ == "__main__":
    main()
