"""Probe (session 7): where recurrent_layer's error against float64 comes from in the cases that
failed tests/gpu/test_layer_gpu.py in call 2 with a dense W (elman_relu and slstm in bfloat16): per output, the
relative error of the one-call path with K chunks and with one chunk, of F.linear then recurrence()
under the same fused_block plan (the op path), and of PyTorch natively in bfloat16, over a few seeds.

    python benchmarks/probe_layer_errors.py [--seeds 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flashrnn_compile import layer  # noqa: E402
from flashrnn_compile.cells import get_cell  # noqa: E402
from tests.gpu.conftest import exact, family_plan, make_inputs  # noqa: E402
from tests.gpu.test_layer_gpu import NAMES, _linear_then_reference, _run  # noqa: E402


def _layer_inputs(cell, T, B, NH, DH, I, seed):
    """float64 inputs exact in every dtype, with a dense W (x W^T + b_in is rounded in bf16)."""
    G = get_cell(cell).num_gates
    _, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed)
    g = torch.Generator().manual_seed(seed ^ 0x5A5A)
    x = exact(torch.randn(T, B, I, generator=g, dtype=torch.float64)).cuda()
    W = exact(I**-0.5 * torch.randn(NH * G * DH, I, generator=g, dtype=torch.float64)).cuda()
    b_in = exact(0.1 * torch.randn(NH * G * DH, generator=g, dtype=torch.float64)).cuda()
    return (x, W, b_in, R, b, s0), dh, dsT

CASES = [("elman_relu", 5, 48, 3, 37, 17, 1, True), ("elman_relu", 2, 16, 1, 8, 17, 16, True),
         ("slstm", 24, 32, 3, 19, 40, 2, False), ("lstm", 24, 32, 3, 19, 40, 2, False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=4)
    args = p.parse_args()
    dt = torch.bfloat16
    for cell, NH, DH, B, I, T, K, reverse in CASES:
        print(f"\n{cell} {NH}x{DH} B{B} I{I} T{T} K{K} {'rev' if reverse else 'fwd'} bf16: relative error per seed")
        print("| seed | path | " + " | ".join(NAMES) + " |")
        print("|---|---|" + "---|" * len(NAMES))
        plan = family_plan("fused_block", cell, B, NH, DH, dt)
        for s in range(args.seeds):
            seed = zlib.crc32(f"layer-{cell}-{NH}-{DH}-{B}-{I}-{T}-{K}-{reverse}".encode()) + s
            inputs, dh, dsT = _layer_inputs(cell, T, B, NH, DH, I, seed)
            ref = _run(_linear_then_reference(cell, reverse, torch.float64), inputs, dh, dsT)
            low = [t.to(dt) for t in inputs]
            paths = {"native bf16": _linear_then_reference(cell, reverse, dt)}
            for k in (K, 1):
                paths[f"one call K={k}"] = (lambda *a, k=k: layer.recurrent_layer(*a, cell=cell, reverse=reverse,
                                                                                   plan=plan, chunks=k))

            def op_path(*a):
                layer.FAST_PATH = False
                try:
                    return layer.recurrent_layer(*a, cell=cell, reverse=reverse, plan=plan)
                finally:
                    layer.FAST_PATH = True
            paths["linear + recurrence()"] = op_path
            for name, fn in paths.items():
                out = _run(fn, low, dh.to(dt), dsT.to(dt))
                errs = [(o.double() - r).norm().item() / max(r.norm().item(), 1e-300) for o, r in zip(out, ref)]
                print(f"| {s} | {name} | " + " | ".join(f"{e:.3g}" for e in errs) + " |", flush=True)


if __name__ == "__main__":
    main()
