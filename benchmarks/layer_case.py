"""The layer suite's "ours" layer for the probes (probe_layer_timeline.py, probe_host_pieces.py,
ncu_layer.py): their shared command-line options and random inputs on the GPU.

    p = argparse.ArgumentParser(); layer_case.add_args(p, reps=30); case = layer_case.make(p.parse_args())
"""

from __future__ import annotations

import argparse
import types

import torch

from flashrnn_compile import get_cell, planner, runtime

DT = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_args(p: argparse.ArgumentParser, reps: int) -> None:
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--heads", default="12x64", help="NHxDH")
    p.add_argument("--dtype", default="bf16", choices=sorted(DT))
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--T", type=int, default=1024)


def make(a: argparse.Namespace, seed: int = 0) -> types.SimpleNamespace:
    """x [T, B, H], W [NH*G*DH, H], b_in [NH*G*DH], R [NH, G, DH, DH], b [NH, G, DH] (all needing a
    gradient: `leaves`), s0 [S, B, NH, DH], dh [T, B, NH, DH], and the planner's fused_block plan."""
    dev, dt = torch.device("cuda"), DT[a.dtype]
    NH, DH = (int(v) for v in a.heads.split("x"))
    spec = get_cell(a.cell)
    G, S, H, T, B = spec.num_gates, spec.num_states, NH * DH, a.T, a.B
    g = torch.Generator(device=dev).manual_seed(seed)

    def rnd(*shape, scale=1.0, grad=True):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dt).requires_grad_(grad)

    x, W, b_in = rnd(T, B, H), rnd(NH * G * DH, H, scale=H**-0.5), rnd(NH * G * DH, scale=0.1)
    R, b, s0 = rnd(NH, G, DH, DH, scale=DH**-0.5), rnd(NH, G, DH, scale=0.1), rnd(S, B, NH, DH, scale=0.5, grad=False)
    dh = torch.randn(T, B, NH, DH, generator=g, device=dev).to(dt)
    chosen = planner.plan(a.cell, B, NH, DH, dt, families=("fused_block",))
    return types.SimpleNamespace(x=x, W=W, b_in=b_in, R=R, b=b, s0=s0, dh=dh, leaves=[x, W, b_in, R, b],
                                 plan=runtime.plan_json(chosen.family, chosen.params), params=chosen.params,
                                 NH=NH, DH=DH, G=G, S=S, H=H, T=T, B=B, dtype=dt, device=dev)
