"""Print Dynamo's recompile reasons for nn.LSTM / nn.GRU when T and B change, under Dynamo's eager
backend and under backend="flashrnn" (aot_eager inside), so a difference in graph counts can be
traced to the guard that caused it. Usage: python benchmarks/probe_recompiles.py [cuda|cpu] [plan|auto] [lstm|gru|both] [flashrnn]
(TORCH_LOGS=+dynamic then shows which line added each shape guard.)"""

import copy
import sys

import torch

from flashrnn_compile.backend import flashrnn_backend
from tests.rnn_cases import cast_args, count_graphs, detach_like, flat_outputs, guard_failures, loss_of, make_inputs, make_rnn


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    options = {"inner": "aot_eager"}
    if len(sys.argv) > 2 and sys.argv[2] != "auto":
        options["plan"] = sys.argv[2]
    kinds = ("lstm", "gru") if len(sys.argv) <= 3 or sys.argv[3] == "both" else (sys.argv[3],)
    only = sys.argv[4] if len(sys.argv) > 4 else None
    shapes = [(12, 4), (20, 7), (20, 16), (5, 16)]  # (T, B)
    for kind in kinds:
        torch.manual_seed(0)
        base = make_rnn(kind, I=8, H=64, bidirectional=True, batch_first=True)
        for name, backend in (("eager", lambda gm, ex: gm.forward),
                              ("flashrnn", lambda gm, ex: flashrnn_backend(gm, ex, options=options))):
            if only and name != only:
                continue
            mod = copy.deepcopy(base).to(torch.bfloat16).to(device)
            calls = [detach_like(tuple(t.to(device) if isinstance(t, torch.Tensor) else tuple(u.to(device) for u in t)
                                       for t in cast_args(make_inputs(mod, T, B, hx=True, seed=T + B), torch.bfloat16)))
                     for T, B in shapes]

            def run(fn, args):
                loss_of([o.float().cpu() for o in flat_outputs(fn(*args))]).backward()

            n, _ = count_graphs(mod, backend, calls, run)
            print(f"== {kind} {name}: {n} graphs")
            for reason in guard_failures():
                print("   ", reason)


if __name__ == "__main__":
    main()
