"""One forward and one backward of the fused_block kernels (LSTM 12x64 bf16 B16 T1024), for
`ncu --section WarpStateStats ...` in benchmarks/gpu_check.sh (PROFILE=1): where a step waits."""

import torch

from flashrnn_compile import planner, runtime
from flashrnn_compile.ops import recurrence

T, B, NH, DH, G = 1024, 16, 12, 64, 4
chosen = planner.plan("lstm", B, NH, DH, torch.bfloat16, families=("fused_block",))
plan = runtime.plan_json(chosen.family, chosen.params)
dt = dict(device="cuda", dtype=torch.bfloat16)
gx = torch.randn(T, B, NH, G, DH, **dt, requires_grad=True)  # [T, B, NH, G, DH]
R = (torch.randn(NH, G, DH, DH, device="cuda") / DH**0.5).to(torch.bfloat16).requires_grad_(True)  # [NH, G, DH, DH]
b = torch.zeros(NH, G, DH, **dt, requires_grad=True)  # [NH, G, DH]
s0 = torch.zeros(2, B, NH, DH, **dt, requires_grad=True)  # [S, B, NH, DH]
h, sT = recurrence(gx, R, b, s0, cell="lstm", plan=plan)
h.sum().backward()
torch.cuda.synchronize()
print("profiled", chosen.params)
