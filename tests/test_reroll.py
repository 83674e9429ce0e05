"""The reroll pass on a gallery of differently written recurrent models: the expected stats()
(what was rewritten, from which source, what was refused), and compiled == eager for outputs
and every gradient (float32, 1e-5 relative)."""

import os
import sys

import pytest
import torch

import flashrnn_compile
from flashrnn_compile import reset_stats, stats

sys.path.insert(0, os.path.dirname(__file__))
import test_reroll_models as G  # noqa: E402


def _stats(cell_loop=0, handwritten=0, rejected=0):
    return {
        "rewritten": cell_loop + handwritten,
        "by_source": {"module": 0, "cell_loop": cell_loop, "handwritten": handwritten},
        "rejected": rejected,
    }


def _inputs(name, gen):
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    BTI, TBI = (G.B, G.T, G.I), (G.T, G.B, G.I)
    return {
        "LSTMCellLoop": lambda: (r(*TBI),),
        "GRUCellLoop": lambda: (r(*BTI), r(G.B, G.H)),
        "RNNTanhCellLoop": lambda: (r(*TBI),),
        "RNNReluCellLoop": lambda: (r(*BTI),),
        "LSTMFused": lambda: (r(*BTI),),
        "LSTMPerGateLinear": lambda: (r(*BTI), r(G.B, G.H), r(G.B, G.H)),
        "LSTMAddmmSplitBackward": lambda: (r(*TBI),),
        "LSTMEinsumCat": lambda: (r(*BTI),),
        "LSTMPrecomputedInput": lambda: (r(*BTI),),
        "GRUHand": lambda: (r(*BTI),),
        "ElmanTanhHand": lambda: (r(*TBI),),
        "ElmanReluHand": lambda: (r(*TBI), r(G.B, G.H)),
        "MultiHeadLSTMEinsum": lambda: (r(*BTI),),
        "MultiHeadGRUBmm": lambda: (r(*TBI),),
        "ResetBeforeGRU": lambda: (r(*BTI),),
        "DecoderFeedback": lambda: (r(G.B, G.I), r(G.B, G.H), r(G.B, G.H)),
        "WeightsPerStep": lambda: (r(*TBI),),
        "CellStateCollected": lambda: (r(*TBI),),
        "DataDependentLoop": lambda: (r(*TBI),),
        "BidirectionalElmanHand": lambda: (r(*TBI),),
        "AttentionInLoop": lambda: (r(*TBI), r(G.B, 4, G.I)),
        "NoGradInLoop": lambda: (r(*TBI),),
    }[name]()


# model -> (expected stats, expected cell of the rewrite or None)
GALLERY = {
    "LSTMCellLoop": (_stats(cell_loop=1), "lstm"),
    "GRUCellLoop": (_stats(cell_loop=1), "gru"),
    "RNNTanhCellLoop": (_stats(cell_loop=1), "elman_tanh"),
    "RNNReluCellLoop": (_stats(cell_loop=1), "elman_relu"),
    "LSTMFused": (_stats(handwritten=1), "lstm"),
    "LSTMPerGateLinear": (_stats(handwritten=1), "lstm"),
    "LSTMAddmmSplitBackward": (_stats(handwritten=1), "lstm"),
    "LSTMEinsumCat": (_stats(handwritten=1), "lstm"),
    "LSTMPrecomputedInput": (_stats(handwritten=1), "lstm"),
    "GRUHand": (_stats(handwritten=1), "gru"),
    "ElmanTanhHand": (_stats(handwritten=1), "elman_tanh"),
    "ElmanReluHand": (_stats(handwritten=1), "elman_relu"),
    "MultiHeadLSTMEinsum": (_stats(handwritten=1), "lstm"),
    "MultiHeadGRUBmm": (_stats(handwritten=1), "gru"),
    "ResetBeforeGRU": (_stats(rejected=1), None),
    "DecoderFeedback": (_stats(rejected=1), None),
    "WeightsPerStep": (_stats(rejected=1), None),
    "CellStateCollected": (_stats(rejected=1), None),
    "DataDependentLoop": (_stats(), None),
    "BidirectionalElmanHand": (_stats(handwritten=2), "elman_tanh"),
    "AttentionInLoop": (_stats(rejected=1), None),
    "NoGradInLoop": (_stats(rejected=1), None),
}

HEADS = {"MultiHeadLSTMEinsum": G.NH, "MultiHeadGRUBmm": G.NH}
REVERSED = {"RNNReluCellLoop", "LSTMAddmmSplitBackward"}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_and_compare(model, args, inner="aot_eager"):
    """Compile, run forward and backward on the same inputs; compare with eager. Returns the
    compiled model's rewrite reports."""
    torch._dynamo.reset()
    reset_stats()
    eager_args = [a.clone().requires_grad_(True) for a in args]
    comp_args = [a.clone().requires_grad_(True) for a in args]
    compiled = torch.compile(model, backend="flashrnn", options={"inner": inner})
    out_c = _flat(compiled(*comp_args))
    out_e = _flat(model(*eager_args))
    assert len(out_c) == len(out_e)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(o.shape, generator=gen) for o in out_e]
    for oc, oe in zip(out_c, out_e):
        assert oc.shape == oe.shape
        assert _rel(oc.detach(), oe.detach()) <= 1e-5
    params = [p for p in model.parameters()]
    loss_c = sum((o * w).sum() for o, w in zip(out_c, weights))
    loss_e = sum((o * w).sum() for o, w in zip(out_e, weights))
    grads_c = torch.autograd.grad(loss_c, comp_args + params, allow_unused=True)
    grads_e = torch.autograd.grad(loss_e, eager_args + params, allow_unused=True)
    for gc, ge in zip(grads_c, grads_e):
        assert (gc is None) == (ge is None)
        if ge is not None:
            assert _rel(gc, ge) <= 1e-5
    return stats()


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_gallery(name, monkeypatch):
    expected, cell = GALLERY[name]
    torch.manual_seed(0)
    model = getattr(G, name)()
    args = _inputs(name, torch.Generator().manual_seed(1))
    rewrites = []
    from flashrnn_compile import context

    original = context.PassContext.rewrote

    def spy(self, rw):
        rewrites.append(rw)
        return original(self, rw)

    monkeypatch.setattr(context.PassContext, "rewrote", spy)
    got = run_and_compare(model, args)
    assert got == expected
    if cell is not None:
        assert [r.cell for r in rewrites] == [cell] * expected["rewritten"]
        for r in rewrites:
            assert (r.steps, r.heads, r.batch) == (G.T, HEADS.get(name, 1), G.B)


def test_reroll_removes_the_unrolled_steps():
    """After the pass the graph holds one core op and no per-step matmul."""
    from flashrnn_compile.backend import run_passes
    from flashrnn_compile.context import BackendOptions, PassContext

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(run_passes(gm, PassContext(BackendOptions(inner="eager"), example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = G.LSTMFused()
    torch.compile(model, backend=capture)(torch.randn(G.B, G.T, G.I))
    targets = [n.target for n in graphs[0].graph.nodes]
    assert targets.count(torch.ops.flashrnn.recurrence_fwd.default) == 1
    assert sum(t is torch.sigmoid or t == "sigmoid" for t in targets) == 0
    assert len(graphs[0].graph.nodes) < 60


def test_refusal_reasons_are_recorded():
    from flashrnn_compile import context

    recorded = []
    original = context.PassContext.refused

    def spy(self, source, reason, nodes=()):
        recorded.append((source, reason))
        return original(self, source, reason, nodes)

    context.PassContext.refused = spy
    try:
        for name in ("ResetBeforeGRU", "DecoderFeedback", "WeightsPerStep", "CellStateCollected"):
            torch.manual_seed(0)
            run_and_compare(getattr(G, name)(), _inputs(name, torch.Generator().manual_seed(1)))
    finally:
        context.PassContext.refused = original
    sources = [s for s, _ in recorded]
    reasons = [r for _, r in recorded]
    assert sources == ["handwritten", "cell_loop", "cell_loop", "cell_loop"]
    assert "pair up" in reasons[0]
    assert "depends on an earlier state" in reasons[1]
    assert "weights that differ between steps" in reasons[2]
    assert "used outside the loop" in reasons[3]


def test_inductor_small():
    torch.manual_seed(0)
    got = run_and_compare(G.GRUHand(), _inputs("GRUHand", torch.Generator().manual_seed(1)), inner="inductor")
    assert got == _stats(handwritten=1)


@pytest.mark.parametrize("name", ["LSTMFused", "GRUHand"])
def test_low_precision_within_twice_pytorch_error(name):
    """bfloat16: error against float64 <= 2x the error of eager PyTorch in bfloat16, for the
    outputs and every gradient (inputs and weights)."""
    import copy

    from flashrnn_compile.testing import rel_err, within

    torch._dynamo.reset()
    reset_stats()
    torch.manual_seed(0)
    model = getattr(G, name)()
    (x,) = _inputs(name, torch.Generator().manual_seed(1))
    def run(m, dtype, compile_it):
        m = copy.deepcopy(m).to(dtype)
        xi = x.to(dtype).requires_grad_(True)
        f = torch.compile(m, backend="flashrnn", options={"inner": "aot_eager"}) if compile_it else m
        outs = _flat(f(xi))
        g = torch.Generator().manual_seed(3)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
        grads = torch.autograd.grad(loss, [xi] + list(m.parameters()))
        return outs + list(grads)

    ref = run(model, torch.float64, False)
    pytorch = run(model, torch.bfloat16, False)
    ours = run(model, torch.bfloat16, True)
    assert stats()["rewritten"] == 1
    for r, p, o in zip(ref, pytorch, ours):
        assert within(rel_err(o, r), rel_err(p, r)), (rel_err(o, r), rel_err(p, r))
