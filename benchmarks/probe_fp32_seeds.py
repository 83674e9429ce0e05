"""Probe: the float32 errors of the alternating step kernel against PyTorch's own float32 error,
over many seeds, for the cases where one seed went over 2x (session 3, T=1024 full matrix).

For each seed: err(ours) and err(torch) of every output and gradient against the float64
reference, and for ReLU cells the number of pre-activation sign flips (h > 0 differs from the
float64 reference's) of ours and of PyTorch's float32. Usage (GPU):
    python -m benchmarks.probe_fp32_seeds [--seeds 12] [--case elman_relu,1,768,16,1024,1]
"""

from __future__ import annotations

import argparse

import torch

from flashrnn_compile import reference, runtime
from flashrnn_compile.ops import recurrence
from flashrnn_compile.testing import rel_err
from tests.gpu.conftest import NAMES, make_inputs, run_with_grads

PLAN = runtime.plan_json("alternating", {"STEP_KERNEL": 1})
DEFAULT_CASES = ("elman_relu,1,768,16,1024,1", "elman_relu,1,768,16,1024,0", "lstm,3,5,1,1024,0")


def probe(cell, NH, DH, B, T, reverse, seed, dtype=torch.float32):
    gx, R, b, s0, dh, dsT = make_inputs(cell, T, B, NH, DH, seed)
    ref = run_with_grads(lambda *a: reference.forward(*a, cell, reverse, False)[:2], (gx, R, b, s0), dh, dsT)
    low = [t.to(dtype) for t in (gx, R, b, s0)]
    dh_d, dsT_d = dh.to(dtype), dsT.to(dtype)
    native = run_with_grads(lambda *a: reference.forward(*a, cell, reverse, False, compute_dtype=dtype)[:2],
                            low, dh_d, dsT_d)
    ours = run_with_grads(lambda *a: recurrence(*a, cell=cell, reverse=reverse, plan=PLAN), low, dh_d, dsT_d)
    row = {name: (rel_err(o, r), rel_err(n, r)) for name, o, n, r in zip(NAMES, ours, native, ref)}
    flips = None
    if cell == "elman_relu":
        pos = ref[0] > 0
        flips = (int(((ours[0] > 0) != pos).sum()), int(((native[0] > 0) != pos).sum()))
    return row, flips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--case", action="append")
    args = ap.parse_args()
    for spec in args.case or DEFAULT_CASES:
        c = spec.split(",")
        cell, NH, DH, B, T, rev = c[0], *map(int, c[1:6])
        print(f"== {spec} float32: ratio err(ours)/err(torch) per output, [flips ours/torch]")
        worst = {n: 0.0 for n in NAMES}
        ratios = {n: [] for n in NAMES}
        for seed in range(args.seeds):
            row, flips = probe(cell, NH, DH, B, T, bool(rev), 1000 + seed)
            cells = []
            for n in NAMES:
                e_o, e_t = row[n]
                r = e_o / e_t if e_t > 0 else float("inf") if e_o > 0 else 0.0
                ratios[n].append(r)
                worst[n] = max(worst[n], r)
                cells.append(f"{n} {r:5.2f} ({e_o:.2e}/{e_t:.2e})")
            print(f"seed {1000 + seed}: " + "  ".join(cells) + (f"  flips {flips[0]}/{flips[1]}" if flips else ""))
        med = {n: sorted(v)[len(v) // 2] for n, v in ratios.items()}
        print("median ratio: " + "  ".join(f"{n} {med[n]:.2f}" for n in NAMES))
        print("worst ratio:  " + "  ".join(f"{n} {worst[n]:.2f}" for n in NAMES), flush=True)


if __name__ == "__main__":
    main()
