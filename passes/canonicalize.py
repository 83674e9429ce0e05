"""Canonicalise the Dynamo graph so that every step of an unrolled loop is spelled the same way.

A pass `(gm, ctx) -> gm` that changes no value, only where and how often pure nodes appear:

1. Weight-only nodes are hoisted and deduplicated. Dynamo emits `getattr(W, 'T')`,
   `torch.zeros(B, H)` or `b_ih + b_hh` once per loop iteration (and the first iteration's
   `torch.zeros` in the middle of the loop body). Every pure node whose inputs are placeholders,
   constants or other hoisted nodes, and which is not an indexing op (those take the time index),
   moves to just after the placeholders; identical ones become one node.

       before:  ... x_t = x[:, t]; WT_1 = getattr(W, 'T'); mm_1 = x_t @ WT_1 ... WT_2 = getattr(W, 'T')
       after:   WT = getattr(W, 'T'); ... x_t = x[:, t]; mm_1 = x_t @ WT ... mm_2 = ... @ WT

2. Multi-output nodes get one `getitem` per output, in index order, right after them (Dynamo
   creates them lazily: the last `torch.lstm_cell` of a loop often lacks `getitem(., 1)`).
   Unused ones are removed again by the dead-code elimination at the end of the reroll pass.

This pass also holds the spelling table of the cell-module ops (`decompose_cell_ops`): the
unrolled `torch.lstm_cell / gru_cell / rnn_tanh_cell / rnn_relu_cell` written as the gate
equations (PyTorch's definitions), used on a copy of one step for analysis, never on the user's
graph.
"""

from __future__ import annotations

import gc

import operator
from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.fx
import torch.nn.functional as F

Node = torch.fx.Node

# Ops that take a time index: never hoisted, so that x[:, t] stays inside the loop body.
INDEXING = {operator.getitem, torch.select, torch.narrow, torch.unbind, "select", "narrow", "unbind", "__getitem__"}
# Ops with randomness or effects: never moved.
_NOT_MOVABLE = {
    torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
    torch.bernoulli, torch.normal, torch.multinomial, F.dropout, torch.dropout,
    "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "copy_", "fill_", "zero_",
}


# Nodes that switch grad mode or autocast for what follows them.
GLOBAL_STATE = {
    torch._C._set_grad_enabled, torch.amp.autocast_mode._enter_autocast,
    torch.amp.autocast_mode._exit_autocast, torch.autograd.grad_mode._enter_inference_mode,
    torch.autograd.grad_mode._exit_inference_mode,
}


def changes_global_state(node: Node) -> bool:
    return node.op == "call_function" and node.target in GLOBAL_STATE


def _movable(node: Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if target in INDEXING or target in _NOT_MOVABLE or name.endswith("_"):
        return False
    if node.kwargs.get("generator") is not None:
        return False
    value = node.meta.get("example_value")
    values = value if isinstance(value, (tuple, list)) else [value]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        return False  # only tensor computations move (never grad-mode or autocast switches)
    try:
        return not node.is_impure()
    except Exception:  # noqa: BLE001  (is_impure can fail on exotic targets: then do not move)
        return False


def _key(node: Node):
    def freeze(a):
        if isinstance(a, (list, tuple)):
            return (type(a).__name__,) + tuple(freeze(x) for x in a)
        if isinstance(a, dict):
            return ("dict",) + tuple((k, freeze(v)) for k, v in sorted(a.items()))
        if isinstance(a, Node):
            return ("node", a.name)
        if isinstance(a, slice):
            return ("slice", a.start, a.stop, a.step)
        return (type(a).__name__, repr(a))

    return (node.op, node.target, freeze(node.args), freeze(node.kwargs))


def _is_weight(node: Node) -> bool:
    return node.op == "get_attr" or (
        node.op == "placeholder" and isinstance(node.meta.get("example_value"), torch.nn.Parameter)
    )


def hoist_invariants(graph: torch.fx.Graph) -> int:
    """Move weight-only pure nodes after the placeholders and merge duplicates; returns moves.

    Weight-only: computed from parameters (and get_attr constants) alone, like W.T or b_ih + b_hh.
    Factories without inputs (torch.zeros(B, H)) move too, but what is computed from them does
    not: the first step's `h0 @ U.T` must stay in the first loop body.
    """
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders:
        return 0
    anchor = placeholders[-1]
    weights = {n for n in placeholders if _is_weight(n)}
    seen: Dict[Any, Node] = {}
    moved = 0
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        if changes_global_state(node):
            break  # nothing moves across a grad-mode or autocast switch
        inputs = node.all_input_nodes
        if node.op != "get_attr" and (not all(a in weights for a in inputs) or not _movable(node)):
            continue
        key = _key(node)
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
            continue
        seen[key] = node
        if inputs or node.op == "get_attr":
            weights.add(node)
        anchor.append(node)
        anchor = node
        moved += 1
    return moved


def complete_getitems(graph: torch.fx.Graph) -> None:
    """One getitem per output of every multi-output node, in index order, right after it."""
    for node in list(graph.nodes):
        value = node.meta.get("example_value")
        if not isinstance(value, (tuple, list)) or not value or node.op == "placeholder":
            continue
        if not all(isinstance(v, torch.Tensor) for v in value):
            continue
        users = list(node.users)
        if not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
            continue
        by_index: Dict[int, Node] = {}
        for u in users:
            k = u.args[1] % len(value)
            if k in by_index:  # duplicate getitem: merge
                u.replace_all_uses_with(by_index[k])
                graph.erase_node(u)
            else:
                by_index[k] = u
        anchor = node
        for k in range(len(value)):
            g = by_index.get(k)
            if g is None:
                with graph.inserting_after(anchor):
                    g = graph.call_function(operator.getitem, (node, k))
                g.meta["example_value"] = value[k]
                g.meta["stack_trace"] = node.meta.get("stack_trace")
            else:
                anchor.append(g)
            anchor = g


def canonicalize_pass(gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
    enabled = gc.isenabled()
    gc.disable()  # no cycles are made here; GC passes over a large graph only cost time
    try:
        complete_getitems(gm.graph)
        hoist_invariants(gm.graph)
    finally:
        if enabled:
            gc.enable()
    return gm


# ---- cell-module ops written as gate equations (on a copy of one step only) ----------------

def _linear(g: torch.fx.Graph, x: Node, w: Node, b) -> Node:
    return g.call_function(F.linear, (x, w, b))


def _lstm_cell(g, x, hx, w_ih, w_hh, b_ih=None, b_hh=None) -> List[Node]:
    h, c = hx
    gates = g.call_function(operator.add, (_linear(g, x, w_ih, b_ih), _linear(g, h, w_hh, b_hh)))
    chunks = g.call_method("chunk", (gates, 4, 1))
    i, f, gg, o = (g.call_function(operator.getitem, (chunks, k)) for k in range(4))
    i, f, o = (g.call_function(torch.sigmoid, (v,)) for v in (i, f, o))
    gg = g.call_function(torch.tanh, (gg,))
    c_new = g.call_function(operator.add, (g.call_function(operator.mul, (f, c)),
                                           g.call_function(operator.mul, (i, gg))))
    h_new = g.call_function(operator.mul, (o, g.call_function(torch.tanh, (c_new,))))
    return [h_new, c_new]


def _gru_cell(g, x, h, w_ih, w_hh, b_ih=None, b_hh=None) -> List[Node]:
    gi = g.call_method("chunk", (_linear(g, x, w_ih, b_ih), 3, 1))
    gh = g.call_method("chunk", (_linear(g, h, w_hh, b_hh), 3, 1))
    i_r, i_z, i_n = (g.call_function(operator.getitem, (gi, k)) for k in range(3))
    h_r, h_z, h_n = (g.call_function(operator.getitem, (gh, k)) for k in range(3))
    r = g.call_function(torch.sigmoid, (g.call_function(operator.add, (i_r, h_r)),))
    z = g.call_function(torch.sigmoid, (g.call_function(operator.add, (i_z, h_z)),))
    n = g.call_function(torch.tanh, (g.call_function(
        operator.add, (i_n, g.call_function(operator.mul, (r, h_n)))),))
    one_minus_z = g.call_function(operator.sub, (1.0, z))
    return [g.call_function(operator.add, (g.call_function(operator.mul, (one_minus_z, n)),
                                           g.call_function(operator.mul, (z, h))))]


def _elman_cell(activation: Callable) -> Callable:
    def emit(g, x, h, w_ih, w_hh, b_ih=None, b_hh=None) -> List[Node]:
        pre = g.call_function(operator.add, (_linear(g, x, w_ih, b_ih), _linear(g, h, w_hh, b_hh)))
        return [g.call_function(activation, (pre,))]

    return emit


# target -> (emitter, returns a tuple?) ; the source label of a loop containing one is "cell_loop"
CELL_OPS: Dict[Any, Any] = {
    torch.lstm_cell: (_lstm_cell, True),
    torch.gru_cell: (_gru_cell, False),
    torch.rnn_tanh_cell: (_elman_cell(torch.tanh), False),
    torch.rnn_relu_cell: (_elman_cell(torch.relu), False),
}


def decompose_cell_ops(graph: torch.fx.Graph) -> int:
    """Replace every cell-module op in `graph` by its gate equations; returns how many."""
    count = 0
    for node in list(graph.nodes):
        entry = CELL_OPS.get(node.target) if node.op == "call_function" else None
        if entry is None:
            continue
        emit, is_tuple = entry
        kwargs = dict(node.kwargs)
        with graph.inserting_before(node):
            outs = emit(graph, *node.args, **kwargs)
        if is_tuple:
            for user in list(node.users):
                if user.target is not operator.getitem:
                    raise ValueError(f"{node.target}: expected only getitem users, got {user}")
                user.replace_all_uses_with(outs[user.args[1]])
                graph.erase_node(user)
        else:
            node.replace_all_uses_with(outs[0])
        graph.erase_node(node)
        count += 1
    return count


def contains_cell_op(nodes: Sequence[Node]) -> bool:
    return any(n.op == "call_function" and n.target in CELL_OPS for n in nodes)
