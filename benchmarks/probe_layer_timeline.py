"""When the host and the GPU reach each point of one recurrent_layer fwd+bwd (the layer suite's "ours"
call, LSTM 12x64 B16 T1024 by default): is the GPU waiting for the host, and where?

    python benchmarks/probe_layer_timeline.py [--reps 30] [--cell lstm] [--heads 12x64] [--dtype bf16]

Markers: the call's start, around _Layer.forward, the forward's library call (frnn_layer_forward: the
projection and the forward kernel) or F.linear and the forward kernel (without a gradient), around
_Layer.backward and its library call, after autograd.grad returns. At each, the host's time (perf_counter) and a CUDA event
on the current stream. An event completes when the work queued before it has run, so its GPU time is
max(when the host recorded it, when that work ended): where two consecutive markers' GPU times
differ by more than the kernels queued between them, the GPU was idle, waiting for the host.
Printed per variant (layer.RECOMPUTE off / on): each marker's median host and GPU time since the
start (µs), and the GPU gap to the marker before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import layer_case  # noqa: E402
from flashrnn_compile import layer, recurrent_layer  # noqa: E402
from flashrnn_compile.kernels import fused_block  # noqa: E402

class Marks:
    """Host times and CUDA events at named points; the events are made (and recorded once) up front,
    so a mark costs one record, not an event's creation."""

    def __init__(self, n: int = 32):
        self.points = []  # (name, host s, event)
        self.pool = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for ev in self.pool:
            ev.record()
        torch.cuda.synchronize()

    def mark(self, name):
        ev = self.pool[len(self.points)]
        ev.record()
        self.points.append((name, time.perf_counter(), ev))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    layer_case.add_args(p, reps=30)
    a = p.parse_args()
    c = layer_case.make(a)
    x, W, b_in, R, b, s0, dh, plan, leaves, H = c.x, c.W, c.b_in, c.R, c.b, c.s0, c.dh, c.plan, c.leaves, c.H
    marks = Marks()

    def wrap(fn, before, after):
        def inner(*args, **kw):
            if before:
                marks.mark(before)
            out = fn(*args, **kw)
            marks.mark(after)
            return out
        return inner

    orig = (layer.F, fused_block.forward, fused_block.layer_forward, layer._Layer.forward, layer._Layer.backward)
    layer.F = types.SimpleNamespace(linear=wrap(F.linear, "linear: before", "linear: launched"))
    fused_block.forward = wrap(orig[1], None, "forward kernel: launched")
    fused_block.layer_forward = wrap(orig[2], "layer_forward: start", "layer_forward: launched")
    layer._Layer.forward = staticmethod(wrap(orig[3], "_Layer.forward: start", "_Layer.forward: returned"))
    layer._Layer.backward = staticmethod(wrap(orig[4], "_Layer.backward: start", "_Layer.backward: returned"))
    print(f"{a.cell} {a.heads} {a.dtype} B{a.B} T{a.T} {c.params}; µs since the start, median of {a.reps}")
    # the forward alone, without a gradient (F.linear then recurrence()'s fast path)
    rows = {}
    for rep in range(a.reps + 3):
        marks.points.clear()
        marks.mark("start")
        with torch.no_grad():
            recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan)
        marks.mark("recurrent_layer returned")
        torch.cuda.synchronize()
        if rep >= 3:
            _, h0, e0 = marks.points[0]
            for i, (name, hs, ev) in enumerate(marks.points):
                rows.setdefault((i, name), []).append(((hs - h0) * 1e6, e0.elapsed_time(ev) * 1e3))
    _table("forward without a gradient", rows)
    for rc in (False, True):
        layer.RECOMPUTE = rc
        kern = layer._fused_kernel(x, W, b_in, R, b, s0, a.cell, plan)
        assert kern is not None, "the one-call path does not apply"
        lib_fn = kern.lib.frnn_layer_backward
        kern.lib.frnn_layer_backward = wrap(lib_fn, "backward C call: start", "backward C call: returned")
        rows = {}
        for rep in range(a.reps + 3):
            marks.points.clear()
            marks.mark("start")
            torch.autograd.grad(recurrent_layer(x, W, b_in, R, b, s0, cell=a.cell, plan=plan)[0], leaves, dh)
            marks.mark("autograd.grad returned")
            torch.cuda.synchronize()
            if rep < 3:
                continue
            _, h0, e0 = marks.points[0]
            for i, (name, hs, ev) in enumerate(marks.points):
                rows.setdefault((i, name), []).append(((hs - h0) * 1e6, e0.elapsed_time(ev) * 1e3))
        kern.lib.frnn_layer_backward = lib_fn
        _table(f"fwd+bwd, layer.RECOMPUTE={rc}", rows)
    layer.F, fused_block.forward, fused_block.layer_forward = orig[:3]
    layer._Layer.forward, layer._Layer.backward = staticmethod(orig[3]), staticmethod(orig[4])
    layer.RECOMPUTE = True
    # the host cost of the projection's launch alone (no synchronisation inside the timed calls)
    x2, W2, b2 = x.detach().view(-1, H), W.detach(), b_in.detach()
    print("\n| projection call | host µs (median of 200) |\n|---|---|")
    for name, fn in (("F.linear(x, W, b_in)", lambda: F.linear(x2, W2, b2)), ("F.linear(x, W)", lambda: F.linear(x2, W2)),
                     ("torch.addmm(b_in, x, W.t())", lambda: torch.addmm(b2, x2, W2.t())),
                     ("torch.mm(x, W.t())", lambda: torch.mm(x2, W2.t())),
                     ("F.linear(x 3-d, W, b_in), leaves needing grad", lambda: F.linear(x, W, b_in)),
                     ("the same under no_grad", lambda: _no_grad(F.linear, x, W, b_in)),
                     ("torch.empty_like(x) (for scale)", lambda: torch.empty_like(x2)),
                     ("torch.cuda.Event() + record", lambda: torch.cuda.Event(enable_timing=True).record())):
        ts = []
        for _ in range(220):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e6)
            torch.cuda.synchronize()
        print(f"| {name} | {statistics.median(ts[20:]):.1f} |")


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _table(title, rows) -> None:
    print(f"\n{title}\n| marker | host µs | host step | GPU µs | GPU step |\n|---|---|---|---|---|")
    last_h = last_g = 0.0
    for (i, name), v in sorted(rows.items()):
        hm, gm = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
        print(f"| {name} | {hm:.0f} | {hm - last_h:.0f} | {gm:.0f} | {gm - last_g:.0f} |")
        last_h, last_g = hm, gm


if __name__ == "__main__":
    main()
