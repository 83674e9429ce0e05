"""The host cost of each piece of one recurrent_layer fwd+bwd (the layer suite's "ours" call, LSTM
12x64 bf16 B16 T1024 by default), each timed alone: where do the ~0.7 ms of host time before the
backward's launch go (session 8, probe_layer_timeline.py), and how much of it is autograd's own?

    python benchmarks/probe_host_pieces.py [--reps 400] [--cell lstm] [--heads 12x64] [--dtype bf16]

Each piece runs `reps` times (the first 10% dropped), timed with perf_counter around the call,
with a CUDA synchronisation between calls outside the timing where the piece queues GPU work.
Printed: one row per piece, the median host µs. "engine: ..." rows time a stand-in autograd.Function
with the layer's arguments, saved tensors and gradients but no work: apply's own cost and the
engine's (torch.autograd.grad to the backward's first line, and from its return to grad's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import layer_case  # noqa: E402
from flashrnn_compile import layer, ops, recurrent_layer  # noqa: E402
from flashrnn_compile.kernels import _variants  # noqa: E402

def timed(fn, reps, sync=False):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
        if sync:
            torch.cuda.synchronize()
    return statistics.median(ts[reps // 10:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    layer_case.add_args(p, reps=400)
    a = p.parse_args()
    c = layer_case.make(a)
    x, W, b_in, R, b, s0, dh, plan, leaves = c.x, c.W, c.b_in, c.R, c.b, c.s0, c.dh, c.plan, c.leaves
    T, B, NH, DH, S, dev, dt = c.T, c.B, c.NH, c.DH, c.S, c.device, c.dtype
    kern = layer._fused_kernel(x, W, b_in, R, b, s0, a.cell, plan)
    assert kern is not None, "the one-call path does not apply"
    rows = []

    def row(name, us):
        rows.append((name, us))
        print(f"| {name} | {us:.1f} |", flush=True)

    print(f"{a.cell} {a.heads} {a.dtype} B{B} T{T} {c.params}; host µs, median of {a.reps}\n| piece | µs |\n|---|---|")
    n = a.reps
    # the whole call, as the layer suite times it (GPU work included: host time to each return)
    row("fwd+bwd whole (host, synchronised after)", timed(lambda: torch.autograd.grad(
        recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan)[0], leaves, dh), n // 4, sync=True))
    row("forward call alone (recurrent_layer, grad on)", timed(
        lambda: recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan), n // 4, sync=True))
    # the Python before _Layer.apply
    row("validate()", timed(lambda: layer.validate(x, W, b_in, R, a.cell), n))
    row("_fused_kernel() (cached)", timed(lambda: layer._fused_kernel(x, W, b_in, R, b, s0, a.cell, plan), n))
    row("ops._eager_ok(6 tensors)", timed(lambda: ops._eager_ok((x, W, b_in, R, b, s0)), n))
    real_apply = layer._Layer.apply
    layer._Layer.apply = lambda *args: None
    row("recurrent_layer up to _Layer.apply", timed(lambda: recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan), n))
    layer._Layer.apply = real_apply
    # small things the prologues do
    row("torch.empty(1M floats, cuda)", timed(lambda: torch.empty(1 << 20, device=dev), n))
    row("x.new_empty(T, B, NH, DH)", timed(lambda: x.new_empty(T, B, NH, DH), n))
    row("t.data_ptr()", timed(lambda: x.data_ptr(), n))
    row("_variants.stream(dev)", timed(lambda: _variants.stream(dev), n))
    row("_variants.on(dev) enter+exit", timed(lambda: _variants.on(dev).__enter__(), n))
    row("x.contiguous()", timed(lambda: x.contiguous(), n))
    row("torch.is_grad_enabled()", timed(torch.is_grad_enabled, n))
    row("kern.lib.frnn_error() (one ctypes call)", timed(kern.lib.frnn_error, n))
    # the autograd machinery alone: a Function with the layer's arguments and saves, doing nothing
    outs = (torch.empty(T, B, NH, DH, device=dev, dtype=dt), torch.empty(S, B, NH, DH, device=dev, dtype=dt))
    grads = tuple(torch.zeros_like(t) for t in leaves)
    marks = {}

    class Stand(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W, b_in, R, b, s0, cell, reverse, kern, K):
            ctx.save_for_backward(x, W, outs[0], R, outs[1], None, outs[0], s0, b, b_in)
            ctx.set_materialize_grads(False)
            return outs[0].new_empty(outs[0].shape), outs[1].new_empty(outs[1].shape)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dh, dsT):
            marks["bwd"] = time.perf_counter()
            ctx.saved_tensors
            marks["bwd_end"] = time.perf_counter()
            return (*grads, None, None, None, None, None)  # dx, dW, db_in, dR, db; s0, cell, reverse, kern, K

    row("engine: Stand.apply (no work)", timed(lambda: Stand.apply(x, W, b_in, R, b, s0, a.cell, False, kern, 4), n))
    eng = []
    for _ in range(n):
        y = Stand.apply(x, W, b_in, R, b, s0, a.cell, False, kern, 4)[0]
        t0 = time.perf_counter()
        torch.autograd.grad(y, leaves, dh)
        t1 = time.perf_counter()
        eng.append(((marks["bwd"] - t0) * 1e6, (t1 - marks["bwd_end"]) * 1e6))
    row("engine: autograd.grad call -> backward's first line", statistics.median(e[0] for e in eng[n // 10:]))
    row("engine: backward's return -> autograd.grad returns", statistics.median(e[1] for e in eng[n // 10:]))
    # the real forward and backward bodies, host time (GPU work queued, synchronised between calls)
    fw = layer._Layer.forward
    bw = layer._Layer.backward
    times = {"fwd": [], "bwd": []}

    def tf(*args):
        t0 = time.perf_counter()
        out = fw(*args)
        times["fwd"].append((time.perf_counter() - t0) * 1e6)
        return out

    def tb(*args):
        t0 = time.perf_counter()
        out = bw(*args)
        times["bwd"].append((time.perf_counter() - t0) * 1e6)
        return out

    lib_times = {"lf": [], "lb": []}
    lf, lb = kern.lib.frnn_layer_forward, kern.lib.frnn_layer_backward

    def wrapc(fn, key):
        def inner(*args):
            t0 = time.perf_counter()
            r = fn(*args)
            lib_times[key].append((time.perf_counter() - t0) * 1e6)
            return r
        return inner

    layer._Layer.forward, layer._Layer.backward = staticmethod(tf), staticmethod(tb)
    kern.lib.frnn_layer_forward, kern.lib.frnn_layer_backward = wrapc(lf, "lf"), wrapc(lb, "lb")
    for _ in range(n // 4):
        torch.autograd.grad(recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan)[0], leaves, dh)
        torch.cuda.synchronize()
    layer._Layer.forward, layer._Layer.backward = staticmethod(fw), staticmethod(bw)
    kern.lib.frnn_layer_forward, kern.lib.frnn_layer_backward = lf, lb
    k = n // 40
    row("_Layer.forward body (host)", statistics.median(times["fwd"][k:]))
    row("  of it frnn_layer_forward (C call)", statistics.median(lib_times["lf"][k:]))
    row("_Layer.backward body (host)", statistics.median(times["bwd"][k:]))
    row("  of it frnn_layer_backward (C call)", statistics.median(lib_times["lb"][k:]))


if __name__ == "__main__":
    main()
