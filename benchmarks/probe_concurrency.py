"""Does the forward kernel slow down while the projection's GEMM runs beside it? (Pure GPU times:
a torch.cuda._sleep kernel first holds the GPU while the host queues everything, so no host gap
is timed.) The question behind overlapping the forward's x W^T with the recurrence: the
recurrence takes NBT * NH SMs (24 at LSTM 12x64 B16), the GEMM could take the rest.

    python3 benchmarks/probe_concurrency.py [--reps 20] [layer_case options]

Cases, each the median of --reps, µs:
  kernel alone       the forward kernel over a ready gx (the library call with x = nullptr)
  GEMM alone         x W^T (torch.mm) as the one-call path's projection
  both, kernel first the kernel on a high-priority stream, then the GEMM on a low-priority one,
                     both released by the same event: each one's time and the span of both
  both, GEMM first   the same, queued in the other order
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import layer_case  # noqa: E402
from flashrnn_compile import layer  # noqa: E402
from flashrnn_compile.kernels import _variants  # noqa: E402

SLEEP_CYCLES = 2_000_000  # ~1 ms at 2 GHz: longer than the host needs to queue a case


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    layer_case.add_args(p, reps=20)
    a = p.parse_args()
    c = layer_case.make(a)
    x, W, b_in, R, b, s0 = (t.detach() for t in (c.x, c.W, c.b_in, c.R, c.b, c.s0))
    kern = layer._fused_kernel(x, W, b_in, R, b, s0, a.cell, c.plan)
    assert kern is not None, "the one-call path does not apply"
    T, B, NH, G, DH, I = c.T, c.B, c.NH, c.G, c.DH, c.H
    gx = torch.mm(x.view(T * B, I), W.t()).view(T, B, NH, G, DH)  # [T, B, NH, G, DH]
    gx2 = torch.empty_like(gx)
    h, sT = x.new_empty(T, B, NH, DH), x.new_empty(c.S, B, NH, DH)
    hi = torch.cuda.Stream(priority=-1)  # the highest priority torch offers
    lo = torch.cuda.Stream(priority=0)
    P = _variants.ptr

    def kernel(stream):
        rc = kern.lib.frnn_layer_forward(T, B, NH, I, 0, 1, None, P(W), P(b_in), P(R), P(b), P(s0), P(gx), P(h),
                                         P(sT), None, None, None, ctypes.c_void_p(stream.cuda_stream))
        assert rc == 0, kern.lib.frnn_error().decode()

    def gemm(stream):
        with torch.cuda.stream(stream):
            torch.mm(x.view(T * B, I), W.t(), out=gx2.view(T * B, NH * G * DH))

    def ev():
        return torch.cuda.Event(enable_timing=True)

    def case(order):
        """order: a tuple of "k" / "g"; -> (kernel µs, GEMM µs, span µs) of one run"""
        main = torch.cuda.current_stream()
        torch.cuda.synchronize()
        torch.cuda._sleep(SLEEP_CYCLES)
        go = ev()
        go.record(main)
        ends = {}
        for what in order:
            s = hi if what == "k" else lo
            s.wait_event(go)
            (kernel if what == "k" else gemm)(s)
            ends[what] = ev()
            ends[what].record(s)
        torch.cuda.synchronize()
        ms = {k: go.elapsed_time(e) * 1e3 for k, e in ends.items()}
        return ms.get("k"), ms.get("g"), max(ms.values())

    for order in (("k",), ("g",), ("k", "g"), ("g", "k")):  # warm-up
        case(order)
    print(f"{a.cell} {a.heads} {a.dtype} B{B} T{T} {c.params}; µs from the common start, median of {a.reps}")
    print("| case | kernel end | GEMM end | span |\n|---|---|---|---|")
    for name, order in (("kernel alone", ("k",)), ("GEMM alone", ("g",)), ("both, kernel first", ("k", "g")),
                        ("both, GEMM first", ("g", "k"))):
        runs = [case(order) for _ in range(a.reps)]
        med = [statistics.median([r[i] for r in runs]) if runs[0][i] is not None else None for i in range(3)]
        print(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in med) + " |", flush=True)


if __name__ == "__main__":
    main()
