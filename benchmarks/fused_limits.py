"""The largest dense hidden size (one head, NH = 1) that each fused family takes, by the planner's
model of a GPU (no GPU needed: the planner's feasibility constraints, the same ones that route a
shape at run time). Issue 8 asks for "the largest hidden size that still runs fused, per family".

    python benchmarks/fused_limits.py [--gpus h100-sxm,h200,a100-80gb] [--cells lstm,gru] [--B 16]
                                      [--dtypes bf16,fp16] [--out FILE.md]

For each (GPU, cell, dtype, family) the largest H, a multiple of 16 up to --max, for which
planner.plan(cell, B, 1, H, dtype, gpu, families=(family,)) gives that family, found by bisection
above the largest multiple of 128 it takes (R grows as G * H^2: the upper limit is where R no longer
fits), with the plan's tiling at that H and the next multiple's reason for refusing it. These are model limits: the GPU tests run each family up to
1x2048 (fused_grid) / 1x1024 (fused_cluster), not at every limit printed here.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites.common import DTYPES as DT  # noqa: E402
from flashrnn_compile import planner  # noqa: E402

FAMILIES = ("fused_block", "fused_cluster", "fused_grid")
STEP, COARSE = 16, 128


def takes(cell: str, B: int, H: int, dtype: torch.dtype, gpu: str, family: str) -> planner.Plan:
    return planner.plan(cell, B, 1, H, dtype, gpu, families=(family,))


def largest(cell: str, B: int, dtype: torch.dtype, gpu: str, family: str, top: int) -> Tuple[Optional[int], str]:
    """(largest H the family takes or None, the reason the next size up is refused). A family may
    start taking shapes above some H (fused_cluster, fused_grid: not one block's); above the largest
    H on a COARSE grid that it takes, the limit is found by bisection."""
    def ok(H: int) -> bool:
        return takes(cell, B, H, dtype, gpu, family).family == family

    grid = list(range(COARSE, top + 1, COARSE))
    hits = [H for H in grid if ok(H)]
    if not hits:
        return None, refusal(takes(cell, B, grid[-1], dtype, gpu, family).reason, family)
    lo, hi = hits[-1] // STEP, (hits[-1] + COARSE) // STEP  # lo taken, hi refused (or past top)
    if hits[-1] + COARSE > top:
        return hits[-1], f"taken up to --max {top}"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid * STEP):
            lo = mid
        else:
            hi = mid
    return lo * STEP, refusal(takes(cell, B, hi * STEP, dtype, gpu, family).reason, family)


def refusal(reason: str, family: str) -> str:
    """The planner's words on why `family` is infeasible, out of a plan's reason."""
    i = reason.find(f"({family}: ")
    if i < 0:
        return reason
    j = reason.find("]", i)  # the first unmet constraint ends with its bracketed formula
    return reason[i + 1:j + 1 if j > 0 else len(reason)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", default="h100-sxm,h200,a100-80gb")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--max", type=int, default=8192)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    lines = [f"Largest dense hidden size H (NH = 1, B = {a.B}) each fused family takes, by the planner's model "
             f"(`python benchmarks/fused_limits.py --gpus {a.gpus} --cells {a.cells} --dtypes {a.dtypes} "
             f"--B {a.B}`)", "", "| GPU | cell | dtype | family | largest H | tiling there | why not H + 16 (the first constraint the planner names) |",
             "|---|---|---|---|---|---|---|"]
    for gpu in a.gpus.split(","):
        for cell in a.cells.split(","):
            for dt in a.dtypes.split(","):
                for fam in FAMILIES:
                    H, why = largest(cell, a.B, DT[dt], gpu, fam, a.max)
                    tiling = takes(cell, a.B, H, DT[dt], gpu, fam).params if H else "-"
                    why = why.replace("|", "/").replace("\n", " ")
                    lines.append(f"| {gpu} | {cell} | {dt} | {fam} | {H or '-'} | {tiling} | {why[:300]} |")
                    print(lines[-1], flush=True)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
