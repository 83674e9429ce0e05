"""A driver for ncu: `--calls` recurrent_layer fwd+bwd calls of the layer suite's "ours" layer (LSTM
12x64 bf16 B16 T1024 by default, the one-call path with its defaults: DR_OUT, the lean save), so
that ncu can pick one forward_kernel / backward_kernel launch (each call: 1 forward, K backward).

    ncu --section WarpStateStats --section SourceCounters -k regex:backward_kernel --launch-skip 8 -c 1 \
        -o OUT python3 benchmarks/ncu_layer.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flashrnn_compile import get_cell, layer, planner, recurrent_layer, runtime  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--heads", default="12x64")
    p.add_argument("--dtype", default="bf16", choices=sorted(DT))
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--T", type=int, default=1024)
    a = p.parse_args()
    dev, dt = torch.device("cuda"), DT[a.dtype]
    NH, DH = (int(v) for v in a.heads.split("x"))
    spec = get_cell(a.cell)
    G, S, H = spec.num_gates, spec.num_states, NH * DH

    def rnd(*shape, scale=1.0, grad=True):
        return (torch.randn(*shape, device=dev) * scale).to(dt).requires_grad_(grad)

    x, W, b_in = rnd(a.T, a.B, H), rnd(NH * G * DH, H, scale=H**-0.5), rnd(NH * G * DH, scale=0.1)
    R, b, s0 = rnd(NH, G, DH, DH, scale=DH**-0.5), rnd(NH, G, DH, scale=0.1), rnd(S, a.B, NH, DH, scale=0.5, grad=False)
    dh = torch.randn(a.T, a.B, NH, DH, device=dev).to(dt)
    chosen = planner.plan(a.cell, a.B, NH, DH, dt, families=("fused_block",))
    plan = runtime.plan_json(chosen.family, chosen.params)
    for _ in range(a.calls):
        torch.autograd.grad(recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan)[0], [x, W, b_in, R, b], dh)
    torch.cuda.synchronize()
    print(f"{a.calls} calls, {chosen.params}, layer paths {dict(layer.STATS)}")


if __name__ == "__main__":
    main()
