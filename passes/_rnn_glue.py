"""Graph building for the rnn_module pass: the glue around the core op for one nn.RNNBase call.

Given a parsed `torch.lstm` / `torch.gru` / `torch.rnn_tanh` / `torch.rnn_relu` call (`RnnCall`),
`emit_rnn` inserts, before the original node, per layer l and direction d:

    gx    = linear(x_l, W_ih, b_ih).unflatten(-1, (1, G, H))    # [T, B, NH=1, G, DH=H], one GEMM
    R     = W_hh.view(1, G, H, H)                               # [NH, G, DH, DH], a view, no copy
    b     = b_hh.view(1, G, H)   (zeros when bias=False)        # [NH, G, DH]
    s0    = stack(h0[l*D+d], c0[l*D+d]).unsqueeze(2)            # [S, B, NH, DH]
    h, sT = flashrnn.recurrence_fwd(gx, R, b, s0, cell, reverse=(d == 1), plan, save)
    x_l+1 = dropout(cat(h_fwd, h_bwd, -1), p, train)            # [T, B, D*H], not after the last layer

and then output = x_L (transposed back when batch_first), h_n = stack(sT[0, :, 0]) [L*D, B, H],
c_n = stack(sT[1, :, 0]) [L*D, B, H].

A bidirectional layer may instead run both directions in one call of two heads, the reverse one
flipped in time (`_merged_directions`; the rnn_module pass decides, see its `_merge_plan`).

LSTM with proj_size P (h_t = W_hr (o * tanh c_t) is fed back) runs on the unprojected state u_t:
R u = (W_hh W_hr) u is one square [G*H, H] recurrence, the user's projected h0 enters through the
first processed step's pre-activation (gx[first] += W_hh h0, with u0 = 0), and output / h_n are
W_hr u. Same math as eager; only the rounding order differs.

Every emitted node gets an example value (fake propagation in the graph's fake mode), so the
graph stays well-formed for later passes and the result's metadata can be checked against the
node it replaces.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F

from ._common import REWRITTEN, emit_recurrence, example_value

Node = torch.fx.Node


@dataclasses.dataclass
class LayerWeights:
    w_ih: Node  # [G*H, I]
    w_hh: Node  # [G*H, H] (or [G*H, P] with proj_size)
    b_ih: Optional[Node]  # [G*H]
    b_hh: Optional[Node]  # [G*H]
    w_hr: Optional[Node]  # [P, H] with proj_size, else None


@dataclasses.dataclass
class RnnCall:
    """One nn.RNNBase call as Dynamo recorded it (input overload, not PackedSequence)."""

    node: Node
    cell: str  # registry name: lstm | gru | elman_tanh | elman_relu
    x: Node  # [T, B, I] or [B, T, I] (batch_first)
    h0: Node  # [L*D, B, H] (or [L*D, B, P] with proj_size)
    c0: Optional[Node]  # [L*D, B, H], lstm only
    weights: List[LayerWeights]  # L*D entries, layer-major, reverse direction after forward
    layers: int
    directions: int
    hidden: int  # H
    proj: int  # P, 0 without projection
    dropout: Union[float, Node]  # a graph value when Dynamo made the attribute symbolic
    train: bool
    batch_first: bool
    gates: int  # G
    dtype: torch.dtype  # the dtype the recurrence computes in (the node's output dtype)
    out_dtypes: Tuple[torch.dtype, ...]  # dtype of each output of the node


_CONTEXT_MARKERS = (torch.amp.autocast_mode._enter_autocast, torch.amp.autocast_mode._exit_autocast)


class Builder:
    """Inserts nodes before `anchor`, propagating fake example values (`created` lists them)."""

    def __init__(self, graph: torch.fx.Graph, anchor: Node, fake_mode, device_type: str):
        self.graph, self.anchor, self.fake_mode = graph, anchor, fake_mode
        self.device_type = device_type
        self.created: List[Node] = []
        self.meta = {k: anchor.meta[k] for k in ("stack_trace", "nn_module_stack") if k in anchor.meta}
        self.meta[REWRITTEN] = "module"  # later passes leave these nodes alone

    def __call__(self, target, *args, **kwargs) -> Node:
        """target: a function (call_function) or a Tensor method name (call_method)."""
        with self.graph.inserting_before(self.anchor):
            if isinstance(target, str):
                node = self.graph.call_method(target, tuple(args), kwargs)
            else:
                node = self.graph.call_function(target, tuple(args), kwargs)
        self.created.append(node)
        node.meta.update(self.meta)
        if target in _CONTEXT_MARKERS:  # entering autocast here would change this process's state
            return node
        fake_args = torch.fx.node.map_arg((args, kwargs), lambda n: n.meta.get("example_value"))
        # autocast is switched off in the emitted region (see emit_rnn), so propagate likewise
        with self.fake_mode, torch.autocast(self.device_type, enabled=False):
            fn = getattr(fake_args[0][0], target) if isinstance(target, str) else target
            rest = fake_args[0][1:] if isinstance(target, str) else fake_args[0]
            node.meta["example_value"] = fn(*rest, **fake_args[1])
        return node

    def remove_all(self) -> None:
        for node in reversed(self.created):
            self.graph.erase_node(node)
        self.created.clear()


def _cast(bld: Builder, node: Optional[Node], dtype: torch.dtype) -> Optional[Node]:
    """`node.to(dtype)` only where the dtype differs (autocast regions, mixed inputs)."""
    if node is None:
        return None
    value = example_value(node)
    if value is None or value.dtype == dtype:
        return node
    return bld("to", node, dtype)


def _initial_states(bld: Builder, call: RnnCall, h0: Node, c0: Optional[Node], k: int) -> Node:
    """s0 [S, B, NH=1, DH] of the k-th (layer, direction); the h part of a projected LSTM is zero."""
    h = bld(operator.getitem, h0, k)  # [B, H] (or [B, P])
    if call.proj:
        c = bld(operator.getitem, c0, k)  # [B, H]
        h = bld(torch.zeros_like, c)  # [B, H]: u0 = 0, W_hh h0 enters through gx
    states = [h] if c0 is None else [h, bld(operator.getitem, c0, k)]
    s0 = bld(torch.stack, states, 0)  # [S, B, H]
    return bld("unsqueeze", s0, 2)  # [S, B, 1, H]


def _add_first_step(bld: Builder, gx: Node, extra: Node, reverse: bool) -> Node:
    """gx [T, B, G*H] with extra [B, G*H] added at the first processed time position."""
    extra = bld("unsqueeze", extra, 0)  # [1, B, G*H]
    if reverse:
        rest = bld(operator.getitem, gx, slice(None, -1))  # [T-1, B, G*H]
        last = bld(operator.getitem, gx, slice(-1, None))  # [1, B, G*H]
        return bld(torch.cat, [rest, bld(operator.add, last, extra)], 0)
    first = bld(operator.getitem, gx, slice(None, 1))  # [1, B, G*H]
    rest = bld(operator.getitem, gx, slice(1, None))  # [T-1, B, G*H]
    return bld(torch.cat, [bld(operator.add, first, extra), rest], 0)


def emit_rnn(
    bld: Builder, call: RnnCall, *, plan: str, save: bool, disable_autocast: bool, merged_plan: Optional[str] = None
) -> Tuple[Node, ...]:
    """Emit the rewrite of `call` before it; returns the nodes replacing the node's outputs
    ((output, h_n) or (output, h_n, c_n)). With `merged_plan` (the plan of a two-head call), each
    bidirectional layer runs both directions in one core-op call (`_merged_directions`).
    `bld.remove_all()` undoes it."""
    device_type = bld.device_type
    D, dt = call.directions, call.dtype
    ac = bld(torch.amp.autocast_mode._enter_autocast, device_type, None, False, None) if disable_autocast else None
    x = _cast(bld, call.x, dt)
    if call.batch_first:
        # [T, B, I]; contiguous, because F.linear on a transposed 3-D CUDA tensor reads its sizes as
        # ints, which specialises B (one more recompile than eager when B changes; H100, torch 2.11)
        x = bld("contiguous", bld("transpose", x, 0, 1))
    h0 = _cast(bld, call.h0, dt)  # [L*D, B, H]
    c0 = _cast(bld, call.c0, dt)  # [L*D, B, H]
    h_last: List[Node] = []  # L*D x [B, H] (unprojected with proj_size)
    c_last: List[Node] = []
    w_hrs: List[Node] = []  # L*D x [P, H], with proj_size
    for layer in range(call.layers):
        outs = []
        # per direction: gx [T, B, G*H] (its own time order), w_hh [G*H, H], b_hh [G*H] or None,
        # s0 [S, B, 1, H], w_hr [P, H] or None
        pieces = []
        for d in range(D):
            k = layer * D + d
            w = call.weights[k]
            w_ih, w_hh = _cast(bld, w.w_ih, dt), _cast(bld, w.w_hh, dt)
            b_ih, b_hh = _cast(bld, w.b_ih, dt), _cast(bld, w.b_hh, dt)
            w_hr = _cast(bld, w.w_hr, dt)
            if w_hr is not None:
                w_hrs.append(w_hr)
            gx = bld(F.linear, x, w_ih, b_ih)  # [T, B, G*H]
            if w_hr is not None:
                h0_k = bld(operator.getitem, h0, k)  # [B, P]
                gx = _add_first_step(bld, gx, bld(F.linear, h0_k, w_hh), reverse=d == 1)
                w_hh = bld(torch.matmul, w_hh, w_hr)  # [G*H, H] = W_hh W_hr
            pieces.append((gx, w_hh, b_hh, _initial_states(bld, call, h0, c0, k), w_hr))
        if D == 2 and merged_plan is not None:
            ran = _merged_directions(bld, call, pieces, plan=merged_plan, save=save)
        else:
            ran = [_one_direction(bld, call, *p[:4], reverse=d == 1, plan=plan, save=save) for d, p in enumerate(pieces)]
        for (h, h_n_d, c_n_d), (*_, w_hr) in zip(ran, pieces):  # h [T, B, H], h_n_d / c_n_d [B, H]
            if w_hr is not None:
                h = bld(F.linear, h, w_hr)  # [T, B, P]
            outs.append(h)
            h_last.append(h_n_d)
            if c0 is not None:
                c_last.append(c_n_d)
        x = outs[0] if D == 1 else bld(torch.cat, outs, -1)  # [T, B, D*H]
        if layer < call.layers - 1 and call.train and (isinstance(call.dropout, Node) or call.dropout > 0):
            x = bld(F.dropout, x, call.dropout, True)
    if call.batch_first:
        x = bld("transpose", x, 0, 1)  # [B, T, D*H]
    h_n = bld(torch.stack, h_last, 0)  # [L*D, B, H]
    if call.proj:
        h_n = _project_h_n(bld, h_n, w_hrs)  # [L*D, B, P]
    results = [x, h_n]
    if c0 is not None:
        results.append(bld(torch.stack, c_last, 0))  # [L*D, B, H]
    results = [_cast(bld, r, want) for r, want in zip(results, call.out_dtypes)]
    if ac is not None:
        bld(torch.amp.autocast_mode._exit_autocast, ac)
    return tuple(results)


def _one_direction(
    bld: Builder, call: RnnCall, gx: Node, w_hh: Node, b_hh: Optional[Node], s0: Node, *, reverse: bool, plan: str, save: bool
) -> Tuple[Node, Node, Optional[Node]]:
    """One direction's core-op call: (h [T, B, H], h_n [B, H], c_n [B, H] or None).
    gx [T, B, G*H], w_hh [G*H, H], b_hh [G*H], s0 [S, B, 1, H]."""
    G, H = call.gates, call.hidden
    gx = bld(torch.unflatten, gx, -1, (1, G, H))  # [T, B, NH, G, DH]
    R = bld("view", w_hh, 1, G, H, H)  # [NH, G, DH, DH]
    b = _recurrent_bias(bld, call, [b_hh], w_hh)  # [NH, G, DH]
    h, sT = _core_call(bld, call, gx, R, b, s0, reverse=reverse, plan=plan, save=save)
    return (bld(torch.flatten, h, -2),  # [T, B, H]
            *_final_states(bld, call, sT, 0))


def _merged_directions(bld: Builder, call: RnnCall, pieces, *, plan: str, save: bool):
    """Both directions of a bidirectional layer in ONE core-op call of two heads, the second
    time-reversed: a reverse recurrence over gx is the forward recurrence over gx flipped in time,
    flipped back. Same arithmetic per step as two calls; the flips are copies.

        gx  = stack(gx_fwd, gx_bwd.flip(0)) [T, B, 2, G, H]   R = stack(R_fwd, R_bwd) [2, G, H, H]
        h, sT = flashrnn.recurrence_fwd(gx, R, b [2, G, H], s0 [S, B, 2, H], cell, reverse=False, ...)
        h_fwd = h[:, :, 0]   h_bwd = h[:, :, 1].flip(0)   h_n / c_n of direction d = sT[0 / 1][:, d]

    Returns per direction (h [T, B, H], h_n [B, H], c_n [B, H] or None)."""
    G, H = call.gates, call.hidden
    (gx_f, w_f, b_f, s0_f, _), (gx_b, w_b, b_b, s0_b, _) = pieces
    gx = bld(torch.stack, [gx_f, bld(torch.flip, gx_b, [0])], 2)  # [T, B, 2, G*H]
    gx = bld(torch.unflatten, gx, -1, (G, H))  # [T, B, NH=2, G, DH]
    R = bld("view", bld(torch.stack, [w_f, w_b], 0), 2, G, H, H)  # [NH, G, DH, DH]
    b = _recurrent_bias(bld, call, [b_f, b_b], w_f)  # [NH, G, DH]
    s0 = bld(torch.cat, [s0_f, s0_b], 2)  # [S, B, NH, DH]
    h, sT = _core_call(bld, call, gx, R, b, s0, reverse=False, plan=plan, save=save)
    hs = [bld(operator.getitem, h, (slice(None), slice(None), 0)),  # [T, B, H]
          bld(torch.flip, bld(operator.getitem, h, (slice(None), slice(None), 1)), [0])]  # [T, B, H]
    return [(hs[d], *_final_states(bld, call, sT, d)) for d in range(2)]


def _recurrent_bias(bld: Builder, call: RnnCall, b_hh: Sequence[Optional[Node]], like: Node) -> Node:
    """b [NH, G, DH] from each head's b_hh [G*H] (zeros when the layer has no bias)."""
    NH, G, H = len(b_hh), call.gates, call.hidden
    if b_hh[0] is None:
        return bld(torch.zeros, NH, G, H, dtype=call.dtype, device=example_value(like).device)
    b = b_hh[0] if NH == 1 else bld(torch.stack, list(b_hh), 0)  # [NH, G*H]
    return bld("view", b, NH, G, H)


def _core_call(bld: Builder, call: RnnCall, gx, R, b, s0, *, reverse: bool, plan: str, save: bool) -> Tuple[Node, Node]:
    """The core-op call and its two getitems, recorded as created nodes with example values."""
    with bld.graph.inserting_before(call.node):
        h, sT = emit_recurrence(bld.graph, gx, R, b, s0, cell=call.cell, reverse=reverse, plan=plan, save=save)
    for n in (h.args[0], h, sT):
        bld.created.append(n)
        n.meta.update(bld.meta)
    _fake_op(bld, h.args[0], h, sT)
    return h, sT


def _final_states(bld: Builder, call: RnnCall, sT: Node, head: int) -> Tuple[Node, Optional[Node]]:
    """(h_n [B, H], c_n [B, H] or None) of head `head` from sT [S, B, NH, DH]."""
    h_n = bld(operator.getitem, sT, (0, slice(None), head))  # [B, H]
    c_n = bld(operator.getitem, sT, (1, slice(None), head)) if call.c0 is not None else None  # [B, H]
    return h_n, c_n


def _project_h_n(bld: Builder, h_n: Node, w_hrs: Sequence[Node]) -> Node:
    """h_n [L*D, B, H] -> [L*D, B, P], each entry through its own W_hr [P, H]."""
    rows = []
    for k, w_hr in enumerate(w_hrs):
        u = bld(operator.getitem, h_n, k)  # [B, H]
        rows.append(bld(F.linear, u, w_hr))  # [B, P]
    return bld(torch.stack, rows, 0)  # [L*D, B, P]


def _fake_op(bld: Builder, call_node: Node, h: Node, sT: Node) -> None:
    """Example values of the core-op call and its two getitems."""
    args = torch.fx.node.map_arg(call_node.args, lambda n: n.meta.get("example_value"))
    with bld.fake_mode:
        out = call_node.target(*args)
    call_node.meta["example_value"] = out
    h.meta["example_value"], sT.meta["example_value"] = out[0], out[1]
