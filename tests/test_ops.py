"""The core op: semantics against an independent step loop, gradcheck, opcheck, bad input."""

import itertools

import pytest
import torch

from flashrnn_compile import CELLS, recurrence
from flashrnn_compile.ops import recurrence_fwd
from flashrnn_compile.runtime import REFERENCE_PLAN, plan_json

CELL_NAMES = sorted(CELLS)


def make_inputs(cell, T, B, NH, DH, *, dtype=torch.float64, seed=0, requires_grad=False):
    spec = CELLS[cell]
    g = torch.Generator().manual_seed(seed)
    G, S = spec.num_gates, spec.num_states
    gx = torch.randn(T, B, NH, G, DH, generator=g, dtype=dtype)  # [T, B, NH, G, DH]
    R = torch.randn(NH, G, DH, DH, generator=g, dtype=dtype) / DH**0.5  # [NH, G, DH, DH]
    b = torch.randn(NH, G, DH, generator=g, dtype=dtype)  # [NH, G, DH]
    s0 = torch.randn(S, B, NH, DH, generator=g, dtype=dtype)  # [S, B, NH, DH]
    if cell == "slstm":  # n > 0 is the normaliser's domain
        s0[2] = s0[2].abs() + 0.5
    tensors = (gx, R, b, s0)
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


def dense_loop(cell, gx, R, b, s0, reverse):
    """An independent statement of the semantics: block-diagonal R as one dense matrix per gate,
    the cell's step on the flat hidden vector. h [T, B, NH*DH]."""
    spec = CELLS[cell]
    T, B, NH, G, DH = gx.shape
    H = NH * DH
    dense = torch.zeros(G, H, H, dtype=gx.dtype)  # [G, H(out), H(in)]
    for n in range(NH):
        dense[:, n * DH : (n + 1) * DH, n * DH : (n + 1) * DH] = R[n]
    bias = b.permute(1, 0, 2).reshape(G, H)  # [G, H]
    states = [s.reshape(B, H) for s in s0]
    out = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        rhb = torch.einsum("gij,bj->bgi", dense, states[0]) + bias  # [B, G, H]
        x = gx[t].permute(0, 2, 1, 3).reshape(B, G, H)  # [B, G, H]
        states = spec.step(x.unsqueeze(1), rhb.unsqueeze(1), tuple(s.unsqueeze(1) for s in states))
        states = [s.squeeze(1) for s in states]
        out[t] = states[0]
    return torch.stack(out), torch.stack(states)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_dense_loop(cell, reverse):
    gx, R, b, s0 = make_inputs(cell, T=6, B=3, NH=3, DH=4, seed=1)
    h, sT = recurrence(gx, R, b, s0, cell=cell, reverse=reverse)
    h_ref, sT_ref = dense_loop(cell, gx, R, b, s0, reverse)
    torch.testing.assert_close(h.reshape(6, 3, 12), h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sT.reshape(sT.shape[0], 3, 12), sT_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_default_initial_states_are_the_registry_initial_values(cell):
    gx, R, b, _ = make_inputs(cell, T=3, B=2, NH=1, DH=3)
    spec = CELLS[cell]
    s0 = torch.tensor(spec.initial, dtype=gx.dtype).view(-1, 1, 1, 1).expand(spec.num_states, 2, 1, 3)
    h, sT = recurrence(gx, R, b, cell=cell)
    h2, sT2 = recurrence(gx, R, b, s0.contiguous(), cell=cell)
    assert torch.equal(h, h2) and torch.equal(sT, sT2)


def test_lstm_matches_torch_lstm():
    """NH = 1 LSTM through the op equals nn.LSTM with the same weights (x W_ih^T + b_ih outside)."""
    torch.manual_seed(0)
    T, B, I, H = 5, 2, 3, 4
    lstm = torch.nn.LSTM(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(2, 1, B, H, dtype=torch.float64)
    gx = (x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0).view(T, B, 1, 4, H)
    R = lstm.weight_hh_l0.view(1, 4, H, H)
    b = lstm.bias_hh_l0.view(1, 4, H)
    h, sT = recurrence(gx, R, b, torch.stack([h0, c0]).view(2, B, 1, H), cell="lstm")
    out, (hn, cn) = lstm(x, (h0, c0))
    torch.testing.assert_close(h.view(T, B, H), out)
    torch.testing.assert_close(sT.view(2, B, H), torch.cat([hn, cn]))


def test_gru_matches_torch_gru():
    torch.manual_seed(0)
    T, B, I, H = 5, 2, 3, 4
    gru = torch.nn.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    gx = (x @ gru.weight_ih_l0.T + gru.bias_ih_l0).view(T, B, 1, 3, H)
    h, sT = recurrence(
        gx, gru.weight_hh_l0.view(1, 3, H, H), gru.bias_hh_l0.view(1, 3, H), h0.view(1, B, 1, H), cell="gru"
    )
    out, hn = gru(x, h0)
    torch.testing.assert_close(h.view(T, B, H), out)
    torch.testing.assert_close(sT.view(1, B, H), hn)


# ---- gradcheck: every cell x NH {1,3} x DH {1,5} x T {1,7} x B {1,4} x reverse x s0 -----------

GRID = list(itertools.product(CELL_NAMES, (1, 3), (1, 5), (1, 7), (1, 4), (False, True), (True, False)))


@pytest.mark.parametrize("cell,NH,DH,T,B,reverse,with_s0", GRID)
def test_gradcheck(cell, NH, DH, T, B, reverse, with_s0):
    gx, R, b, s0 = make_inputs(cell, T, B, NH, DH, seed=T * 100 + B, requires_grad=True)
    if with_s0:
        inputs = (gx, R, b, s0)
        fn = lambda gx, R, b, s0: recurrence(gx, R, b, s0, cell=cell, reverse=reverse)  # noqa: E731
    else:
        inputs = (gx, R, b)
        fn = lambda gx, R, b: recurrence(gx, R, b, cell=cell, reverse=reverse)  # noqa: E731
    # fast mode checks a random projection of the Jacobian; the full Jacobian is checked below
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_gradcheck_full_jacobian(cell):
    gx, R, b, s0 = make_inputs(cell, T=3, B=2, NH=2, DH=3, seed=7, requires_grad=True)
    fn = lambda gx, R, b, s0: recurrence(gx, R, b, s0, cell=cell, reverse=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (gx, R, b, s0))


def test_gradient_of_one_output_only():
    """Gradients of unused outputs arrive as None; only h used, only sT used."""
    gx, R, b, s0 = make_inputs("lstm", T=4, B=2, NH=1, DH=3, requires_grad=True)
    h, sT = recurrence(gx, R, b, s0, cell="lstm")
    (g_h,) = torch.autograd.grad(h.sum(), gx)
    h, sT = recurrence(gx, R, b, s0, cell="lstm")
    (g_s,) = torch.autograd.grad(sT[1].sum(), gx)
    assert torch.isfinite(g_h).all() and torch.isfinite(g_s).all()
    assert not torch.equal(g_h, g_s)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_opcheck(cell):
    for save in (True, False):  # save=False is the inference form: nothing requires grad
        gx, R, b, s0 = make_inputs(cell, T=3, B=2, NH=2, DH=3, requires_grad=save)
        torch.library.opcheck(recurrence_fwd, (gx, R, b, s0, cell, False, REFERENCE_PLAN, save))


def test_save_false_keeps_nothing_and_refuses_backward():
    gx, R, b, s0 = make_inputs("gru", T=3, B=2, NH=1, DH=3, requires_grad=True)
    h, sT, states_in, rhb = torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, "gru", False, REFERENCE_PLAN, False)
    assert states_in.numel() == 0 and rhb.numel() == 0
    with pytest.raises(RuntimeError, match="save=False"):
        h.sum().backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_is_closer_to_float64_than_plain_pytorch(dtype):
    """The reference computes half types in float32: its error is within 2x PyTorch's own."""
    from flashrnn_compile import reference
    from flashrnn_compile.testing import rel_err, within

    gx, R, b, s0 = make_inputs("lstm", T=32, B=4, NH=2, DH=16, seed=3)
    h64, _ = recurrence(gx, R, b, s0, cell="lstm")
    low = [t.to(dtype) for t in (gx, R, b, s0)]
    h, sT = recurrence(*low, cell="lstm")
    assert h.dtype == dtype and sT.dtype == dtype
    h_torch = reference.forward(*low, "lstm", False, False, compute_dtype=dtype)[0]
    assert within(rel_err(h, h64), rel_err(h_torch, h64))


def test_empty_sequence():
    gx, R, b, s0 = make_inputs("lstm", T=0, B=2, NH=1, DH=3)
    h, sT = recurrence(gx, R, b, s0, cell="lstm")
    assert h.shape == (0, 2, 1, 3)
    assert torch.equal(sT, s0)


# ---- bad input: a ValueError that names the argument and the expected shape -------------------


def _good():
    return make_inputs("lstm", T=3, B=2, NH=2, DH=4)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda gx, R, b, s0: (gx[0], R, b, s0), r"gx: expected 5 dims \[T, B, NH, G, DH\]"),
        (lambda gx, R, b, s0: (gx, R[0], b, s0), r"R: expected 4 dims \[NH, G, DH, DH\]"),
        (lambda gx, R, b, s0: (gx, R, b[0], s0), r"b: expected 3 dims \[NH, G, DH\]"),
        (lambda gx, R, b, s0: (gx, R, b, s0[0]), r"s0: expected 4 dims \[S, B, NH, DH\]"),
        (lambda gx, R, b, s0: (gx, R[:1], b, s0), r"R: expected \[NH, G, DH, DH\] = \[2, 4, 4, 4\]"),
        (lambda gx, R, b, s0: (gx, R[..., :3], b, s0), r"R: expected \[NH, G, DH, DH\] = \[2, 4, 4, 4\]"),
        (lambda gx, R, b, s0: (gx, R, b[:, :3], s0), r"b: expected \[NH, G, DH\] = \[2, 4, 4\]"),
        (lambda gx, R, b, s0: (gx, R, b, s0[:1]), r"s0: expected \[S, B, NH, DH\] = \[2, 2, 2, 4\]"),
        (lambda gx, R, b, s0: (gx, R, b, s0[:, :1]), r"s0: expected \[S, B, NH, DH\] = \[2, 2, 2, 4\]"),
        (lambda gx, R, b, s0: (gx[:, :, :, :3], R, b, s0), r"gx: cell 'lstm' has G=4 gates"),
        (lambda gx, R, b, s0: (gx.long(), R, b, s0), r"gx: expected a floating dtype"),
        (lambda gx, R, b, s0: (gx, R.int(), b, s0), r"R: expected a floating dtype"),
        (lambda gx, R, b, s0: (gx, R.float(), b, s0), r"R: expected dtype torch.float64"),
    ],
)
def test_bad_input(mutate, match):
    gx, R, b, s0 = mutate(*_good())
    with pytest.raises(ValueError, match=match):
        recurrence(gx, R, b, s0, cell="lstm")
    with pytest.raises(ValueError, match=match):
        torch.ops.flashrnn.recurrence_fwd(gx, R, b, s0, "lstm", False, REFERENCE_PLAN, False)


def test_unknown_cell():
    gx, R, b, s0 = _good()
    with pytest.raises(ValueError, match=r"cell: expected one of \['elman_relu'"):
        recurrence(gx, R, b, s0, cell="lstmx")


def test_bad_plan():
    gx, R, b, s0 = _good()
    with pytest.raises(ValueError, match="plan: expected 'family'"):
        recurrence(gx, R, b, s0, cell="lstm", plan='{"family": "warp"}')
    with pytest.raises(ValueError, match="plan: expected a JSON object"):
        recurrence(gx, R, b, s0, cell="lstm", plan="fast please")


def test_unavailable_family_falls_back_to_reference_with_one_warning():
    """On CPU no CUDA family can run: the result is the reference's, with one warning."""
    from flashrnn_compile import runtime

    gx, R, b, s0 = _good()
    runtime._WARNED.clear()
    plan = plan_json("fused_block", {"warps": 4})
    with pytest.warns(RuntimeWarning, match="fused_block' cannot run on cpu"):
        h, _ = recurrence(gx, R, b, s0, cell="lstm", plan=plan)
    h_ref, _ = recurrence(gx, R, b, s0, cell="lstm")
    assert torch.equal(h, h_ref)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recurrence(gx, R, b, s0, cell="lstm", plan=plan)  # no second warning


def _grads_of_recurrence(cell, reverse, fast, monkeypatch):
    """(h, sT, dgx, dR, db, ds0) of recurrence() with the eager fast path on or off."""
    from flashrnn_compile import ops

    monkeypatch.setattr(ops, "EAGER_FAST_PATH", fast)
    gx, R, b, s0 = make_inputs(cell, 5, 3, 2, 4, seed=9, requires_grad=True)
    h, sT = recurrence(gx, R, b, s0, cell=cell, reverse=reverse, plan=REFERENCE_PLAN)
    g = torch.Generator().manual_seed(1)
    dh, dsT = torch.randn(h.shape, generator=g, dtype=h.dtype), torch.randn(sT.shape, generator=g, dtype=sT.dtype)
    return (h.detach(), sT.detach(), *torch.autograd.grad((h, sT), (gx, R, b, s0), (dh, dsT)))


@pytest.mark.parametrize("cell,reverse", list(itertools.product(CELL_NAMES, [False, True])))
def test_eager_fast_path_is_the_op_bit_for_bit(cell, reverse, monkeypatch):
    """recurrence() in eager mode skips the custom-op machinery (ops._Eager); outputs and every
    gradient are those of the op path exactly."""
    fast = _grads_of_recurrence(cell, reverse, True, monkeypatch)
    slow = _grads_of_recurrence(cell, reverse, False, monkeypatch)
    for name, a, c in zip(("h", "sT", "dgx", "dR", "db", "ds0"), fast, slow):
        assert torch.equal(a, c), name


def test_eager_fast_path_is_taken_only_when_nothing_traces(monkeypatch):
    """The fast path runs eagerly on plain tensors; make_fx (a dispatch mode), FakeTensorMode,
    torch.compile, autocast and torch function modes see the custom op."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from flashrnn_compile import ops

    calls = []
    real = ops._Eager.apply
    monkeypatch.setattr(ops._Eager, "apply", lambda *a: calls.append(1) or real(*a))
    gx, R, b, s0 = make_inputs("lstm", 3, 2, 1, 4, dtype=torch.float32)

    def f(gx, R, b, s0):
        return recurrence(gx, R, b, s0, cell="lstm", plan=REFERENCE_PLAN)[0]

    f(gx, R, b, s0)
    assert calls == [1]
    graph = make_fx(f)(gx, R, b, s0).graph
    assert any(n.target == torch.ops.flashrnn.recurrence_fwd.default for n in graph.nodes)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n.target for n in gm.graph.nodes)
        return gm

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(f, backend=backend, fullgraph=True)(gx, R, b, s0), f(gx, R, b, s0))
    assert {torch.ops.flashrnn.recurrence_fwd, torch.ops.flashrnn.recurrence_fwd.default} & set(seen)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f(gx, R, b, s0)
    with torch.device("cpu"):  # a torch function mode
        f(gx, R, b, s0)
    assert calls == []


@pytest.mark.parametrize("fast", [True, False], ids=["eager-fast-path", "op"])
def test_double_backward_and_unsaved_states_are_refused(fast, monkeypatch):
    """Neither path has a double backward (the op: no autograd formula for recurrence_bwd; the fast
    path: once_differentiable), and both refuse a backward without the forward's states."""
    from flashrnn_compile import ops

    monkeypatch.setattr(ops, "EAGER_FAST_PATH", fast)
    gx, R, b, s0 = make_inputs("gru", 4, 2, 1, 3, requires_grad=True)
    h, _ = recurrence(gx, R, b, s0, cell="gru", plan=REFERENCE_PLAN)
    (dgx,) = torch.autograd.grad(h.sum(), gx, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula|twice|does not require grad"):
        torch.autograd.grad(dgx.sum(), gx)
    h, _ = recurrence(gx, R, b, s0, cell="gru", plan=REFERENCE_PLAN, save=False)
    with pytest.raises(RuntimeError, match="save=False"):
        h.sum().backward()
