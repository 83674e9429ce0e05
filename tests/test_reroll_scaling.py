"""The reroll pass is linear in the number of steps and takes under 2 s at T = 1024.

Dynamo needs ~1 minute to unroll 1024 steps on the CI machine, so the graph here is unrolled by
torch.fx.symbolic_trace (the same spelling Dynamo keeps: getattr(W, 'T'), operator.matmul,
call_method chunk, getitem, torch.sigmoid) and given example values by running it once."""

import time

import torch
import torch.fx
import torch.nn as nn

from flashrnn_compile.context import BackendOptions, PassContext
from flashrnn_compile.passes.canonicalize import canonicalize_pass
from flashrnn_compile.passes.reroll import reroll_pass

B, I, H = 2, 4, 8


class UnrolledLSTM(nn.Module):
    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.W = nn.Parameter(torch.randn(4 * H, I) * 0.3)
        self.U = nn.Parameter(torch.randn(4 * H, H) * 0.3)
        self.b = nn.Parameter(torch.randn(4 * H) * 0.3)

    def forward(self, x):  # x [B, T, I]
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        outs = []
        for t in range(self.steps):
            g = x[:, t] @ self.W.T + h @ self.U.T + self.b
            i, f, z, o = g.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1)


def _record(gm, x):
    """Run the graph once, node by node, keeping every value as meta['example_value']."""
    env = {}
    for n in gm.graph.nodes:
        load = lambda a: torch.fx.node.map_arg(a, lambda m: env[m])  # noqa: E731
        if n.op == "placeholder":
            out = x
        elif n.op == "get_attr":
            out = getattr(gm, n.target)
        elif n.op == "call_function":
            out = n.target(*load(n.args), **load(n.kwargs))
        elif n.op == "call_method":
            self_, *rest = load(n.args)
            out = getattr(self_, n.target)(*rest, **load(n.kwargs))
        else:
            continue
        env[n] = out
        n.meta["example_value"] = out


def _graph(steps):
    torch.manual_seed(0)
    model = UnrolledLSTM(steps)
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(B, steps, I)
    with torch.no_grad():
        _record(gm, x)
    return model, gm, x


def _pass_seconds(gm):
    ctx = PassContext(BackendOptions(inner="eager"))
    t0 = time.perf_counter()
    gm = reroll_pass(canonicalize_pass(gm, ctx), ctx)
    return time.perf_counter() - t0, gm, ctx


def test_pass_is_linear_and_fast():
    times = {}
    for steps, repeats in ((256, 2), (1024, 1)):
        best = float("inf")
        for _ in range(repeats):
            model, gm, x = _graph(steps)
            n_before = len(gm.graph.nodes)
            seconds, gm, ctx = _pass_seconds(gm)
            best = min(best, seconds)
            assert len(ctx.rewrites) == 1 and ctx.rewrites[0].steps == steps
            assert len(gm.graph.nodes) < 60 < n_before
        times[steps] = best
        if steps == 256:
            with torch.no_grad():
                torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    assert times[1024] < 2.0, times
    # linear: 4x the steps, at most ~6x the time (slack for a busy 2-core machine)
    assert times[1024] < 6.0 * times[256] + 0.05, times
