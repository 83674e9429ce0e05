"""A small forward + backward of every cell and dtype on the alternating kernels (both paths: the
step kernel and cuBLAS), for `compute-sanitizer --tool memcheck` (benchmarks/gpu_check.sh).
Step kernel: DH=7 (unaligned copies) with B=3 (batch tile of 4) and DH=8 (16-byte cp.async copies)
with B=5 (tile of 16); both tiles partly empty. Exits non-zero on a wrong result."""

import itertools
import sys

import torch

from flashrnn_compile import reference, runtime
from flashrnn_compile.cells import CELLS
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import make_inputs  # noqa: E402

STEP, CUBLAS = (runtime.plan_json("alternating", {"STEP_KERNEL": k}) for k in (1, 0))
RUNS = [(STEP, 3, 7), (STEP, 5, 8), (CUBLAS, 3, 7)]  # (plan, B, DH)
worst = 0.0
for cell, dtype, (plan, B, DH) in itertools.product(CELLS, (torch.float32, torch.bfloat16), RUNS):
    gx, R, b, s0, dh, dsT = make_inputs(cell, 5, B, 2, DH, seed=11)
    low = [t.to(dtype).requires_grad_(True) for t in (gx, R, b, s0)]
    for reverse in (False, True):
        h, sT = recurrence(*low, cell=cell, reverse=reverse, plan=plan)
        grads = torch.autograd.grad((h * dh.to(dtype)).sum() + (sT * dsT.to(dtype)).sum(), low)
        h_ref, _, _, _ = reference.forward(gx, R, b, s0, cell, reverse, False)
        worst = max(worst, rel_err(h, h_ref))
        assert all(torch.isfinite(g).all() for g in grads)
torch.cuda.synchronize()
print(f"memcheck case done, worst h error {worst:.2e}")
sys.exit(0 if worst < 3e-2 else 1)
