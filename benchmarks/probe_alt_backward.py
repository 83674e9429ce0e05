"""The alternating step kernels' forward and backward timed apart, with the host time of each call.

    python benchmarks/probe_alt_backward.py     # on a CUDA machine

For dense LSTM 1x768, LSTM 12x64 and GRU 1x768 (bf16, B=16, T=1024): the median over 10 runs of
the forward (save=False) and of the backward alone (kernels.alternating.backward on saved
states), as CUDA-event time and as the host time of the call (no sync inside). When the host time
is well below the GPU time, the step loop is not bound by the host's launches.
"""

from __future__ import annotations

import statistics
import time

import torch

from flashrnn_compile.cells import get_cell
from flashrnn_compile.kernels import alternating as alt

PLAN = {"STEP_KERNEL": 1}
CONFIGS = [("lstm", 1, 768, 16, 1024), ("lstm", 12, 64, 16, 1024), ("gru", 1, 768, 16, 1024)]  # cell, NH, DH, B, T


def medians(fn, reps: int = 10, warmup: int = 3):
    """(GPU ms, host ms of the call), medians over `reps` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end))
        host.append((t1 - t0) * 1e3)
    return statistics.median(gpu), statistics.median(host)


def main():
    dt = torch.bfloat16
    for cell, NH, DH, B, T in CONFIGS:
        spec = get_cell(cell)
        G, S = spec.num_gates, spec.num_states
        gx = torch.randn(T, B, NH, G, DH, device="cuda", dtype=dt)  # [T, B, NH, G, DH]
        R = (torch.randn(NH, G, DH, DH, device="cuda") / DH**0.5).to(dt)  # [NH, G, DH, DH]
        b = 0.1 * torch.randn(NH, G, DH, device="cuda", dtype=dt)  # [NH, G, DH]
        s0 = 0.5 * torch.randn(S, B, NH, DH, device="cuda", dtype=dt)  # [S, B, NH, DH]
        h, sT, states_in, rhb = alt.forward(gx, R, b, s0, cell, False, PLAN, True)
        dh, dsT = torch.randn_like(h), torch.randn_like(sT)  # [T, B, NH, DH], [S, B, NH, DH]
        runs = {"fwd": lambda: alt.forward(gx, R, b, s0, cell, False, PLAN, False),
                "bwd": lambda: alt.backward(dh, dsT, gx, R, states_in, rhb, cell, False, PLAN)}
        for name, fn in runs.items():
            gpu, host = medians(fn)
            print(f"{cell} {NH}x{DH} B{B} T{T} {name}: gpu {gpu:.2f} ms, host call {host:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
