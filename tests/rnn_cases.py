"""Configurations and helpers shared by the nn.LSTM / GRU / RNN tests on CPU (test_rnn_module.py)
and on the GPU (gpu/test_rnn_module_gpu.py): module factory, inputs, flattening of outputs."""

import torch
import torch.nn as nn


def make_rnn(kind, I=3, H=5, **kw):
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}[kind]
    if kind.startswith("rnn_"):
        kw["nonlinearity"] = kind[4:]
    return cls(I, H, **kw)


def make_inputs(mod, T, B, *, hx, unbatched=False, dtype=torch.float32, seed=0):
    """x [T, B, I] (or [B, T, I], or [T, I] unbatched) and optionally the initial states."""
    g = torch.Generator().manual_seed(seed)
    batch = () if unbatched else ((B, T) if mod.batch_first else (T, B))
    x = torch.randn(*(batch or (T,)), mod.input_size, generator=g, dtype=dtype)
    if not hx:
        return (x,)
    D = 2 if mod.bidirectional else 1
    lead = (mod.num_layers * D,) + (() if unbatched else (B,))
    h_size = mod.proj_size or mod.hidden_size
    h0 = torch.randn(*lead, h_size, generator=g, dtype=dtype)
    if isinstance(mod, nn.LSTM):
        return (x, (h0, torch.randn(*lead, mod.hidden_size, generator=g, dtype=dtype)))
    return (x, h0)


def leaves(args):
    """The tensors of (x, hx) flattened: [x, h0(, c0)]."""
    out = []
    for a in args:
        out.extend(a if isinstance(a, tuple) else (a,))
    return out


def detach_like(args, requires_grad=True):
    return tuple(
        tuple(t.detach().clone().requires_grad_(requires_grad) for t in a)
        if isinstance(a, tuple)
        else a.detach().clone().requires_grad_(requires_grad)
        for a in args
    )


def flat_outputs(out):
    """(output, h_n) or (output, (h_n, c_n)) -> [output, h_n(, c_n)]."""
    output, hidden = out
    return [output] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def loss_of(outs, seed=1):
    """A loss with a random weight per element, so that every output gets a distinct gradient."""
    g = torch.Generator().manual_seed(seed)
    return sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)


# (kind, module kwargs, T, B, hx given, unbatched): every item of the issue, in combinations


MATRIX = [
    ("lstm", dict(), 6, 3, False, False),
    ("lstm", dict(num_layers=2, bidirectional=True), 5, 2, True, False),
    ("lstm", dict(num_layers=3, batch_first=True, bias=False), 4, 3, True, False),
    ("lstm", dict(num_layers=4, bidirectional=True, batch_first=True), 3, 2, False, False),
    ("lstm", dict(proj_size=3), 5, 2, True, False),
    ("lstm", dict(proj_size=2, num_layers=2, bidirectional=True, batch_first=True), 4, 3, True, False),
    ("lstm", dict(num_layers=2, bidirectional=True), 5, 1, True, True),
    ("lstm", dict(num_layers=2, dropout=0.5), 4, 2, True, False),  # train mode, see DROPOUT
    ("gru", dict(), 6, 3, True, False),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True), 5, 2, False, False),
    ("gru", dict(num_layers=3, bias=False), 4, 2, True, False),
    ("gru", dict(num_layers=2), 5, 1, False, True),
    ("rnn_tanh", dict(num_layers=2, bidirectional=True), 5, 3, True, False),
    ("rnn_tanh", dict(bias=False, batch_first=True), 4, 2, False, False),
    ("rnn_relu", dict(num_layers=4, batch_first=True), 4, 2, True, False),
    ("rnn_relu", dict(bidirectional=True), 5, 2, True, True),
]


def _id(case):
    kind, kw, T, B, hx, unbatched = case
    parts = [kind] + [f"{k}={v}" for k, v in kw.items()] + [f"T{T}B{B}", "hx" if hx else "nohx"]
    return "-".join(parts + (["unbatched"] if unbatched else []))


def cast_args(args, dtype):
    return tuple(tuple(t.to(dtype) for t in a) if isinstance(a, tuple) else a.to(dtype) for a in args)


def count_graphs(mod, backend, args_list, run):
    """Compile `mod` behind a backend that counts the graphs Dynamo hands it, then run(fn, args)
    for each args of args_list; returns (number of graphs, [run's results])."""
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return backend(gm, example_inputs)

    fn = torch.compile(mod, backend=counting)
    results = [run(fn, args) for args in args_list]
    return len(graphs), results


def guard_failures() -> list:
    """Dynamo's reasons for the recompiles since the last torch._dynamo.reset() (for messages)."""
    from torch._dynamo.utils import guard_failures as failures

    return [reason for reasons in failures.values() for reason in reasons]
