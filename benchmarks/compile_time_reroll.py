"""Compile time of a hand-written LSTM loop: backend="flashrnn" (reroll pass + Inductor) against
Inductor alone, side by side, on this machine's CPU.

    python benchmarks/compile_time_reroll.py [--out benchmarks/results/cpu] [--quick]

Every configuration runs in a fresh subprocess with an empty Inductor cache directory (cold
compile). Measured per configuration: first call forward+backward (Dynamo + passes + Inductor
compile of the forward and backward graphs + one run), the second call (the run alone), their
difference (compile), the time of the flashrnn passes alone, and the Dynamo graph size. The
loop is the one of DESIGN.md: x_t @ W.T + h @ U.T + b, chunk, sigmoid/tanh, outputs stacked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

B, I, H = 8, 64, 64

CONFIGS = [
    # (name, backend, T)
    ("flashrnn+inductor", "flashrnn", 1024),
    ("inductor alone", "inductor", 128),
    ("flashrnn+inductor", "flashrnn", 128),
]


def _child(backend: str, T: int) -> dict:
    import torch
    import torch.nn as nn

    import flashrnn_compile  # noqa: F401  (registers the ops)
    from flashrnn_compile import passes

    class HandLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(4 * H, I) / I**0.5)
            self.U = nn.Parameter(torch.randn(4 * H, H) / H**0.5)
            self.b = nn.Parameter(torch.zeros(4 * H))

        def forward(self, x):  # x [B, T, I]
            h = x.new_zeros(x.shape[0], H)
            c = x.new_zeros(x.shape[0], H)
            outs = []
            for t in range(x.shape[1]):
                g = x[:, t] @ self.W.T + h @ self.U.T + self.b
                i, f, z, o = g.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            return torch.stack(outs, 1)

    pass_time = {"s": 0.0}
    nodes = {"dynamo": 0, "after": 0}
    wrapped = []
    first_pass = passes.PASSES[0]
    for p in passes.PASSES:
        def timed(gm, ctx, _p=p):
            if _p is first_pass:
                nodes["dynamo"] = max(nodes["dynamo"], len(gm.graph.nodes))
            t0 = time.perf_counter()
            out = _p(gm, ctx)
            pass_time["s"] += time.perf_counter() - t0
            nodes["after"] = len(out.graph.nodes)
            return out
        wrapped.append(timed)
    passes.PASSES[:] = wrapped

    torch.manual_seed(0)
    model = HandLSTM()
    x = torch.randn(B, T, I)
    if backend == "flashrnn":
        compiled = torch.compile(model, backend="flashrnn", options={"inner": "inductor"})
    else:
        def count(gm, example_inputs):
            nodes["dynamo"] = max(nodes["dynamo"], len(gm.graph.nodes))
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(gm, example_inputs)
        compiled = torch.compile(model, backend=count)

    def step():
        out = compiled(x)
        out.square().mean().backward()
        return out

    t0 = time.perf_counter()
    out = step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    second = time.perf_counter() - t0
    ref = model(x)
    err = ((out - ref).norm() / ref.norm()).item()
    stats = flashrnn_compile.stats()
    return {
        "backend": backend, "T": T, "first_call_s": first, "second_call_s": second,
        "compile_s": first - second, "flashrnn_passes_s": pass_time["s"] if backend == "flashrnn" else None,
        "dynamo_nodes": nodes["dynamo"], "nodes_after_passes": nodes["after"] if backend == "flashrnn" else None,
        "rel_err_vs_eager": err, "stats": stats,
    }


def _machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu"))
    ap.add_argument("--quick", action="store_true", help="small T only (smoke run, not for results)")
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "T"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return
    configs = [(n, b, 16 if args.quick else T) for n, b, T in CONFIGS]
    rows = []
    load_start = os.getloadavg()
    for name, backend, T in configs:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0",
                       TORCHINDUCTOR_AUTOGRAD_CACHE="0")
            res = subprocess.run([sys.executable, __file__, "--child", backend, str(T)], env=env,
                                 capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{name} T={T} failed:\n{res.stderr[-4000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["name"] = name
        rows.append(row)
        print(f"{name:20s} T={T:5d}  first call {row['first_call_s']:7.2f} s  run {row['second_call_s']:6.3f} s  "
              f"compile {row['compile_s']:7.2f} s  passes {row['flashrnn_passes_s'] or 0:6.3f} s  "
              f"Dynamo nodes {row['dynamo_nodes']}", flush=True)
    result = {
        "command": "python benchmarks/compile_time_reroll.py" + (" --quick" if args.quick else ""),
        "machine": _machine(), "model": {"B": B, "I": I, "H": H, "cell": "hand-written LSTM, fwd+bwd"},
        "rows": rows,
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
    }
    if args.quick:
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compile_time_reroll.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "# Compile time: hand-written LSTM loop, flashrnn (reroll + Inductor) vs Inductor alone (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}  ",
        f"Model: B={B}, I={I}, H={H}, forward + backward; each row a fresh process with an empty Inductor cache.  ",
        f"Load average (1 min) at start / end: {result['load_average_1min']['start']:.1f} / "
        f"{result['load_average_1min']['end']:.1f} (the machine is shared; absolute times vary with load).  ",
        "Compile = first call - steady call. Steady call of the flashrnn rows runs the PyTorch reference of the "
        "core op (CPU has no kernel), a Python loop over T in forward and backward.",
        "",
        "| backend | T | first call (s) | steady call (s) | compile (s) | flashrnn passes (s) | Dynamo nodes | rel. err vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        passes_s = "-" if r["flashrnn_passes_s"] is None else f"{r['flashrnn_passes_s']:.3f}"
        lines.append(f"| {r['name']} | {r['T']} | {r['first_call_s']:.2f} | {r['second_call_s']:.3f} | "
                     f"{r['compile_s']:.2f} | {passes_s} | {r['dynamo_nodes']} | {r['rel_err_vs_eager']:.1e} |")
    with open(os.path.join(args.out, "compile_time_reroll.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
