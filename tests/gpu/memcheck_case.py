"""A small forward + backward of every cell on one kernel family, both directions, T=5 NH=2, for
`compute-sanitizer --tool memcheck` and `--tool racecheck` (benchmarks/gpu_check.sh). Exits
non-zero on a wrong result.

    python tests/gpu/memcheck_case.py alternating   # float32 + bfloat16; the step kernel at DH=7
        (unaligned copies) B=3 (batch tile of 4) and DH=8 (16-byte cp.async copies) B=5 (forward
        tile of 16, backward tile of 8), all tiles partly empty; the cuBLAS path at DH=7 B=3
    python tests/gpu/memcheck_case.py fused_block   # float16 + bfloat16, B=3 DH=16, tiling from
        the planner
"""

import itertools
import sys

import torch

from flashrnn_compile import planner, reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import make_inputs  # noqa: E402

T, NH = 5, 2


def worst_error(plan: str, cell: str, dtype: torch.dtype, B: int, DH: int) -> float:
    """Worst relative error of h over both directions; gradients must be finite."""
    gx, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed=11)
    low = [t.to(dtype).requires_grad_(True) for t in (gx, R, b, s0)]
    worst = 0.0
    for reverse in (False, True):
        h, sT = recurrence(*low, cell=cell, reverse=reverse, plan=plan)
        grads = torch.autograd.grad((h * dh.to(dtype)).sum() + (sT * dsT.to(dtype)).sum(), low)
        h_ref, _, _, _ = reference.forward(gx, R, b, s0, cell, reverse, False)
        worst = max(worst, rel_err(h, h_ref))
        assert all(torch.isfinite(g).all() for g in grads), (plan, cell, dtype, reverse)
    return worst


def alternating_cases():
    step, cublas = (runtime.plan_json("alternating", {"STEP_KERNEL": k}) for k in (1, 0))
    for cell, dtype, (plan, B, DH) in itertools.product(
        CELLS, (torch.float32, torch.bfloat16), [(step, 3, 7), (step, 5, 8), (cublas, 3, 7)]
    ):
        yield plan, cell, dtype, B, DH


def fused_block_cases():
    for cell, dtype in itertools.product(sorted(CELLS), (torch.float16, torch.bfloat16)):
        chosen = planner.plan(cell, 3, NH, 16, dtype, families=("fused_block",))
        assert chosen.family == "fused_block", chosen.reason
        yield runtime.plan_json("fused_block", chosen.params), cell, dtype, 3, 16


CASES = {"alternating": alternating_cases, "fused_block": fused_block_cases}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(CASES)}}}")
    worst = max(worst_error(*case) for case in CASES[sys.argv[1]]())
    torch.cuda.synchronize()
    print(f"{sys.argv[1]} memcheck case done, worst h error {worst:.2e}")
    sys.exit(0 if worst < 3e-2 else 1)
