"""A/B of a fused_block knob (kernels/fused_block.py `defines()` reads its environment variable and
adds a -D define; fused_block.cuh), knob off and on built as two libraries in one process:

    python benchmarks/ab_fused_block.py [--knob drout] [--reps 50] [--check full|fast|none]
    python benchmarks/ab_fused_block.py --knob drout --prebuild h200   # CPU host: build what the A/B loads

Knobs (KNOBS): drout = FLASHRNN_FUSED_DROUT=1 -> FRNN_DR_OUT=1 (the op's backward makes no dR / db; one
GEMM of dgx and h_in outside, for the cells whose d(rhb) is d(gx)). (Session 8 removed the knobs
v2, FRNN_SAVE_V2, and dr16, FRNN_BWD_DR16: measured not faster in sessions 6 and 7.)

1. check (--check full, the default; fast: only the 12x64 cases, the planner's LSTM / GRU tilings,
   bf16 + fp16, T 1 and 17, both directions; none, or --no-check: skip it and time only): the knob's
   outputs against the default's: forward with save (h, sT, states_in, rhb) and backward (dgx, dR, db,
   ds0) for every cell, both directions, ragged batches (a partial batch tile), T = 1 and 17, the
   planner's tiling and the tests' explicit tilings; bit-identical, except dR where the knob changes
   its summation order (drout: within DR_ULPS ulps of the dtype at the largest |dR| of the case;
   the GPU test with the knob on is what checks it, against float64); exits 1 on any difference. Variants not
   built before (--prebuild) are JIT-built here: the full check asks for ~30 configurations per knob.
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



def _knob(env: str, on: str, reorders_dr: bool):
    """(environment variable, its "on" value, the define defines() adds, the define's value,
    whether the knob changes dR's summation order); the define comes from fused_block.KNOBS."""
    return env, on, fused_block.KNOBS[env][0], int(on), reorders_dr


KNOBS = {"drout": _knob("FLASHRNN_FUSED_DROUT", "1", True)}
KNOB = KNOBS["drout"]  # main() sets the chosen one
# |dR(on) - dR(off)| <= DR_ULPS eps(dtype) max |dR(off)|: the kernel's fp32 sums in another order,
# then rounded to R's dtype (an element may round the other way: one ulp of itself)
DR_ULPS = 2
_CACHES = {0: {}, 1: {}}  # the family's per-configuration resolution cache, one per knob value


def use(knob: int) -> None:
    """Select the knob for the next calls (defines() reads the variable when a configuration is
    first resolved; each knob value keeps its own resolution cache). The other knobs' variables are
    set to 0: knob 0 is the default build."""
    for var, *_ in KNOBS.values():
        os.environ[var] = "0"
    if knob:
        os.environ[KNOB[0]] = KNOB[1]
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


def check_cases(fast: bool):
    """(cell, NH, DH, B, dtype, explicit params or None) of the check."""
    from tests.gpu.test_fused_block import EXPLICIT

    if fast:
        return [(cell, 12, 64, 16, dtype, None) for cell in ("lstm", "gru") for dtype in (torch.bfloat16, torch.float16)]
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
    return cases


def check(fast: bool) -> bool:
    cases = check_cases(fast)
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
                bad = [nm for nm, a, c in zip(names, outs[0], outs[1])
                       if not (torch.equal(a, c) or (nm in ("dR", "db") and KNOB[4] and same_dr(a, c, nm)))]
                if len(outs[0]) != len(outs[1]):
                    bad.append("output count")
                n += 1
                print(f"  {cell} {NH}x{DH} B{B} T{T} {'rev' if reverse else 'fwd'} {dtype}: {'ok' if not bad else 'MISMATCH'}",
                      flush=True)
                if bad:
                    ok = False
                    print(f"MISMATCH {cell} {NH}x{DH} B{B} T{T} {'rev' if reverse else 'fwd'} {dtype} {prm}: {bad}")
    what = f"bit-identical but dR (within {DR_ULPS} ulps of max |dR|)" if KNOB[4] else "bit-identical"
    print(f"check: {n} cases, knob on vs off {what}: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def same_dr(off, on, name) -> bool:
    """dR of the knob on vs off where the knob changes its summation order: within DR_ULPS ulps of
    the dtype at the largest |dR(off)|, finite where the other is (printed)."""
    a, c = off.double(), on.double()
    if not torch.equal(torch.isfinite(a), torch.isfinite(c)):
        return False
    scale = a[torch.isfinite(a)].abs().max().item() if torch.isfinite(a).any() else 0.0
    diff = (a - c)[torch.isfinite(a)].abs().max().item() if torch.isfinite(a).any() else 0.0
    tol = DR_ULPS * torch.finfo(off.dtype).eps * scale
    print(f"  {name}: max |on - off| = {diff:.3e} (bound {tol:.3e}) of max |off| {scale:.3e}")
    return diff <= tol


def median_ms(fns, reps, warm=5):
    """{name: median ms} of each fn, CUDA events around each call; the fns of one rep run back to back,
    in reverse order every other rep (session 6 measured a call's time depending on what ran just
    before it: the no-save forward, which no knob changes, 7-9% faster as the second of a pair)."""
    times = {k: [] for k in fns}
    for _ in range(warm):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    for rep in range(reps):
        for k, fn in (fns.items() if rep % 2 == 0 else reversed(fns.items())):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times[k].append(e0.elapsed_time(e1))
    return {k: statistics.median(v) for k, v in times.items()}


TIMING_ROWS = [("lstm", 12, 64, torch.bfloat16, 16), ("gru", 12, 64, torch.bfloat16, 16),
               ("lstm", 12, 64, torch.float16, 16), ("lstm", 24, 32, torch.bfloat16, 16)]


def timing(reps: int) -> None:
    rows = TIMING_ROWS
    T = 1024
    print(f"knob: {KNOB[0]}={KNOB[1]} -> {KNOB[2]}={KNOB[3]} (knob 1) vs unset (knob 0)")
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
        # the knob must reach the build: knob 1's configuration carries the knob's define and
        # resolves to another library than knob 0's
        libs = {k: {getattr(v[0], "lib", None) for v in _CACHES[k].values() if v and v[0] is not None} for k in (0, 1)}
        use(1)
        assert fused_block.defines(cell, dtype, DH, prm).get(KNOB[2]) == KNOB[3], f"knob 1 without {KNOB[2]}={KNOB[3]}"
        use(0)
        assert KNOB[2] not in fused_block.defines(cell, dtype, DH, prm), f"knob 0 with {KNOB[2]}"
        assert libs[0] and libs[1] and not (libs[0] & libs[1]), f"knob 0 / 1 share a library: {libs}"
        # interleave the knob values within each rep (drift hits both alike)
        order = [(k, w) for w in ("fwd", "fwd_save", "bwd", "fwd_bwd") for k in (0, 1)]
        med = median_ms({key: fns[key] for key in order}, reps)
        dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        for knob in (0, 1):
            print(f"| {cell} | {NH}x{DH} | {dt} | {B} | {T} | {knob} | {med[(knob, 'fwd')]:.3f} | "
                  f"{med[(knob, 'fwd_save')]:.3f} | {med[(knob, 'bwd')]:.3f} | {med[(knob, 'fwd_bwd')]:.3f} |")
        print(f"|   |   |   |   |   | params {prm} | | | | |")


def prebuild(gpu: str, arch: str, fast: bool, jobs: int) -> None:
    """Build (no GPU needed) the variants the A/B loads for knob off and on: the timing rows' and the
    check's planner tilings for the device preset `gpu` (and the explicit tilings unless fast)."""
    from concurrent.futures import ThreadPoolExecutor

    from flashrnn_compile import build

    want = {}
    for knob in (0, 1):
        use(knob)
        shapes = [(c, NH, DH, B, d, None) for c, NH, DH, d, B in TIMING_ROWS] + check_cases(fast)
        for cell, NH, DH, B, dtype, params in shapes:
            if params is None:
                chosen = planner.plan(cell, B, NH, DH, dtype, gpu=gpu, families=("fused_block",))
                if chosen.family != "fused_block":
                    continue
                params = dict(chosen.params)
            defs = fused_block.defines(cell, dtype, DH, params)
            want[repr(sorted(defs.items()))] = defs
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda d: build.ensure_variant(fused_block.SOURCE, d, [arch]), want.values()))
    print(f"{len(want)} configurations ready (knob {KNOB[0]}={KNOB[1]} off and on) under {build.cache_root() / 'variants'}")


def main():
    global KNOB
    p = argparse.ArgumentParser()
    p.add_argument("--knob", choices=sorted(KNOBS), default="drout", help="which knob to A/B (KNOBS)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--check", choices=("full", "fast", "none"), default="full",
                   help="the knob on vs off output check before the timing: full (every cell, ~30 configurations "
                        "per knob), fast (the 12x64 cases only), none")
    p.add_argument("--no-check", action="store_true", help="the same as --check none: time only")
    p.add_argument("--prebuild", metavar="GPU", help="only build the variants the A/B loads (for this planner GPU "
                                                     "preset, e.g. h200; no GPU needed) and exit")
    p.add_argument("--arch", default="9.0", help="with --prebuild: the architecture to build")
    p.add_argument("--jobs", type=int, default=8, help="with --prebuild: parallel builds")
    args = p.parse_args()
    KNOB = KNOBS[args.knob]
    mode = "none" if args.no_check else args.check
    if args.prebuild:
        prebuild(args.prebuild, args.arch, mode != "full", args.jobs)
        use(0)
        return
    ok = True
    if mode != "none":
        ok = check(mode == "fast")
    timing(args.reps)
    use(0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
