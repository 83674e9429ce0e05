"""`flashrnn::aten_rnn`: ATen's own RNN kernel behind an opaque custom op (the `aten` plan).

On the CPU, ATen's nn.LSTM/GRU/RNN loop in C++ beats the core op's reference (a Python loop); on
CUDA, cuDNN beats our alternating kernels for dense layers except in bf16 inference. There the
module pass keeps ATen's kernel, wrapped in this op, because AOTAutograd would otherwise decompose
`torch.lstm` into T unrolled steps (compile time growing with T, and Inductor then compiling them
all). Forward: the very ATen call the user's module makes. Backward: the vjp of that call (one
recomputation of the forward in ATen, then its autograd), so results and gradients are eager's own.
The fake kernel computes the output shapes from the arguments (running ATen on fake CUDA tensors
would give cuDNN's wrong [L*D, 1, B, H] record of h_n / c_n, pytorch/pytorch#130791).

    aten_rnn(mode, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        mode: "lstm" | "gru" | "rnn_tanh" | "rnn_relu"; hx: [h0] or [h0, c0] (lstm); params: the
        module's flat weights. -> [output, h_n] or [output, h_n, c_n] (lstm)

Not for training-mode dropout between layers (the recomputation would draw new masks): the pass
does not use it there.
"""

from __future__ import annotations

import contextlib
from typing import List

import torch

Tensor = torch.Tensor

_ATEN = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}


def _call(mode, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if mode not in _ATEN:
        raise ValueError(f"mode: expected one of {sorted(_ATEN)}, got {mode!r}")
    h = tuple(hx) if mode == "lstm" else hx[0]
    out = _ATEN[mode](x, h, list(params), has_biases, num_layers, dropout, train, bidirectional, batch_first)
    # contiguous outputs, in the real run and the fake one alike (ATen's kernels differ in strides)
    return [t.clone(memory_format=torch.contiguous_format) for t in out]


@torch.library.custom_op("flashrnn::aten_rnn", mutates_args=())
def aten_rnn(
    mode: str,
    x: Tensor,
    hx: List[Tensor],
    params: List[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> List[Tensor]:
    return _call(mode, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


@aten_rnn.register_fake
def _(mode, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    if mode not in _ATEN:
        raise ValueError(f"mode: expected one of {sorted(_ATEN)}, got {mode!r}")
    # x [T, B, I] (batch_first: [B, T, I]); hx[0] [L*D, B, P or H], hx[1] [L*D, B, H] (lstm)
    directions = 2 if bidirectional else 1
    out = x.new_empty(x.shape[0], x.shape[1], directions * hx[0].shape[-1])  # [T, B, D*H] or [B, T, D*H]
    return [out] + [h.new_empty(h.shape) for h in hx]  # h_n [L*D, B, H] (, c_n)


@torch.library.custom_op("flashrnn::aten_rnn_backward", mutates_args=())
def aten_rnn_backward(
    grads: List[Tensor],
    mode: str,
    x: Tensor,
    hx: List[Tensor],
    params: List[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> List[Tensor]:
    """[dx, *dhx, *dparams]: the vjp of ATen's call (opaque, so AOTAutograd does not unroll it)."""
    flags = (has_biases, num_layers, dropout, train, bidirectional, batch_first)
    inputs = [t.detach().requires_grad_() for t in (x, *hx, *params)]
    n_hx = len(hx)
    # the CPU recomputes on ATen's native path (oneDNN's bf16 LSTM has no backward on every CPU);
    # on CUDA the recomputation and its backward are cuDNN's
    with _autograd_on(), torch.backends.mkldnn.flags(enabled=False):
        outs = _call(mode, inputs[0], inputs[1 : 1 + n_hx], inputs[1 + n_hx :], *flags)
        d = torch.autograd.grad(outs, inputs, list(grads), allow_unused=True)
    dx, dhx, dparams = d[0], d[1 : 1 + n_hx], d[1 + n_hx :]
    # each gradient laid out like its input, as the fake kernel says
    return [torch.zeros_like(t) if g is None else torch.empty_like(t).copy_(g)
            for t, g in zip((x, *hx, *params), (dx, *dhx, *dparams))]


@contextlib.contextmanager
def _autograd_on():
    """Autograd recording inside an op's kernel. A custom op's kernel runs with the autograd keys
    in the thread's dispatch exclude set, so `torch.enable_grad()` alone records nothing; this
    takes them out for the block. (torch.func.vjp would do it too, but cuDNN's RNN cannot read
    the storage of functorch's wrapped tensors.)"""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality) | torch._C.DispatchKeySet(
        torch._C.DispatchKey.ADInplaceOrView
    )
    include, exclude = torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set()
    with torch._C._ForceDispatchKeyGuard(include, exclude - keys), torch.enable_grad():
        yield


@aten_rnn_backward.register_fake
def _(grads, mode, x, hx, params, *flags):
    return [torch.empty_like(t) for t in (x, *hx, *params)]


def _setup_context(ctx, inputs, output):
    mode, x, hx, params, *flags = inputs
    ctx.mode, ctx.flags = mode, flags
    ctx.n_hx = len(hx)
    ctx.save_for_backward(x, *hx, *params, *output)


def _backward(ctx, grads):
    x, *rest = ctx.saved_tensors
    n_params = len(rest) - ctx.n_hx - len(grads)
    hx, params, outs = rest[: ctx.n_hx], rest[ctx.n_hx : ctx.n_hx + n_params], rest[ctx.n_hx + n_params :]
    cotangents = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)]
    d = torch.ops.flashrnn.aten_rnn_backward(cotangents, ctx.mode, x, list(hx), list(params), *ctx.flags)
    return None, d[0], d[1 : 1 + ctx.n_hx], d[1 + ctx.n_hx :], None, None, None, None, None, None


aten_rnn.register_autograd(_backward, setup_context=_setup_context)
