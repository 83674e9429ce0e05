"""Floor suite: the per-step cost of the synchronisation a persistent kernel pays every time step,
with no math (csrc/bench/sync_floor.cu): __syncthreads() in one block, cluster.sync() plus one
DSMEM read (clusters of 2, 8 and 16, 16 needing the non-portable size), a cooperative grid.sync()
plus one global read (8 blocks and one per SM), and fused_cluster's own exchange: each block's
segment sent to every peer by bulk copies completing on the peer's mbarrier (clusters of 16; 896
bytes a block and step, the forward's at LSTM 1x768 B16, and 1 664, its backward's), with two
alternatives (the copies issued from every warp; pull: remote arrivals, then DSMEM loads).

Per-step cost = (t(2S) - t(S)) / S with t the median CUDA-event time of one launch running S
steps, so the launch itself cancels. Each launch's result is checked (every participant must
count exactly S steps: a broken barrier shows up as a wrong count). Rows the device cannot run
(clusters below sm_90, no cooperative launch) carry the reason instead of a time.
"""

from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import common

SOURCE = "bench/sync_floor.cu"
DEFINES = {"FRNN_SYNC_FLOOR": 1}  # ensure_variant keys the build on its defines
THREADS = 256
REASON_LEN = 512

# (kind, size, steps S): size is threads per block, blocks per cluster, or blocks in the grid
# (0 = one block per SM); for the exchange kinds of BULK_SEG, blocks per cluster
CASES: List[Tuple[str, int, int]] = [
    ("block", THREADS, 20000),
    ("cluster", 2, 4000),
    ("cluster", 8, 4000),
    ("cluster", 16, 4000),
    ("grid", 8, 4000),
    ("grid", 0, 4000),
    ("bulk", 16, 4000),
    ("bulk_b", 16, 4000),
    ("bulk_spread", 16, 4000),
    ("pull", 16, 4000),
]
# exchange kinds: (bytes each block sends every peer per step, sync_floor.cu's MODE). 896: the
# forward's segment at LSTM 1x768 B16 (h of 48 units x 8 columns, rows padded to 56); 1 664: the
# backward's partial sums (48 + 4 fp32 x 8 columns)
BULK_SEG = {"bulk": (896, 0), "bulk_b": (1664, 0), "bulk_spread": (896, 1), "pull": (896, 2)}
BULK_WHAT = {0: "fused_cluster exchange (bulk copies by one warp)", 1: "bulk copies issued from every warp",
             2: "pull: remote arrive, DSMEM loads"}


def library(device) -> Tuple[Optional[ctypes.CDLL], Optional[str]]:
    """The built floor library, or None and why not (no CUDA, no nvcc, build error)."""
    from flashrnn_compile import build

    device = torch.device(device)
    if device.type != "cuda":
        return None, "the floor suite needs a CUDA device"
    if build.find_nvcc() is None:
        return None, "nvcc not found: cannot build csrc/bench/sync_floor.cu"
    try:
        path = build.ensure_variant(SOURCE, DEFINES)
    except build.BuildError as e:
        return None, f"building {SOURCE} failed: {e}"[:500]
    lib = ctypes.CDLL(str(path))
    for name in ("floor_block", "floor_cluster", "floor_grid", "floor_bulk", "floor_sm_count"):
        getattr(lib, name).restype = ctypes.c_int
    return lib, None


def _launcher(lib: ctypes.CDLL, kind: str, size: int, steps: int, device) -> Tuple[Any, torch.Tensor, int]:
    """(launch(steps) -> (rc, reason), out, participants) for one case."""
    stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
    reason = ctypes.create_string_buffer(REASON_LEN)
    if kind == "grid" and size == 0:
        sms = ctypes.c_int(0)
        if lib.floor_sm_count(ctypes.byref(sms)) != 0:
            raise RuntimeError("floor_sm_count failed")
        size = sms.value
    n = size * THREADS if kind in BULK_SEG else size  # bulk: every thread of every block counts
    out = torch.full((n,), -7, dtype=torch.int32, device=device)  # [participants], poisoned
    buf = torch.zeros(2 * n, dtype=torch.int32, device=device)  # [2 * blocks] grid scratch
    optr, bptr = ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(buf.data_ptr())

    def launch(s: int) -> Tuple[int, str]:
        if kind == "block":
            rc = lib.floor_block(size, s, optr, stream, reason, REASON_LEN)
        elif kind == "cluster":
            rc = lib.floor_cluster(size, 32, s, optr, stream, reason, REASON_LEN)
        elif kind in BULK_SEG:
            rc = lib.floor_bulk(size, THREADS, s, *BULK_SEG[kind], optr, stream, reason, REASON_LEN)
        else:
            rc = lib.floor_grid(size, 32, s, bptr, optr, stream, reason, REASON_LEN)
        return rc, reason.value.decode(errors="replace")

    return launch, out, n


def measure_case(lib, kind: str, size: int, steps: int, device, timing: Dict[str, Any]) -> Dict[str, Any]:
    """One row: per-step µs of `kind` at `size`, or the reason it cannot run."""
    launch, out, n = _launcher(lib, kind, size, steps, device)
    row: Dict[str, Any] = {"suite": "floor", "kind": kind, "size": n, "steps": steps}
    rc, why = launch(steps)
    if rc != 0:
        row.update(status="n/a", reason=why or f"error code {rc}")
        return row
    torch.cuda.synchronize(device)
    bad = int((out != steps).sum())
    if bad:
        row.update(status="error", reason=f"{bad} of {n} participants did not count {steps} steps (broken barrier?)")
        return row
    times = {}
    for s in (steps, 2 * steps):
        def call(s=s):
            rc, why = launch(s)
            if rc != 0:
                raise RuntimeError(why)
        times[s] = common.measure(call, device, **timing)
        torch.cuda.synchronize(device)
        if int((out != s).sum()):
            row.update(status="error", reason=f"wrong step count after {s} steps")
            return row
    per_step_us = (times[2 * steps].median_ms - times[steps].median_ms) * 1e3 / steps
    row.update(status="ok", us_per_step=per_step_us, t_S_ms=times[steps].median_ms,
               t_2S_ms=times[2 * steps].median_ms, reps=times[steps].reps)
    return row


def label(kind: str, size: int) -> str:
    return {"block": f"__syncthreads, 1 block of {size} threads",
            "cluster": f"cluster.sync + DSMEM read, cluster of {size}" + (" (non-portable)" if size > 8 else ""),
            "grid": f"grid.sync + global read, {size} blocks (cooperative)"}.get(kind) or (
        f"{BULK_WHAT[BULK_SEG[kind][1]]}, {BULK_SEG[kind][0]} B to each peer, cluster of {size // THREADS}")


def run(device, budget: common.Budget, env: Dict[str, Any], quick: bool = False) -> List[Dict[str, Any]]:
    """All floor rows (one 'n/a' row with the reason where the suite cannot run at all)."""
    device = torch.device(device)
    lib, why = library(device)
    common_fields = {k: env[k] for k in ("card", "torch", "cuda", "command")}
    if lib is None:
        row = {"suite": "floor", "kind": "all", "size": None, "status": "n/a", "reason": why, **common_fields}
        common.progress(1, 1, budget, f"floor suite: {why}")
        return [row]
    timing = dict(warmup=2, min_reps=5 if quick else 15, max_reps=10 if quick else 30, target_s=0.3)
    rows = []
    for i, (kind, size, steps) in enumerate(CASES, 1):
        skip = budget.refuse(3.0)
        if skip:
            rows.append({"suite": "floor", "kind": kind, "size": size, "status": "skipped", "reason": skip})
        else:
            try:
                rows.append(measure_case(lib, kind, size, steps // (10 if quick else 1), device, timing))
            except Exception as e:  # reported as the row's status
                rows.append({"suite": "floor", "kind": kind, "size": size, "status": "error",
                             "reason": f"{type(e).__name__}: {e}"[:400]})
        r = rows[-1]
        r.update(common_fields)
        r["what"] = label(kind, r["size"] or size)
        shown = f"{r['us_per_step']:.3f} µs/step" if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"
        common.progress(i, len(CASES), budget, f"{r['what']:<52} {shown}")
    return rows


def floors(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """The floor per family kind, for the layer table: block, cluster (size 2..16: the largest
    measured size the cluster kernels would use is not known here, so the smallest), grid (1 per SM)."""
    out: Dict[str, float] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        k = r["kind"]
        if k == "block" or (k == "cluster" and r["size"] == 2) or (k == "grid" and r["size"] != 8):
            out[k] = r["us_per_step"]
    return out


def markdown(rows: List[Dict[str, Any]], env: Dict[str, Any]) -> str:
    cols = [("synchronisation per step", "what", 0), ("µs/step", "us_per_step", 3), ("S", "steps", 0),
            ("t(S) ms", "t_S_ms", 3), ("t(2S) ms", "t_2S_ms", 3),
            ("status", lambda r: r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}", 0)]
    return "\n".join([f"# Floor suite on {env['card']}", "", common.env_header(env), "",
                      "Per-step cost = (t(2S) - t(S)) / S, t = median CUDA-event time of one launch of S steps; "
                      "every launch checked (each participant counts exactly S steps).", "",
                      common.markdown_table(rows, cols), ""])
