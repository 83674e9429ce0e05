"""Bidirectional nn.LSTM / nn.GRU under torch.compile(backend="flashrnn"): both directions in one
launch (options bidirectional="merged") against one launch per direction ("split"), what "auto"
picks, and cuDNN (eager) in bf16 and fp16.

    python benchmarks/bench_bidirectional.py [--out results.json] [--reps 20] [--configs 0,1] [--inner inductor]

Each row times the module's forward without grad and its forward + backward (autograd.grad to the
input and every parameter, upstream gradient random): CUDA events after warm-up, median of
--reps calls (suites.common.measure). The compiled rows include the input GEMMs and the glue
(stacking and flipping gx, flipping h back), like the user's model. "merged vs split" is the
largest absolute difference of the outputs of the two compiled modules (same weights and input);
"err/cuDNN" is the output's error against a float64 copy over cuDNN's in the same dtype.
"""

from __future__ import annotations

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suites import common  # noqa: E402

import flashrnn_compile  # noqa: E402,F401  (registers the backend, sets allow_rnn)
from flashrnn_compile.testing import rel_err  # noqa: E402

CONFIGS = [  # module, H, layers, B, T
    ("LSTM", 768, 1, 16, 1024),
    ("GRU", 768, 1, 16, 1024),
    ("LSTM", 512, 2, 16, 1024),
    ("LSTM", 64, 1, 16, 1024),
    ("LSTM", 768, 1, 64, 1024),  # the two-head plan needs a second wave of clusters (a tie: auto merges)
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _fns(mod, x, dy):
    def fwd():
        with torch.no_grad():
            return mod(x)[0]

    def fwd_bwd():
        torch.autograd.grad(mod(x)[0], [x, *mod.parameters()], dy)

    return fwd, fwd_bwd


def _time(mod, x, dy, reps):
    fwd, fwd_bwd = _fns(mod, x, dy)
    first = common.timed_call(fwd, "cuda") + common.timed_call(fwd_bwd, "cuda")  # compiles
    t_f = common.measure(fwd, "cuda", warmup=3, min_reps=reps, max_reps=reps)
    t_b = common.measure(fwd_bwd, "cuda", warmup=3, min_reps=reps, max_reps=reps)
    return {"fwd_ms": t_f.median_ms, "fwd_bwd_ms": t_b.median_ms, "first_calls_s": first}


def _plans(before: int):
    reps = flashrnn_compile.reports()[before:]
    return sorted({(w["plan"]["family"], "both directions in one launch" in w["plan"]["reason"])
                   for r in reps for w in r["rewrites"]})


def run_config(cfg, reps: int, inner: str):
    kind, H, L, B, T = cfg
    label = f"{kind} {L}x{H} bidirectional B{B} T{T}"
    torch.manual_seed(0)
    base = getattr(torch.nn, kind)(H, H, num_layers=L, bidirectional=True)
    rows = []
    x64 = torch.randn(T, B, H, dtype=torch.float64, device="cuda")  # [T, B, H]
    with torch.no_grad():
        ref = copy.deepcopy(base).double().cuda()(x64)[0]  # [T, B, 2H]
    outs = {}
    for name, dt in DTYPES.items():
        mod = copy.deepcopy(base).to("cuda", dt)
        x = x64.to(dt).requires_grad_(True)
        dy = torch.randn(T, B, 2 * H, device="cuda", dtype=dt)  # [T, B, 2H]
        with torch.no_grad():
            out = mod(x)[0]
        row = {"config": label, "system": f"cuDNN {name}", **_time(mod, x, dy, reps), "err": rel_err(out, ref)}
        rows.append(row)
    cudnn_err = rows[0]["err"]
    for mode in ("merged", "split", "auto"):
        torch._dynamo.reset()
        mod = copy.deepcopy(base).to("cuda", torch.bfloat16)
        x = x64.to(torch.bfloat16).requires_grad_(True)
        dy = torch.randn(T, B, 2 * H, device="cuda", dtype=torch.bfloat16)  # [T, B, 2H]
        before = len(flashrnn_compile.reports())
        compiled = torch.compile(mod, backend="flashrnn", options={"inner": inner, "bidirectional": mode})
        timing = _time(compiled, x, dy, reps)
        with torch.no_grad():
            outs[mode] = compiled(x)[0]
        plans = _plans(before)
        row = {"config": label, "system": f"ours bf16 {mode}", **timing, "err": rel_err(outs[mode], ref),
               "plan": "; ".join(f"{f}{' merged' if m else ''}" for f, m in plans)}
        rows.append(row)
    diff = (outs["merged"].float() - outs["split"].float()).abs().max().item()
    for row in rows:
        row["err/cuDNN bf16"] = row["err"] / cudnn_err if cudnn_err > 0 else float("nan")
        if row["system"].startswith("ours"):
            row["merged vs split"] = diff
    split = next(r for r in rows if r["system"] == "ours bf16 split")
    for row in rows:
        row["fwd_bwd vs split"] = row["fwd_bwd_ms"] / split["fwd_bwd_ms"]
    torch._dynamo.reset()
    return rows


COLUMNS = [("config", "config", -34, 0), ("system", "system", -17, 0), ("fwd ms", "fwd_ms", 8, 3),
           ("fwd+bwd ms", "fwd_bwd_ms", 10, 3), ("/split", "fwd_bwd vs split", 7, 3),
           ("err/cuDNN bf16", "err/cuDNN bf16", 14, 2), ("|merged-split|", "merged vs split", 14, 5),
           ("plan", "plan", -28, 0)]

def main():
    p = common.bench_parser()
    p.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS")
    p.add_argument("--inner", default="inductor")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_bidirectional: needs a CUDA device")
    picks = [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    rows = []
    for cfg in picks:
        rows += run_config(cfg, args.reps, args.inner)
        print(common.text_table(rows[-5:], COLUMNS), flush=True)
    common.bench_report(rows, args.out, args.reps, COLUMNS)


if __name__ == "__main__":
    main()
