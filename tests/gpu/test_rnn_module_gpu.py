"""nn.LSTM / nn.GRU / nn.RNN compiled with backend="flashrnn" on the GPU, with the default plan.

On CUDA, Dynamo's example values for torch.lstm & co. come from the cuDNN path; the rewrite must
still be taken (one rewrite, no refusal per module) and its kernels chosen by the planner. Each
configuration runs one forward and backward in float32 and in bfloat16 against a float64 copy:
outputs, h_n / c_n and the gradients of the inputs, initial states and every parameter within
2x the error of eager PyTorch (cuDNN) in the same dtype.
"""

import copy

import pytest
import torch

from flashrnn_compile.context import reports, reset_stats
from flashrnn_compile.testing import rel_err, within
from tests.rnn_cases import (
    MATRIX,
    _id,
    cast_args,
    count_graphs,
    guard_failures,
    detach_like,
    flat_outputs,
    leaves,
    loss_of,
    make_inputs,
    make_rnn,
)

from .conftest import assert_trains_like_eager, sgd_losses


def _to_cuda(args):
    return tuple(tuple(t.cuda() for t in a) if isinstance(a, tuple) else a.cuda() for a in args)


def _run(fn, mod, args, grad=True):
    if not grad:  # inference: the outputs only
        with torch.no_grad():
            return [o.detach() for o in flat_outputs(fn(*args))]
    outs = flat_outputs(fn(*args))
    loss_of([o.cpu() for o in outs]).backward()
    grads = [t.grad for t in leaves(args)] + [p.grad for p in mod.parameters()]
    return [o.detach() for o in outs] + grads


def _module_report():
    rs = reports()
    rewrites = [w for r in rs for w in r["rewrites"] if w["source"] == "module"]
    refusals = [w for r in rs for w in r["refusals"] if w["source"] == "module"]
    return rewrites, refusals


def _check(case, dtype, inner="aot_eager", autocast=None, refused=None, grad=True, baseline=None, H=16, family=None):
    """One forward + backward of eager, compiled and float64 copies; every tensor within 2x
    eager's float64 error. autocast: None, or the dtype of a CUDA autocast region around the
    calls (the modules then stay float32). grad=False: inference, outputs only. baseline: a
    torch.compile backend to compare with instead of eager (a refused call must give what
    PyTorch's own compile of the unchanged call gives). H: hidden size; family: the plan family
    the rewrite must get (default: any but the reference)."""
    kind, kw, T, B, hx, unbatched = case
    torch.manual_seed(0)
    # training mode (cuDNN has no backward in eval); inter-layer dropout is exact at p = 0
    base = make_rnn(kind, I=8, H=H, **{**kw, "dropout": 0.0} if "dropout" in kw else kw)
    args64 = _to_cuda(make_inputs(base, T, B, hx=hx, unbatched=unbatched, dtype=torch.float64))
    mod64 = copy.deepcopy(base).double().cuda()
    low = torch.float32 if autocast else dtype
    eager = copy.deepcopy(base).to(low).cuda()
    ours = copy.deepcopy(base).to(low).cuda()
    compiled = torch.compile(ours, backend="flashrnn", options={"inner": inner})
    reset_stats()
    ref = _run(mod64, mod64, detach_like(args64), grad)
    with torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None):
        first = eager if baseline is None else torch.compile(eager, backend=baseline)
        want = _run(first, eager, detach_like(cast_args(args64, low)), grad)
        got = _run(compiled, ours, detach_like(cast_args(args64, low)), grad)
    rewrites, refusals = _module_report()
    if refused is None:
        assert len(rewrites) == 1 and not refusals, (rewrites, refusals)
        assert rewrites[0]["plan"]["family"] != "reference", rewrites[0]["plan"]
        assert family is None or rewrites[0]["plan"]["family"] == family, rewrites[0]["plan"]
    else:  # left as written, with the reason
        assert not rewrites and len(refusals) == 1 and refused in refusals[0]["reason"], (rewrites, refusals)
    assert len(got) == len(want)
    for k, (o, e, r) in enumerate(zip(got, want, ref)):
        assert o.shape == e.shape and o.dtype == e.dtype, (k, o.shape, o.dtype, e.shape, e.dtype)
        err_o, err_e = rel_err(o, r), rel_err(e, r)
        assert within(err_o, err_e), f"tensor {k}: error {err_o:.3g} > 2 x eager's {err_e:.3g}"


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", MATRIX, ids=[_id(c) for c in MATRIX])
def test_module_on_gpu(case, dtype):
    _check(case, dtype)


INDUCTOR_CASES = [MATRIX[1], MATRIX[5], MATRIX[9]]  # 2-layer bidirectional LSTM, proj_size, GRU


@pytest.mark.parametrize("case", INDUCTOR_CASES, ids=[_id(c) for c in INDUCTOR_CASES])
def test_module_on_gpu_inductor(case):
    _check(case, torch.bfloat16, inner="inductor")


AUTOCAST_CASES = [MATRIX[1], MATRIX[9], MATRIX[12]]
AUTOCAST_IDS = ["lstm", "gru", "rnn_tanh"]


@pytest.mark.parametrize("case", AUTOCAST_CASES, ids=AUTOCAST_IDS)
def test_module_on_gpu_autocast(case):
    """float32 modules trained under CUDA autocast float16: rewritten, with eager's output dtypes
    (cuDNN's autocast wrapper casts to float16 where Dynamo's record says float32, so the pass
    asks a one-step probe) and every tensor within 2x eager's float64 error."""
    _check(case, None, autocast=torch.float16)


@pytest.mark.parametrize("case", AUTOCAST_CASES, ids=AUTOCAST_IDS)
def test_module_on_gpu_autocast_bf16_training_refused(case):
    """Under bfloat16 autocast cuDNN still computes in float16; AOTAutograd would trace the
    rewrite's backward under bfloat16 autocast (5x eager's input-gradient error on an H100), so
    training calls stay as written, with the reason. What runs is then PyTorch's own compile of
    the call (which returns float32 where eager returns float16: Dynamo's record, not ours), so
    the results are compared with torch.compile(backend="aot_eager") of the same module."""
    _check(case, None, autocast=torch.bfloat16, refused="lose precision eager keeps", baseline="aot_eager")


@pytest.mark.parametrize("case", AUTOCAST_CASES, ids=AUTOCAST_IDS)
def test_module_on_gpu_autocast_bf16_inference(case):
    """Inference under bfloat16 autocast (no backward to trace) is rewritten: eager's float16
    outputs, within 2x eager's float64 error."""
    _check(case, None, autocast=torch.bfloat16, grad=False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_new_t_and_b_on_gpu(kind):
    """Changing T and B on the GPU compiles no more graphs than Dynamo's eager backend does, and
    every call (symbolic B included: the plan's kernel takes any batch) stays within 2x eager's
    float64 error, outputs and input gradients."""
    torch.manual_seed(0)
    base = make_rnn(kind, I=8, H=64, bidirectional=True, batch_first=True)
    shapes = [(12, 4), (20, 7), (20, 16), (5, 16)]

    def graphs_and_runs(backend, mod):
        dt = next(mod.parameters()).dtype
        calls = [detach_like(cast_args(_to_cuda(make_inputs(mod, T, B, hx=True, seed=T + B)), dt)) for T, B in shapes]
        return count_graphs(mod, backend, calls, lambda fn, args: _run(fn, mod, args))

    from flashrnn_compile.backend import flashrnn_backend

    n_eager, want = graphs_and_runs(lambda gm, ex: gm.forward, copy.deepcopy(base).to(torch.bfloat16).cuda())
    eager_recompiles = guard_failures()
    reset_stats()
    n_ours, got = graphs_and_runs(
        lambda gm, ex: flashrnn_backend(gm, ex, options={"inner": "aot_eager"}), copy.deepcopy(base).to(torch.bfloat16).cuda()
    )
    our_recompiles = guard_failures()
    _, ref = graphs_and_runs(lambda gm, ex: gm.forward, copy.deepcopy(base).double().cuda())
    assert n_ours <= n_eager, (n_ours, n_eager, "ours:", our_recompiles, "eager:", eager_recompiles)
    rewrites, refusals = _module_report()
    assert len(rewrites) == n_ours and not refusals, (rewrites, refusals)
    for step, (g, w, r) in enumerate(zip(got, want, ref)):
        for k in range(len(g) - len(list(base.parameters()))):  # outputs and input gradients
            err_o, err_e = rel_err(g[k], r[k]), rel_err(w[k], r[k])
            assert within(err_o, err_e), f"call {step} tensor {k}: {err_o:.3g} > 2 x eager's {err_e:.3g}"


DENSE_LSTM_B16 = ("lstm", dict(num_layers=2, bidirectional=True), 5, 16, True, False)
DENSE_LSTM_B16_ONE = ("lstm", dict(), 5, 16, True, False)  # one layer, one direction: cuDNN's persistent kernel


@pytest.mark.parametrize(
    "case,dtype,grad,family",
    [(MATRIX[1], torch.bfloat16, True, "fused_cluster"), (MATRIX[1], torch.bfloat16, False, "fused_cluster"),
     (MATRIX[1], torch.float16, True, "fused_cluster"), (MATRIX[1], torch.float32, True, "alternating"),
     (MATRIX[9], torch.bfloat16, True, "fused_cluster"), (MATRIX[9], torch.float16, False, "fused_cluster"),
     (MATRIX[9], torch.float32, False, "alternating"),
     (DENSE_LSTM_B16_ONE, torch.float16, True, "aten"), (DENSE_LSTM_B16_ONE, torch.float16, False, "aten"),
     (DENSE_LSTM_B16, torch.float16, True, "fused_cluster"), (DENSE_LSTM_B16, torch.bfloat16, True, "fused_cluster")],
    ids=["lstm-bf16-train", "lstm-bf16-infer", "lstm-fp16-train", "lstm-fp32-train", "gru-bf16-train",
         "gru-fp16-infer", "gru-fp32-infer", "lstm-B16-1-layer-fp16-train", "lstm-B16-1-layer-fp16-infer",
         "lstm-B16-2-layers-bidirectional-fp16-train", "lstm-B16-bf16-train"],
)
def test_dense_768_on_gpu(case, dtype, grad, family):
    """A dense 768-wide layer is too large for one block: the planner gives fused_cluster in bf16
    and fp16, alternating in fp32; cuDNN is kept (the aten plan, one opaque op) where it measured
    faster: the one-layer unidirectional LSTM in float16 from batch 16 (cuDNN's persistent kernel;
    with two layers and both directions it is not used, and ours runs). Every tensor within 2x
    eager's float64 error."""
    _check(case, dtype, grad=grad, H=768, family=family)


@pytest.mark.parametrize("case,dtype,grad", [(MATRIX[1], torch.bfloat16, True), (MATRIX[9], torch.bfloat16, True),
                                             (MATRIX[1], torch.float16, False)],
                         ids=["lstm-2-layers-bidirectional-bf16-train", "gru-bf16-train", "lstm-fp16-infer"])
def test_dense_1024_on_gpu_runs_fused_grid(case, dtype, grad):
    """A dense 1024-wide layer fits no cluster: the planner gives fused_grid (offered by default since
    session 13, forward and its own backward; a bidirectional layer as two heads of one grid), every
    tensor within 2x eager's float64 error."""
    _check(case, dtype, grad=grad, H=1024, family="fused_grid")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_module_trains_on_fused_block(kind):
    """nn.LSTM / nn.GRU with hidden 64 in bfloat16: the planner gives the fused_block kernel, and 3
    SGD steps give losses and parameters within 2x the error of eager bfloat16 (cuDNN), both
    against a float64 copy."""
    I, H, B, T = 32, 64, 8, 40
    torch.manual_seed(0)
    base = getattr(torch.nn, kind)(I, H, batch_first=True)
    runs = {"eager": copy.deepcopy(base).to(torch.bfloat16).cuda(),
            "ours": copy.deepcopy(base).to(torch.bfloat16).cuda(),
            "f64": copy.deepcopy(base).double().cuda()}
    fns = dict(runs, ours=torch.compile(runs["ours"], backend="flashrnn", options={"inner": "aot_eager"}))
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, T, I, device="cuda", generator=g)  # [B, T, I]
    target = torch.randn(B, T, H, device="cuda", generator=g)  # [B, T, H]
    reset_stats()
    losses = sgd_losses(runs, fns, x, target, lr=0.5, output=lambda out: out[0])
    rewrites, refusals = _module_report()
    assert len(rewrites) == 1 and not refusals, (rewrites, refusals)
    assert rewrites[0]["plan"]["family"] == "fused_block", rewrites[0]["plan"]
    assert_trains_like_eager(runs, losses)
