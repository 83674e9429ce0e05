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

from benchmarks import layer_case  # noqa: E402
from flashrnn_compile import layer, recurrent_layer  # noqa: E402

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=4)
    layer_case.add_args(p, reps=0)  # (--reps unused)
    a = p.parse_args()
    c = layer_case.make(a)
    for _ in range(a.calls):
        torch.autograd.grad(recurrent_layer(c.x, c.W, c.b_in, c.R, c.b, c.s0, cell=a.cell, plan=c.plan)[0], c.leaves, c.dh)
    torch.cuda.synchronize()
    print(f"{a.calls} calls, {c.params}, layer paths {dict(layer.STATS)}")


if __name__ == "__main__":
    main()
