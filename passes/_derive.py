"""Derive cell, gate order, heads and parameter mapping of one loop step, and prove it.

Input: one step as a graph `(states..., x_t, leaves...) -> states'` (`build_template`), copied
from the user's graph. The affine analysis (`_affine`) finds the pre-activations; each is a
gate's full pre-activation (x and h terms, "xh"), or a gate's input part ("x") or recurrent part
("h") used apart (GRU's n gate). Units are "xh" values and (x, h) pairs. For every registry cell
with as many gates as units and as many states as the loop carries, every gate order and state
order is tried numerically; the first that matches is then PROVED: the extraction graph that
builds

    gx [T, B, NH, G, DH], R [NH, G, DH, DH], b [NH, G, DH]

from the user's weights is evaluated, on fresh random float64 inputs, together with the
registry's reference step, and compared with the user's own step. Anything else is a refusal.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx

from flashrnn_compile.cells import CELLS

from . import _affine
from ._affine import Aff, Analysis, Term
from .canonicalize import decompose_cell_ops

Node = torch.fx.Node
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs a step on real tensors and writes each node's shape to meta['tensor_meta']."""

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["tensor_meta"] = _Shape(tuple(out.shape))
        return out


class _Shape:
    def __init__(self, shape):
        self.shape = shape


class Refused(Exception):
    """The step cannot be rerolled; the message is the recorded reason."""


@dataclasses.dataclass
class Template:
    gm: torch.fx.GraphModule
    inputs: List[Node]  # the user's nodes behind the placeholders, in order
    n_states: int  # placeholders: states (slot order), x_t, then leaves


def build_template(core: Sequence[Node], states_in: Sequence[Node], states_out: Sequence[Node],
                   x: Node) -> Template:
    g = torch.fx.Graph()
    env: Dict[Node, Node] = {}
    inputs: List[Node] = []

    def place(n: Node, name: str) -> None:
        p = g.placeholder(name)
        p.meta["example_value"] = n.meta.get("example_value")
        env[n] = p
        inputs.append(n)

    for k, n in enumerate(states_in):
        place(n, f"state_{k}")
    place(x, "x_t")
    core_set = set(core)
    for n in core:
        for a in n.all_input_nodes:
            if a not in env and a not in core_set:
                place(a, f"leaf_{len(inputs)}")
    for n in core:
        if n is not x:
            env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[n] for n in states_out))
    return Template(torch.fx.GraphModule(torch.nn.Module(), g), inputs, len(states_in))


def _shape(n: Node) -> Tuple[int, ...]:
    v = n.meta.get("example_value")
    if not isinstance(v, torch.Tensor):
        raise Refused(f"input {n.name} of the step is not a tensor")
    if v.dtype not in _FLOATS:
        raise Refused(f"input {n.name} of the step has dtype {v.dtype}; only floating inputs are proved")
    if not all(isinstance(d, int) for d in v.shape):
        raise Refused(f"input {n.name} has a symbolic shape; the proof needs static shapes")
    return tuple(v.shape)


def random_inputs(t: Template, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(t.inputs):
        shape = _shape(n)
        v = torch.randn(shape, generator=g, dtype=torch.float64)
        if k > t.n_states and shape:  # weights: unit-scale pre-activations, no saturated gates
            v = v / math.sqrt(max(1, shape[-1]))
        out.append(v)
    return out


def retarget(graph: torch.fx.Graph, dtype: torch.dtype, device) -> torch.fx.GraphModule:
    """A copy of the extraction graph whose factory calls make float64 CPU tensors."""
    g = torch.fx.Graph()
    out = g.graph_copy(graph, {})
    g.output(out)
    for n in g.nodes:
        kw = dict(n.kwargs)
        if kw.get("dtype") in _FLOATS:
            kw["dtype"] = dtype
        if "device" in kw:
            kw["device"] = device
        n.kwargs = kw
    return torch.fx.GraphModule(torch.nn.Module(), g)


@dataclasses.dataclass
class Unit:
    x: Optional[Aff]  # the input part (with its constant)
    h: Aff  # the recurrent part
    h_const: bool  # whether h's constant belongs in b (x and h used apart)


@dataclasses.dataclass
class Derived:
    cell: str
    heads: int
    head_dim: int
    h_slot: int
    state_of_cell: List[int]  # cell state k <- user state slot
    ext: torch.fx.Graph  # placeholders x_all, then leaves; output (gx, R, b)
    leaf_inputs: List[Node]  # user's nodes for the ext placeholders after x_all


def _is_h_itself(v: Aff, width: int) -> bool:
    t = v.terms.get("h")
    return (set(v.terms) == {"h"} and v.const is None and t.base is None
            and _affine._identity(t.idx, width))


def _units(an: Analysis, H: int) -> List[List[Unit]]:
    xh, xs, hs = [], [], []
    for node in an.frontier:
        v = an.env[node]
        if _is_h_itself(v, an.width.get("h", -1)):
            continue
        if v.numel_feat != H:
            raise Refused(f"pre-activation {node.name} has {v.numel_feat} features, the state {H}")
        kinds = set(v.terms)
        (xh if kinds == {"x", "h"} else xs if kinds == {"x"} else hs).append(v)
    if len(xs) != len(hs):
        raise Refused(f"{len(xs)} input-only and {len(hs)} recurrent-only pre-activations do not pair up")
    options = []
    for perm in itertools.permutations(hs):
        options.append([Unit(v, v, False) for v in xh] + [Unit(x, h, True) for x, h in zip(xs, perm)])
    return options


def _heads(mats: Sequence[torch.Tensor], H: int) -> int:
    best = 1
    for nh in range(2, H + 1):
        if H % nh:
            continue
        dh = H // nh
        mask = torch.block_diag(*[torch.ones(dh, dh, dtype=torch.bool)] * nh)
        if all(bool((m[~mask] == 0).all()) for m in mats):
            best = nh
    return best


class _Probe:
    """Numbers of every frontier value's terms, for the search over gate and state orders."""

    def __init__(self, an: Analysis, leaves: List[torch.Tensor], x_width: int, H: int):
        self.nodes: Dict[int, Tuple] = {}
        outs = []
        for v in {id(an.env[n]): an.env[n] for n in an.frontier}.values():
            entry = []
            for src, width in (("x", x_width), ("h", H)):
                t = v.terms.get(src)
                entry.append(None if t is None else an.rows(t, width))
            entry.append(None if v.const is None else an.rows(v.const, None))
            self.nodes[id(v)] = tuple(entry)
            outs.extend(e for e in entry if e is not None)
        out = an.ext.output(tuple(outs))
        gm = retarget(an.ext, torch.float64, "cpu")
        an.ext.erase_node(out)
        values = iter(gm(torch.empty(0, dtype=torch.float64), *leaves))
        self.num = {k: tuple(None if e is None else next(values) for e in entry) for k, entry in self.nodes.items()}

    def unit(self, u: Unit):
        cx, _, ccx = self.num[id(u.x)]
        _, ch, cch = self.num[id(u.h)]
        if u.x is u.h:
            return cx, ccx, ch, None
        return cx, ccx, ch, cch


def _step_numeric(cell, parts, nh, x, states, order) -> List[torch.Tensor]:
    B = x.shape[0]
    H = parts[0][2].shape[0]
    dh = H // nh
    x2 = x.reshape(B, -1)
    h2 = states[order[0]].reshape(B, H)
    gx, rhb = [], []
    for cx, ccx, ch, cch in parts:
        g = x2 @ cx.T + (0 if ccx is None else ccx)
        r = h2 @ ch.T + (0 if cch is None else cch)
        gx.append(g.view(B, nh, dh))
        rhb.append(r.view(B, nh, dh))
    s = tuple(states[k].reshape(B, nh, dh) for k in order)
    return list(cell.step(torch.stack(gx, 2), torch.stack(rhb, 2), s))


def _matches(new: Sequence[torch.Tensor], want: Sequence[torch.Tensor], order) -> bool:
    for k, slot in enumerate(order):
        w = want[slot]
        if new[k].numel() != w.numel() or not torch.allclose(new[k].reshape(w.shape), w, rtol=1e-9, atol=1e-9):
            return False
    return True


def derive(t: Template, dtype: torch.dtype, device) -> Derived:
    """The cell, gate order, heads and extraction graph of the step; Refused if none is proved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 ops: thread start-up and barriers cost more than math
    try:
        return _derive(t, dtype, device)
    finally:
        torch.set_num_threads(threads)


def _derive(t: Template, dtype: torch.dtype, device) -> Derived:
    S = t.n_states
    x_shape = _shape(t.inputs[S])
    x_width = math.prod(x_shape[1:])
    draw = random_inputs(t, seed=0)
    want = t.gm(*draw)
    reasons = []
    for h_slot in range(S):
        h_shape = _shape(t.inputs[h_slot])
        if h_shape[0] != x_shape[0]:
            continue
        H = math.prod(h_shape[1:])
        step = build_template_copy(t)
        _ShapeRecorder(step).run(*draw)
        placeholders = [n for n in step.graph.nodes if n.op == "placeholder"]
        sources = {placeholders[S]: "x", placeholders[h_slot]: "h"}
        opaque = [p for k, p in enumerate(placeholders[:S]) if k != h_slot]
        an = Analysis(step.graph, sources, opaque, dtype, device)
        try:
            options = _units(an, H)
        except Refused as e:
            reasons.append(str(e))
            continue
        if not options or not options[0]:
            reasons.append("no pre-activation combines the input and the state")
            continue
        leaves = draw[S + 1:]
        probe = _Probe(an, leaves, x_width, H)
        for units in options:
            parts = [probe.unit(u) for u in units]
            nh = _heads([p[2] for p in parts], H)
            for cell in CELLS.values():
                if cell.num_gates != len(units) or cell.num_states != S:
                    continue
                rest = [k for k in range(S) if k != h_slot]
                for perm in itertools.permutations(range(len(units))):
                    ordered = [parts[k] for k in perm]
                    for others in itertools.permutations(rest):
                        order = [h_slot, *others]
                        new = _step_numeric(cell, ordered, nh, draw[S], draw[:S], order)
                        if _matches(new, want, order):
                            d = _emit(an, t, cell.name, [units[k] for k in perm], nh, H, x_width, h_slot, order)
                            prove(d, t)
                            return d
        reasons.append("no registry cell matches the step for any gate order")
    raise Refused("; ".join(dict.fromkeys(reasons)) or "the state and the input have different batch sizes")


def build_template_copy(t: Template) -> torch.fx.GraphModule:
    g = torch.fx.Graph()
    out = g.graph_copy(t.gm.graph, {})
    g.output(out)
    decompose_cell_ops(g)
    return torch.fx.GraphModule(torch.nn.Module(), g)


def _emit(an: Analysis, t: Template, cell: str, units: List[Unit], nh: int, H: int, x_width: int,
          h_slot: int, order: List[int]) -> Derived:
    """Output (gx [T, B, NH, G, DH], R [NH, G, DH, DH], b [NH, G, DH]) of the extraction graph."""
    c = an.call
    dh = H // nh
    G = len(units)
    x_all = an.x_all  # [T, B, *xs]
    x2 = c(torch.flatten, x_all, 2)  # [T, B, I]
    x_terms = [u.x.terms["x"] for u in units]
    if all(tx.base is None for tx in x_terms):  # the loop reads precomputed pre-activations
        idx = torch.cat([tx.idx.flatten() for tx in x_terms])
        gx = _columns(an, x2, idx, x_width)  # [T, B, G*H]
    else:
        w = _stacked_rows(an, x_terms, x_width)  # [G*H, I]
        gx = c(torch.matmul, x2, c(torch.t, w))  # [T, B, G*H]
    consts = [u.x.const for u in units]
    if any(k is not None for k in consts):
        if all(k is not None for k in consts):
            gx = c(torch.add, gx, _stacked_rows(an, consts, None))
        else:
            zero = lambda: c(torch.zeros, H, dtype=an.dtype, device=an.device)  # noqa: E731
            gx = c(torch.add, gx, c(torch.cat, [zero() if k is None else an.rows(k, None) for k in consts], 0))
    gx = c(torch.unflatten, gx, 2, (G, nh, dh))  # [T, B, G, NH, DH]
    gx = c(torch.Tensor.contiguous, c(torch.permute, gx, (0, 1, 3, 2, 4)))  # [T, B, NH, G, DH]
    h_terms = [u.h.terms["h"] for u in units]
    if nh == 1:
        R = c(torch.reshape, _stacked_rows(an, h_terms, H), (1, G, H, H))  # [NH, G, DH, DH]
    else:
        Rs = []
        for th in h_terms:
            m = c(torch.reshape, an.rows(th, H), (nh, dh, nh, dh))  # [NH, DH, NH, DH]
            Rs.append(c(torch.permute, c(torch.diagonal, m, 0, 0, 2), (2, 0, 1)))  # [NH, DH, DH]
        R = c(torch.Tensor.contiguous, c(torch.stack, Rs, 1))  # [NH, G, DH, DH]
    b_consts = [u.h.const if u.h_const else None for u in units]
    if all(k is None for k in b_consts):
        b = c(torch.zeros, nh, G, dh, dtype=an.dtype, device=an.device)  # [NH, G, DH]
    else:
        bs = [c(torch.zeros, nh, dh, dtype=an.dtype, device=an.device) if k is None
              else c(torch.reshape, an.rows(k, None), (nh, dh)) for k in b_consts]
        b = c(torch.stack, bs, 1)  # [NH, G, DH]
    an.ext.output((gx, R, b))
    an.ext.eliminate_dead_code()
    # the ext placeholders after x_all are the step's leaves, in the template's order
    leaf_inputs = [t.inputs[t.n_states + 1 + k] for k in range(len(an.leaves))]
    return Derived(cell, nh, dh, h_slot, order, an.ext, leaf_inputs)


def _stacked_rows(an: Analysis, terms: List[Term], width) -> Node:
    """The rows of several terms one after the other: [sum numel(idx), width] (or [sum])."""
    bases = {id(t.base) for t in terms}
    if len(bases) == 1 and terms[0].base is not None:
        idx = torch.cat([t.idx.flatten() for t in terms])
        if _affine._identity(idx, terms[0].rows):
            return terms[0].base
    return an.call(torch.cat, [an.rows(t, width) for t in terms], 0)


def _columns(an: Analysis, x2: Node, idx: torch.Tensor, width: int) -> Node:
    n = idx.numel()
    start = int(idx[0]) if n else 0
    if bool((idx == torch.arange(start, start + n)).all()):
        return x2 if start == 0 and n == width else an.call(torch.narrow, x2, 2, start, n)
    index = an.call(torch.tensor, idx.tolist(), dtype=torch.int64, device=an.device)
    return an.call(torch.index_select, x2, 2, index)


def prove(d: Derived, t: Template, seeds: Sequence[int] = (1, 2)) -> None:
    """Evaluate the extraction + the registry's step against the user's step; Refused if not equal."""
    cell = CELLS[d.cell]
    ext = retarget(d.ext, torch.float64, "cpu")
    S = t.n_states
    for seed in seeds:
        draw = random_inputs(t, seed)
        want = t.gm(*draw)
        x = draw[S]
        B = x.shape[0]
        gx, R, b = ext(x.unsqueeze(0), *draw[S + 1:])
        states = tuple(draw[k].reshape(B, d.heads, d.head_dim) for k in d.state_of_cell)
        rhb = torch.einsum("ngij,bnj->bngi", R, states[0]) + b  # [B, NH, G, DH]
        new = cell.step(gx[0], rhb, states)
        if not _matches(new, want, d.state_of_cell):
            raise Refused(f"the extracted step does not match the reference step of cell {d.cell!r} "
                          f"on random float64 inputs (seed {seed})")
