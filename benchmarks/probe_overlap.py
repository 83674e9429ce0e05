"""Probe (session 7): how much of a fused_block layer's time the input GEMMs' overlap with the
recurrence would save, before building it. The layer suite's "ours" layer (x W^T + b, then the
recurrence; backward: the recurrence's, then dx = dgx W, dW = dgx^T x, db_in = sum dgx) run by hand
with fused_block's launches, against the same work cut into K time chunks on two streams: forward,
chunk k's x W^T on a side stream while the recurrence runs chunk k-1; backward, chunk k's dx / dW on
the side stream while the recurrence's backward runs chunk k-1 (dW accumulated in float32 with
aten's mm.dtype), and db_in taken from the kernel's db (the LSTM's d(rhb) is d(gx)).

Timing only: the chunks pass states and state gradients through the input dtype here (sT / ds0 as
the library returns them), which a real implementation must not do; the printed max |diff| against
the unchunked run shows that effect. Each variant is timed issued from Python (CUDA events, median)
and replayed from a CUDA graph (the GPU's time without host gaps).

    python benchmarks/probe_overlap.py [--reps 50] [--chunks 1,2,4,8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.suites import common, layer  # noqa: E402
from flashrnn_compile import planner  # noqa: E402
from flashrnn_compile.kernels import fused_block as fb  # noqa: E402
from flashrnn_compile.kernels._variants import ptr, stream  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--chunks", default="1,2,4,8")
    args = p.parse_args()
    dev = torch.device("cuda")
    T, B, NH, G, DH, S = 1024, 16, 12, 4, 64, 2
    H, N = NH * DH, NH * G * DH
    dt = torch.bfloat16
    chosen = planner.plan("lstm", B, NH, DH, dt, families=("fused_block",))
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=dev, generator=g)).to(dt)

    x, W, b_in = rnd(T, B, H), rnd(N, H, scale=H**-0.5), rnd(N, scale=0.1)
    R, b, s0, dh = rnd(NH, G, DH, DH, scale=DH**-0.5), rnd(NH, G, DH, scale=0.1), rnd(S, B, NH, DH, scale=0.5), rnd(T, B, NH, DH)
    kern, why = fb._resolve("lstm", x.new_empty(T, B, NH, G, DH), chosen.params)
    assert kern is not None, why
    nbt = -(-B // kern.batch_tile)
    side = torch.cuda.Stream(dev)
    f32 = dict(dtype=torch.float32, device=dev)
    # buffers shared by every variant (allocated once: a CUDA graph replays fixed addresses)
    gx = torch.empty(T, B, NH, G, DH, dtype=dt, device=dev)
    h = torch.empty(T, B, NH, DH, dtype=dt, device=dev)
    states_in, rhb = torch.empty(T, S, B, NH, DH, **f32), torch.empty(T, B, NH, G, DH, **f32)
    dgx = torch.empty_like(gx)
    dx, dW32 = torch.empty_like(x), torch.empty(N, H, **f32)
    sts = [torch.empty(S, B, NH, DH, dtype=dt, device=dev) for _ in range(9)]
    dss = [torch.empty(S, B, NH, DH, dtype=dt, device=dev) for _ in range(9)]
    dw = torch.empty(8, nbt, NH, G * DH * DH + G * DH, **f32)
    zeros = torch.zeros(S, B, NH, DH, dtype=dt, device=dev)
    outs = {}
    try:  # aten::addmm.dtype_out on this torch's CUDA build (else mm.dtype then add_)
        c = torch.zeros(16, 8, **f32)
        torch.addmm(c, rnd(16, 32), rnd(32, 8), out_dtype=torch.float32, out=c)
        addmm_out = True
    except (RuntimeError, TypeError) as e:
        print(f"addmm(out_dtype=float32, out=) unavailable ({str(e).splitlines()[0]}); using mm.dtype + add_")
        addmm_out = False

    def bounds(K):
        return [(k * T // K, (k + 1) * T // K) for k in range(K)]

    def fwd(K, save=True):
        main = torch.cuda.current_stream(dev)
        evs = []
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for t0, t1 in bounds(K):
                torch.addmm(b_in, x[t0:t1].view(-1, H), W.t(), out=gx[t0:t1].view(-1, N))
                ev = torch.cuda.Event()
                ev.record(side)
                evs.append(ev)
        s = s0
        for k, (t0, t1) in enumerate(bounds(K)):
            main.wait_event(evs[k])
            rc = kern.lib.frnn_forward(t1 - t0, B, NH, 0, ptr(gx[t0:t1]), ptr(R), ptr(b), ptr(s), ptr(h[t0:t1]),
                                       ptr(sts[k]), ptr(states_in[t0:t1]) if save else None,
                                       ptr(rhb[t0:t1]) if save else None, stream(dev))
            assert rc == 0, kern.lib.frnn_error()
            s = sts[k]

    def bwd(K):
        main = torch.cuda.current_stream(dev)
        ds = zeros
        for k, (t0, t1) in reversed(list(enumerate(bounds(K)))):
            rc = kern.lib.frnn_backward(t1 - t0, B, NH, 0, ptr(dh[t0:t1]), ptr(ds), ptr(gx[t0:t1]), ptr(R),
                                        ptr(states_in[t0:t1]), ptr(rhb[t0:t1]), ptr(dgx[t0:t1]), None,
                                        ptr(dss[k]), ptr(dw[k]), stream(dev))
            assert rc == 0, kern.lib.frnn_error()
            ds = dss[k]
            side.wait_stream(main)
            with torch.cuda.stream(side):
                d2, x2 = dgx[t0:t1].view(-1, N), x[t0:t1].view(-1, H)
                torch.mm(d2, W, out=dx[t0:t1].view(-1, H))
                if k == K - 1:
                    torch.mm(d2.t(), x2, out_dtype=torch.float32, out=dW32)
                elif addmm_out:
                    torch.addmm(dW32, d2.t(), x2, out_dtype=torch.float32, out=dW32)
                else:
                    dW32.add_(torch.mm(d2.t(), x2, out_dtype=torch.float32))
        main.wait_stream(side)
        w = dw[:K].sum((0, 1))  # [NH, G*DH*DH + G*DH]
        outs["dR"] = w[:, : G * DH * DH].to(dt)
        outs["db_in"] = w[:, G * DH * DH:].reshape(N).to(dt)  # = db: the LSTM's d(rhb) is d(gx)
        outs["dW"] = dW32.to(dt)

    def seq_fwd():  # the unchunked baseline, one stream, as the layer runs today
        torch.addmm(b_in, x.view(-1, H), W.t(), out=gx.view(-1, N))
        rc = kern.lib.frnn_forward(T, B, NH, 0, ptr(gx), ptr(R), ptr(b), ptr(s0), ptr(h), ptr(sts[8]),
                                   ptr(states_in), ptr(rhb), stream(dev))
        assert rc == 0

    def seq_bwd():
        rc = kern.lib.frnn_backward(T, B, NH, 0, ptr(dh), ptr(zeros), ptr(gx), ptr(R), ptr(states_in), ptr(rhb),
                                    ptr(dgx), None, ptr(dss[8]), ptr(dw[0]), stream(dev))
        assert rc == 0
        d2 = dgx.view(-1, N)
        torch.mm(d2, W, out=dx.view(-1, H))
        outs["dW"] = d2.t() @ x.view(-1, H)
        outs["db_in"] = d2.sum(0)
        w = dw[0].sum(0)
        outs["dR"] = w[:, : G * DH * DH].to(dt)

    def graphed(fn):
        fn()
        torch.cuda.synchronize()
        gr = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gr):
            fn()
        return gr.replay

    def timed(fn, reps):
        for _ in range(3):
            fn()
        return statistics.median(common._one_call_ms(fn, dev) for _ in range(reps))

    seq_fwd()
    seq_bwd()
    ref = {"h": h.clone(), "dx": dx.clone(), **{k: v.clone() for k, v in outs.items()}}
    print(f"lstm 12x64 bf16 B16 T1024 fused_block {chosen.params}; torch {torch.__version__}")
    print("| variant | fwd ms | fwd+bwd ms | fwd graph ms | fwd+bwd graph ms | max abs diff h / dx / dW / dR / db_in |")
    print("|---|---|---|---|---|---|")
    variants = [("sequential (today)", seq_fwd, lambda: (seq_fwd(), seq_bwd()))]
    for K in (int(v) for v in args.chunks.split(",")):
        variants.append((f"overlap K={K}", lambda K=K: fwd(K), lambda K=K: (fwd(K), bwd(K))))
    for name, f, fb_ in variants:
        t_f, t_fb = timed(f, args.reps), timed(fb_, args.reps)
        g_f, g_fb = timed(graphed(f), args.reps), timed(graphed(fb_), args.reps)
        fb_()
        torch.cuda.synchronize()
        got = {"h": h, "dx": dx, **outs}
        diffs = " / ".join(f"{(got[k].float() - ref[k].float()).abs().max().item():.2e}"
                           for k in ("h", "dx", "dW", "dR", "db_in"))
        print(f"| {name} | {t_f:.3f} | {t_fb:.3f} | {g_f:.3f} | {g_fb:.3f} | {diffs} |", flush=True)
    base_f, base_fb = layer.ours_fns(layer.Config("lstm", "bf16", B, T, NH, DH),
                                     __import__("flashrnn_compile").runtime.plan_json("fused_block", chosen.params), dev)
    print(f"| layer suite's ours row (recurrence(), autograd) | {timed(base_f, args.reps):.3f} | "
          f"{timed(base_fb, args.reps):.3f} | | | |")


if __name__ == "__main__":
    main()
