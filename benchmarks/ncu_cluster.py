"""A driver for ncu on the fused_cluster kernels: --calls forward calls (no gradient) of
recurrence() over random gx with the planner's fused_cluster plan (LSTM 1x768 bf16 B16 T1024 by
default), or with --backward forward and backward calls (the family's own backward kernel), so
that ncu can pick one launch of the cluster kernel.

    ncu --section WarpStateStats --section SourceCounters -k regex:forward --launch-skip 1 -c 1 \\
        -o OUT python3 benchmarks/ncu_cluster.py
    (--backward: -k regex:backward_kernel)
    ncu -i OUT.ncu-rep --page source --csv --print-source sass > OUT.csv; python3 benchmarks/ncu_stalls.py OUT.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.layer_case import DT  # noqa: E402
from benchmarks.profile_fused import inputs  # noqa: E402
from flashrnn_compile import planner, runtime  # noqa: E402
from flashrnn_compile.ops import recurrence  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--heads", default="1x768", help="NHxDH")
    p.add_argument("--dtype", default="bf16", choices=sorted(DT))
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--backward", action="store_true", help="forward and backward calls (gradients of all inputs)")
    p.add_argument("--params", default="{}", help="JSON merged into the planner's params (the kernel's knobs)")
    a = p.parse_args()
    NH, DH = (int(v) for v in a.heads.split("x"))
    chosen = planner.plan(a.cell, a.B, NH, DH, DT[a.dtype], families=("fused_cluster",))
    assert chosen.family == "fused_cluster", chosen.reason
    params = {**chosen.params, **json.loads(a.params)}
    plan = runtime.plan_json(chosen.family, params)
    gx, R, b, s0, _ = inputs(a.cell, a.T, a.B, NH, DH, DT[a.dtype])
    if a.backward:
        leaves = [t.detach().requires_grad_(True) for t in (gx, R, b, s0)]
        for _ in range(a.calls):
            h, _ = recurrence(*leaves, cell=a.cell, plan=plan)
            torch.autograd.grad(h, leaves, torch.ones_like(h))
    else:
        with torch.no_grad():
            for _ in range(a.calls):
                recurrence(gx, R, b, s0, cell=a.cell, plan=plan)
    torch.cuda.synchronize()
    print(f"{a.calls} {'forward+backward' if a.backward else 'forward'} calls, {a.cell} {a.heads} {a.dtype} "
          f"B{a.B} T{a.T}, {params}")


if __name__ == "__main__":
    main()
