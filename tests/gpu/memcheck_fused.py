"""A small forward + backward of every cell on the fused_block kernels (float16 and bfloat16, both
directions, T=5 B=3 NH=2 DH=16), for compute-sanitizer memcheck and racecheck
(benchmarks/gpu_check.sh). Exits non-zero on a wrong result."""

import sys

import torch

from flashrnn_compile import planner, reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import make_inputs  # noqa: E402

worst = 0.0
for cell in sorted(CELLS):
    for dtype in (torch.float16, torch.bfloat16):
        chosen = planner.plan(cell, 3, 2, 16, dtype, families=("fused_block",))
        assert chosen.family == "fused_block", chosen.reason
        plan = runtime.plan_json("fused_block", chosen.params)
        gx, R, b, s0, dh, dsT = make_inputs(cell, 5, 3, 2, 16, seed=11)
        low = [t.to(dtype).requires_grad_(True) for t in (gx, R, b, s0)]
        for reverse in (False, True):
            h, sT = recurrence(*low, cell=cell, reverse=reverse, plan=plan)
            grads = torch.autograd.grad((h * dh.to(dtype)).sum() + (sT * dsT.to(dtype)).sum(), low)
            h_ref, _, _, _ = reference.forward(gx, R, b, s0, cell, reverse, False)
            worst = max(worst, rel_err(h, h_ref))
            assert all(torch.isfinite(g).all() for g in grads)
torch.cuda.synchronize()
print(f"fused memcheck case done, worst h error {worst:.2e}")
sys.exit(0 if worst < 3e-2 else 1)
