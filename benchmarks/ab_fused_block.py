"""A/B of the fused_block knob FLASHRNN_FUSED_V2 (kernels/fused_block.py `defines()` adds
-DFRNN_SAVE_V2=1: the forward with SAVE writes rhb / states_in / h as 16-byte row chunks staged in
shared memory, fused_block.cuh), both builds in one process:

    python benchmarks/ab_fused_block.py [--reps 50] [--no-check]

1. check: the knob's outputs must be bit-identical to the default's (the same values go out, only
   the stores change): forward with save (h, sT, states_in, rhb) and backward (dgx, dR, db, ds0) for
   every cell, both directions, ragged batches (a partial batch tile), T = 1 and 17, the planner's
   tiling and the tests' explicit tilings; exits 1 on any difference.
2. timing: the op's forward (no save), forward with save, backward, and forward-with-save +
   backward, CUDA events around each call, knob off / on interleaved, median of --reps after warm-up;
   LSTM and GRU 12x64 bf16 B16 T1024 (the planner's tiling), LSTM 12x64 fp16, LSTM 24x32 bf16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flashrnn_compile import planner  # noqa: E402
from flashrnn_compile.kernels import fused_block  # noqa: E402
from profile_fused import inputs  # noqa: E402

KNOB = "FLASHRNN_FUSED_V2"
_CACHES = {0: {}, 1: {}}  # the family's per-configuration resolution cache, one per knob value


def use(knob: int) -> None:
    """Select the knob for the next calls (defines() reads the variable when a configuration is
    first resolved; each knob value keeps its own resolution cache)."""
    os.environ[KNOB] = str(knob)
    fam = fused_block._FAMILY
    if hasattr(fam, "_resolved"):
        fam._resolved = _CACHES[knob]
    else:  # no per-configuration cache to swap: resolve afresh each time (slower, still correct)
        raise SystemExit("ab_fused_block: fused_block._FAMILY has no _resolved cache to swap; update use()")


def plan_params(cell, B, NH, DH, dtype):
    chosen = planner.plan(cell, B, NH, DH, dtype, families=("fused_block",))
    return dict(chosen.params) if chosen.family == "fused_block" else None


def run_both(cell, gx, R, b, s0, dh, reverse, params):
    """(forward-with-save outputs, backward outputs) of one knob setting."""
    fwd = fused_block.forward(gx, R, b, s0, cell, reverse, params, True)
    _, _, si, rh = fwd
    torch.manual_seed(1234)
    dsT = 0.5 * torch.randn(s0.shape, device=s0.device, dtype=s0.dtype)  # [S, B, NH, DH]
    bwd = fused_block.backward(dh, dsT, gx, R, si, rh, cell, reverse, params)
    return fwd, bwd


def check() -> bool:
    from tests.gpu.test_fused_block import EXPLICIT

    # shapes whose planner tilings benchmarks/prebuild_fused.py builds (tests' PLAN_SHAPES, memcheck's
    # 2x16 B3): DH 48 = three unit groups, ragged B 3 (a partial batch tile)
    cases = []
    for cell in ("lstm", "gru", "elman_tanh", "elman_relu", "slstm"):
        for NH, DH, B in ((12, 64, 16), (5, 48, 3), (2, 16, 3)):
            for dtype in (torch.bfloat16, torch.float16):
                cases.append((cell, NH, DH, B, dtype, None))
    for cell, NH, DH, B, params, _ in EXPLICIT:
        for dtype in (torch.bfloat16, torch.float16):
            cases.append((cell, NH, DH, B, dtype, params))
    ok = True
    n = 0
    for cell, NH, DH, B, dtype, params in cases:
        prm = params if params is not None else plan_params(cell, B, NH, DH, dtype)
        if prm is None:
            print(f"skip {cell} {NH}x{DH} B{B} {dtype}: no fused_block plan")
            continue
        for T in (1, 17):
            for reverse in (False, True):
                torch.manual_seed(zlib.crc32(f"ab-{cell}-{NH}-{DH}-{B}-{T}-{reverse}".encode()))
                gx, R, b, s0, dh = inputs(cell, T, B, NH, DH, dtype)
                outs = {}
                for knob in (0, 1):
                    use(knob)
                    fwd, bwd = run_both(cell, gx, R, b, s0, dh, reverse, prm)
                    outs[knob] = [t.clone() for t in fwd] + [t.clone() for t in bwd if t is not None]
                torch.cuda.synchronize()
                names = ["h", "sT", "states_in", "rhb", "dgx", "dR", "db", "ds0"]
                bad = [nm for nm, a, c in zip(names, outs[0], outs[1]) if not torch.equal(a, c)]
                if len(outs[0]) != len(outs[1]):
                    bad.append("output count")
                n += 1
                if bad:
                    ok = False
                    print(f"MISMATCH {cell} {NH}x{DH} B{B} T{T} {'rev' if reverse else 'fwd'} {dtype} {prm}: {bad}")
    print(f"check: {n} cases, knob on vs off bit-identical: {'PASS' if ok else 'FAIL'}")
    return ok


def median_ms(fns, reps, warm=5):
    """{name: median ms} of each fn, CUDA events around each call; the fns of one rep run back to back."""
    times = {k: [] for k in fns}
    for _ in range(warm):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    for _ in range(reps):
        for k, fn in fns.items():
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times[k].append(e0.elapsed_time(e1))
    return {k: statistics.median(v) for k, v in times.items()}


def timing(reps: int) -> None:
    rows = [("lstm", 12, 64, torch.bfloat16, 16), ("gru", 12, 64, torch.bfloat16, 16),
            ("lstm", 12, 64, torch.float16, 16), ("lstm", 24, 32, torch.bfloat16, 16)]
    T = 1024
    print("| cell | NHxDH | dtype | B | T | knob | fwd | fwd (save) | bwd | fwd (save) + bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cell, NH, DH, dtype, B in rows:
        prm = plan_params(cell, B, NH, DH, dtype)
        torch.manual_seed(0)
        gx, R, b, s0, dh = inputs(cell, T, B, NH, DH, dtype)
        dsT = torch.zeros_like(s0)
        saved = {}
        fns = {}
        for knob in (0, 1):
            use(knob)
            _, _, si, rh = fused_block.forward(gx, R, b, s0, cell, False, prm, True)
            saved[knob] = (si, rh)

            def sel(k=knob):
                use(k)

            fns[(knob, "fwd")] = lambda k=knob: (sel(k), fused_block.forward(gx, R, b, s0, cell, False, prm, False))
            fns[(knob, "fwd_save")] = lambda k=knob: (sel(k), fused_block.forward(gx, R, b, s0, cell, False, prm, True))
            fns[(knob, "bwd")] = lambda k=knob: (sel(k), fused_block.backward(dh, dsT, gx, R, saved[k][0], saved[k][1],
                                                                              cell, False, prm))

            def both(k=knob):
                sel(k)
                _, _, si2, rh2 = fused_block.forward(gx, R, b, s0, cell, False, prm, True)
                fused_block.backward(dh, dsT, gx, R, si2, rh2, cell, False, prm)

            fns[(knob, "fwd_bwd")] = both
        # the knob must reach the build: knob 1's configuration carries FRNN_SAVE_V2 and resolves to
        # another library than knob 0's
        libs = {k: {getattr(v[0], "lib", None) for v in _CACHES[k].values() if v and v[0] is not None} for k in (0, 1)}
        use(1)
        assert fused_block.defines(cell, dtype, DH, prm).get("FRNN_SAVE_V2") == 1, "knob 1 without FRNN_SAVE_V2"
        assert libs[0] and libs[1] and not (libs[0] & libs[1]), f"knob 0 / 1 share a library: {libs}"
        # interleave the knob values within each rep (drift hits both alike)
        order = [(k, w) for w in ("fwd", "fwd_save", "bwd", "fwd_bwd") for k in (0, 1)]
        med = median_ms({key: fns[key] for key in order}, reps)
        dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        for knob in (0, 1):
            print(f"| {cell} | {NH}x{DH} | {dt} | {B} | {T} | {knob} | {med[(knob, 'fwd')]:.3f} | "
                  f"{med[(knob, 'fwd_save')]:.3f} | {med[(knob, 'bwd')]:.3f} | {med[(knob, 'fwd_bwd')]:.3f} |")
        print(f"|   |   |   |   |   | params {prm} | | | | |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args()
    ok = True
    if not args.no_check:
        ok = check()
    timing(args.reps)
    use(0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
