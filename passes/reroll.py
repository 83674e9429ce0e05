"""Reroll unrolled recurrent loops (cell-module loops and hand-written cells) into one core op.

Matched: a run of K >= 2 loop bodies that Dynamo unrolled, each a step `(states, x_t) -> states`
chained through its states, e.g.

    for t in range(T):                           for x_t in x.unbind(1):
        h, c = cell(x[:, t], (h, c))                 g = x_t @ W.T + h @ U.T + b
        outs.append(h)                               i, f, z, o = g.chunk(4, 1)
    y = torch.stack(outs, 1)                         c = f.sigmoid() * c + i.sigmoid() * z.tanh()
                                                     h = o.sigmoid() * c.tanh()

Produced (steps `_step_match`, `_affine`, `_derive`):

    x_all = x.movedim(1, 0)                              # [T, B, I]
    gx, R, b = <extraction graph>(x_all, W, U, b)        # [T, B, NH, G, DH], [NH, G, DH, DH], [NH, G, DH]
    h_all, sT = flashrnn.recurrence_fwd(gx, R, b, s0, cell, reverse, plan, save)
    y = h_all.reshape(T, B, H).movedim(0, 1)             # the user's stack / cat, or per-step selects

Refused, with the reason recorded and the graph left as written: a step whose input depends on
an earlier state, more than one per-step value (weights that differ between steps), an
intermediate value (gates, c_t) used outside the loop, or a step that no registry cell matches
on random float64 inputs (e.g. the reset-before GRU `tanh(W x + R (r * h))`).
"""

from __future__ import annotations

import gc

import operator
from typing import Dict, List, Optional, Sequence

import torch
import torch.fx

from flashrnn_compile.context import Rewrite, choose_plan, user_code

from . import _affine
from ._common import emit_recurrence, example_value
from ._common import REWRITTEN
from ._derive import Refused, build_template, derive
from ._step_match import (
    Windows, components, core_positions, find_regions, isomorphic_windows, label, state_positions,
    time_slice, verify, weight_nodes,
)
from .canonicalize import CELL_OPS, changes_global_state, contains_cell_op

Node = torch.fx.Node
MAX_REGIONS = 64
_LINEAR_OPS = _affine._MATMUL | _affine._LINEAR | {torch.addmm, torch.einsum} | set(CELL_OPS)


def reroll_pass(gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
    enabled = gc.isenabled()
    gc.disable()  # tens of thousands of nodes: cyclic GC passes would dominate the run time
    try:
        return _reroll_all(gm, ctx)
    finally:
        if enabled:
            gc.enable()


def _reroll_all(gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
    """Two sweeps: weights told apart by name (two recurrences in one loop body, e.g. both
    directions, have different weights), then alike (finds and refuses loops whose weights
    change from step to step)."""
    graph = gm.graph
    done: set = set()  # nodes of loop bodies already rerolled or refused
    changed = False
    for by_name in (True, False):
        tried: set = set()
        for _ in range(MAX_REGIONS):
            named = weight_nodes(graph) if by_name else frozenset()
            nodes = [n for n in graph.nodes if n.op in ("call_function", "call_method")]
            codes, ids = [], {}
            for i, n in enumerate(nodes):
                skip = n in tried or n in done or REWRITTEN in n.meta
                codes.append(-1 - i if skip else ids.setdefault(label(n, named), len(ids)))
            found = False
            for region in find_regions(codes, nodes):
                region_nodes = nodes[region.start: region.start + region.period * region.count]
                tried.update(region_nodes)
                win = verify(nodes, region)
                if win is None:
                    continue
                found = True
                done.update(n for w in win.windows for n in w)
                for comp in components(win):
                    changed |= _reroll(graph, win, comp, ctx)
                break
            if not found:
                break
    if changed:
        graph.lint()
        gm.recompile()
    return gm


def _reroll(graph: torch.fx.Graph, win: Windows, comp: List[int], ctx) -> bool:
    """Rewrite one chain; False (with the refusal recorded, if it was a recurrence) otherwise."""
    core = core_positions(win, comp)
    first = [win.windows[1][p] for p in core]
    if not any(n.target in _LINEAR_OPS for n in first):
        return False  # a repeated pattern without a matmul on the state: not an RNN
    source = "cell_loop" if contains_cell_op(first) else "handwritten"
    seen = [n for w in win.windows[:2] for n in (w[p] for p in core)]
    before = set(graph.nodes)
    try:
        ok = _rewrite(graph, win, core, source, ctx)
        for n in graph.nodes:
            if n not in before:
                n.meta[REWRITTEN] = source  # later sweeps and passes leave these nodes alone
        return ok
    except Refused as e:
        ctx.refused(source, str(e), seen)
        return False


def _step_inputs(win: Windows, core: List[int]) -> List[Node]:
    """The per-step input x_t of every window; Refused unless there is exactly one."""
    core_set = set(core)
    steps = [s for s in win.slots if s.kind == "step" and s.pos in core_set]
    external = {tuple(s.ref) for s in steps}
    internal = [p for p in core if p in win.varying_consts]
    inputs = [list(e) for e in external] + [[w[p] for w in win.windows] for p in internal]
    if not inputs:
        raise Refused("no per-step input: the step input depends on an earlier state "
                      "(an output fed back, or attention inside the loop)")
    if len(inputs) > 1:
        params = any(n.op == "placeholder" for e in external for n in e)
        what = "weights that differ between steps" if params or len(internal) > 1 else "several per-step inputs"
        raise Refused(f"more than one value changes from step to step ({what}): "
                      + ", ".join(i[1].name for i in inputs))
    if internal:  # x[:, t] inside the loop: must read a loop-invariant tensor
        p = internal[0]
        ts = time_slice(win.windows[1][p])
        if ts is None or any(s.pos == p and s.kind != "inv" for s in win.slots):
            raise Refused(f"the per-step input {win.windows[1][p].name} is not a slice of a tensor "
                          "computed before the loop")
    return inputs[0]


def _time_axis(xs: List[Node]):
    """(base, dim, lo, reverse) if x_k = base.select(dim, lo + k) (or lo + K-1-k); else None."""
    slices = [time_slice(x) for x in xs]
    if any(s is None for s in slices):
        return None
    base, dim = slices[0][0], slices[0][1]
    value = example_value(base)
    if value is None or any(s[0] is not base or s[1] != dim for s in slices):
        return None
    dim = dim % value.dim()
    size = value.shape[dim]
    idx = [s[2] % size for s in slices]
    K = len(idx)
    if idx == list(range(idx[0], idx[0] + K)):
        return base, dim, idx[0], False
    if idx == list(range(idx[0], idx[0] - K, -1)):
        return base, dim, idx[-1], True
    return None


def _rewrite(graph, win: Windows, core: List[int], source: str, ctx) -> bool:
    if not isomorphic_windows(win, core):
        raise Refused("the loop bodies are not isomorphic")
    K = len(win.windows)
    if any(changes_global_state(n) for w in win.windows for n in w):
        raise Refused("grad mode or autocast changes inside the loop body")
    impure = [win.windows[1][p].name for p in core if win.windows[1][p].is_impure()]
    if impure:
        raise Refused(f"the step has side effects ({', '.join(impure)})")
    states = state_positions(win, core)
    missing = [q for q in states if q not in win.init]
    if missing:
        raise Refused("an initial state is not a tensor computed before the loop")
    xs = _step_inputs(win, core)
    w0, w1 = win.windows[0], win.windows[1]
    x1 = xs[1]
    template = build_template([w1[p] for p in core], [w0[q] for q in states], [w1[q] for q in states], x1)
    xv = example_value(x1)
    derived = derive(template, xv.dtype, xv.device)
    h_pos = states[derived.h_slot]

    core_all = {w[p] for w in win.windows for p in core}
    state_dep = _state_dependent(win, core, states)
    for k, w in enumerate(win.windows):
        for p in state_dep:
            outside = [u for u in w[p].users if u not in core_all]
            if outside and p != h_pos and not (k == K - 1 and p in states):
                raise Refused(f"intermediate value {w[p].name} (step {k}) is used outside the loop")

    axis = _time_axis(xs)
    reverse = bool(axis[3]) if axis else False
    time_of = [K - 1 - k for k in range(K)] if reverse else list(range(K))
    h_val = example_value(w1[h_pos])
    B = h_val.shape[0]
    for q in states:
        v = example_value(w1[q])
        if v is None or v.dtype != xv.dtype or v.shape[0] != B:
            raise Refused(f"state {w1[q].name} is not a [B, ...] tensor of the input's dtype")
    NH, DH = derived.heads, derived.head_dim
    plan = choose_plan(ctx, derived.cell, B, NH, DH, xv.dtype, xv.device)
    save = any(bool(getattr(example_value(win.windows[-1][q]), "requires_grad", False)) for q in states)

    with graph.inserting_before(min((w0[p] for p in core), key=_order(graph))):
        if axis:
            base, dim, lo, _ = axis
            x_all = base
            if lo != 0 or example_value(base).shape[dim] != K:
                x_all = graph.call_function(torch.narrow, (x_all, dim, lo, K))
            if dim != 0:
                x_all = graph.call_function(torch.movedim, (x_all, dim, 0))  # [T, B, *xs]
        else:
            x_all = graph.call_function(torch.stack, (list(xs), 0))  # [T, B, *xs]
        ext_ph = [n for n in derived.ext.nodes if n.op == "placeholder"]
        val_map = {ext_ph[0]: x_all, **dict(zip(ext_ph[1:], derived.leaf_inputs))}
        gx, R, b = graph.graph_copy(derived.ext, val_map)
        s0 = []
        for slot in derived.state_of_cell:
            init = win.init[states[slot]]
            shape = tuple(example_value(w1[states[slot]]).shape)
            if tuple(getattr(example_value(init), "shape", ())) != shape:
                init = graph.call_function(torch.broadcast_to, (init, shape))
            s0.append(graph.call_function(torch.reshape, (init, (B, NH, DH))))
        s0 = graph.call_function(torch.stack, (s0, 0))  # [S, B, NH, DH]
        h_all, sT = emit_recurrence(graph, gx, R, b, s0, cell=derived.cell, reverse=reverse,
                                    plan=plan.op_arg(), save=save)
        h_user = graph.call_function(torch.reshape, (h_all, (K,) + tuple(h_val.shape)))  # [T, B, *hs]
        finals = {}
        for k, slot in enumerate(derived.state_of_cell):
            shape = tuple(example_value(w1[states[slot]]).shape)
            finals[states[slot]] = graph.call_function(
                torch.reshape, (graph.call_function(torch.select, (sT, 0, k)), shape))

    hs = [w[h_pos] for w in win.windows]
    by_time = [None] * K
    for k, h in enumerate(hs):
        by_time[time_of[k]] = h
    _replace_stacks(graph, hs, by_time, h_user, core_all)
    last = win.windows[-1]
    for q in states:
        last[q].replace_all_uses_with(finals[q], delete_user_cb=lambda u: u not in core_all)
    for k, h in enumerate(hs[:-1]):
        if any(u not in core_all for u in h.users):
            with graph.inserting_after(h_user):
                sel = graph.call_function(torch.select, (h_user, 0, time_of[k]))
            h.replace_all_uses_with(sel, delete_user_cb=lambda u: u not in core_all)
    _erase_dead([w[p] for w in reversed(win.windows) for p in reversed(core)] + list(reversed(xs)))
    _sort_after(graph)
    ctx.rewrote(Rewrite(
        source=source, cell=derived.cell, layers=1, directions=1, steps=K, batch=B, heads=NH,
        head_dim=DH, dtype=str(xv.dtype).replace("torch.", ""), plan=plan.as_dict(),
        user_code=user_code([w0[p] for p in core] + [w1[p] for p in core]),
    ))
    return True


def _order(graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: index[n]


def _state_dependent(win: Windows, core: List[int], states: List[int]) -> List[int]:
    """Positions whose value depends on a state (the rest is input-side and may stay)."""
    core_set = set(core)
    dep = set()
    for p in core:
        for s in win.slots:
            if s.pos == p and ((s.kind == "state") or (s.kind == "in" and s.ref in dep)):
                dep.add(p)
                break
    return sorted(dep & core_set)


def _replace_stacks(graph, hs: List[Node], by_time: List[Node], h_user: Node, core_all) -> None:
    """torch.stack/cat of all h_t (in time order or its reverse) -> a view of h_user."""
    users = {u for h in hs for u in h.users if u not in core_all}
    rank = len(example_value(hs[0]).shape)
    for u in users:
        if u.target not in (torch.stack, torch.cat) or not u.args or not isinstance(u.args[0], (list, tuple)):
            continue
        items = list(u.args[0])
        flip = items == by_time[::-1] and items != by_time
        if items != by_time and not flip:
            continue
        dim = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)
        with graph.inserting_before(u):
            y = h_user
            if flip:
                y = graph.call_function(torch.flip, (y, (0,)))
            if u.target is torch.stack:
                y = graph.call_function(torch.movedim, (y, 0, dim % (rank + 1)))
            else:
                d = dim % rank
                y = graph.call_function(torch.flatten, (graph.call_function(torch.movedim, (y, 0, d)), d, d + 1))
        u.replace_all_uses_with(y)
        graph.erase_node(u)


def _erase_dead(candidates: List[Node]) -> None:
    """Erase the rerolled steps (and what only they used); `candidates` latest first."""
    work = candidates[::-1]  # pop() takes the latest
    seen = set()
    while work:
        n = work.pop()
        if n in seen or n.users or n.op not in ("call_function", "call_method"):
            continue
        seen.add(n)
        inputs = n.all_input_nodes
        n.graph.erase_node(n)
        for a in inputs:
            if not a.users and a.op in ("call_function", "call_method") and not a.is_impure():
                work.append(a)


def _sort_after(graph: torch.fx.Graph) -> None:
    """Stable topological re-sort in place (new nodes were inserted before their users' window)."""
    order = list(graph.nodes)
    index = {n: i for i, n in enumerate(order)}
    if all(index[a] < index[n] for n in order for a in n.all_input_nodes):
        return
    placed, result = set(), []

    def visit(n):
        stack = [(n, False)]
        while stack:
            m, ready = stack.pop()
            if m in placed:
                continue
            if ready:
                placed.add(m)
                result.append(m)
                continue
            stack.append((m, True))
            for a in reversed(m.all_input_nodes):
                if a not in placed:
                    stack.append((a, False))

    for n in order:
        visit(n)
    prev = result[0]
    for n in result[1:]:
        prev.append(n)
        prev = n
