"""The CPU plan for nn.LSTM/GRU/RNN: ATen's own kernel, wrapped whole in flashrnn::aten_rnn."""

import copy

import pytest
import torch

import flashrnn_compile
from flashrnn_compile.aten_rnn import aten_rnn

MODULES = {
    "lstm": lambda: torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "gru": lambda: torch.nn.GRU(3, 5, batch_first=True),
    "rnn_relu": lambda: torch.nn.RNN(3, 5, nonlinearity="relu", bias=False),
}


def _ops_in(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_auto_on_cpu_keeps_aten_and_matches_eager(kind):
    torch.manual_seed(0)
    mod = MODULES[kind]()
    ours = copy.deepcopy(mod)
    x = torch.randn(6, 4, 3, requires_grad=True)
    graphs = []

    def backend(gm, example_inputs):
        fn = flashrnn_compile.flashrnn_backend(gm, example_inputs, options={"inner": "aot_eager"})
        graphs.append(gm)
        return fn

    flashrnn_compile.reset_stats()
    out = torch.compile(ours, backend=backend)(x)[0]
    (report,) = flashrnn_compile.reports()
    assert report["rewrites"][0]["plan"]["family"] == "aten"
    assert "torch.lstm" not in str(_ops_in(graphs[0]))
    assert sum("flashrnn.aten_rnn" in op for op in _ops_in(graphs[0])) == 1
    want = mod(x)[0]
    g_out = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, [x, *ours.parameters()], g_out)
    want_grads = torch.autograd.grad(want, [x, *mod.parameters()], g_out)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_aot_autograd_does_not_unroll_it():
    """The forward graph AOTAutograd makes holds one aten_rnn node, whatever T is."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    sizes = []

    def count(gm, example_inputs):
        sizes.append(len(gm.graph.nodes))
        return make_boxed_func(gm.forward)

    inner = aot_autograd(fw_compiler=count, bw_compiler=count)

    def backend(gm, example_inputs):
        gm = flashrnn_compile.backend.run_passes(
            gm, flashrnn_compile.context.PassContext(flashrnn_compile.context.BackendOptions()))
        return inner(gm, example_inputs)

    for T in (4, 64):
        sizes.clear()
        torch._dynamo.reset()
        lstm = torch.nn.LSTM(3, 5)
        torch.compile(lstm, backend=backend)(torch.randn(T, 2, 3, requires_grad=True))[0].sum().backward()
        assert sizes and max(sizes) < 40, sizes


def test_training_dropout_and_bfloat16_take_the_reference_rewrite():
    torch.manual_seed(0)
    flashrnn_compile.reset_stats()
    lstm = torch.nn.LSTM(3, 5, num_layers=2, dropout=0.5).train()
    torch.compile(lstm, backend="flashrnn", options={"inner": "eager"})(torch.randn(4, 2, 3))
    gru = torch.nn.GRU(3, 5).to(torch.bfloat16)
    torch.compile(gru, backend="flashrnn", options={"inner": "eager"})(torch.randn(4, 2, 3, dtype=torch.bfloat16))
    families = [r["plan"]["family"] for rep in flashrnn_compile.reports() for r in rep["rewrites"]]
    assert families == ["reference", "reference"]


def test_bad_mode():
    with pytest.raises(ValueError, match="mode: expected one of"):
        aten_rnn("lstmx", torch.randn(2, 1, 3), [torch.zeros(1, 1, 4)], [], False, 1, 0.0, False, False, False)


@pytest.mark.parametrize("batch_first", [False, True])
def test_opcheck_fake_matches_real(batch_first):
    """The fake kernels' layouts are the real ones' (Inductor asserts them): batch_first too."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(2, 5, 3, requires_grad=True)
    hx = [torch.zeros(4, 2 if batch_first else 5, 4, requires_grad=True) for _ in range(2)]
    args = ("lstm", x, hx, list(lstm._flat_weights), True, 2, 0.0, False, True, batch_first)
    torch.library.opcheck(aten_rnn, args)


def test_inductor_trains_batch_first_lstm_like_eager():
    """Inductor checks the custom ops' output strides against their fake kernels at run time."""
    from flashrnn_compile.demo import LSTMLanguageModel

    torch.manual_seed(0)
    mod = LSTMLanguageModel(vocab=16, emb=6, hidden=5, layers=2)
    ours = copy.deepcopy(mod)
    tokens = torch.randint(0, 16, (3, 7))
    out = torch.compile(ours, backend="flashrnn")(tokens)
    out.square().sum().backward()
    mod(tokens).square().sum().backward()
    for p, q in zip(ours.parameters(), mod.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
