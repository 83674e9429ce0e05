"""Find the repeated step of an unrolled loop: windows of isomorphic subgraphs along a state chain.

Dynamo emits the nodes of a Python loop in execution order, one loop body after the other, so an
unrolled recurrence is a run of K windows of P nodes whose canonical labels repeat with period P:

    prologue | W_0 = [x_0, mm, add, chunk, ..., h_1] | W_1 = [x_1, mm, ..., h_2] | ... | epilogue

`find_regions` finds such runs (O(n) per candidate period). `verify` checks, position by
position, that the map W_k[i] -> W_{k+1}[i] is an isomorphism of the labelled dependency graph
that carries each edge into W_{k-1} (the state edges) to the same edge one window later, and
classifies every argument: inside the window, state from the window before, a loop-invariant
node (weights), or a per-step input (x[:, t], unbind(x)[t]). networkx splits the positions into
the independent recurrences that share one loop body (a hand-written bidirectional layer) and
checks the first two windows with VF2. Everything is linear in the number of nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import networkx as nx
import torch
import torch.fx

from .canonicalize import INDEXING, _is_weight as is_weight

Node = torch.fx.Node

_INDEX_TARGETS = INDEXING


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))


def _abstract(a, indexing: bool, named):
    if isinstance(a, Node):
        return a.name if a in named else "N"
    if isinstance(a, (list, tuple)):
        return tuple(_abstract(x, indexing, named) for x in a)
    if isinstance(a, slice):
        return ("slice", _abstract(a.start, indexing, named), _abstract(a.stop, indexing, named), a.step)
    if indexing and isinstance(a, int) and not isinstance(a, bool):
        return "i"
    if isinstance(a, dict):
        return tuple(sorted((k, _abstract(v, indexing, named)) for k, v in a.items()))
    return repr(a)


def label(node: Node, named=frozenset()) -> Tuple:
    """One spelling per op for period finding; index ints are abstracted (they carry t).
    Arguments in `named` (weights) are told apart by name, the others are all alike."""
    indexing = node.target in _INDEX_TARGETS
    return (node.op, _name(node.target), _abstract(node.args, indexing, named),
            _abstract(node.kwargs, indexing, named))


def weight_nodes(graph: torch.fx.Graph) -> set:
    """Parameters, get_attr, and what is computed from them alone (W.T, b_ih + b_hh)."""
    named = set()
    for n in graph.nodes:
        if is_weight(n) or (
            n.op in ("call_function", "call_method") and n.all_input_nodes
            and all(a in named for a in n.all_input_nodes)
        ):
            named.add(n)
    return named


@dataclasses.dataclass
class Region:
    start: int  # index of W_0[0] in the node list
    period: int
    count: int  # K windows


def _runs(codes: Sequence[int], period: int) -> List[Tuple[int, int]]:
    """Maximal [a, b) with codes[i] == codes[i + period] for a <= i < b - period, b - a >= 2 period."""
    n = len(codes)
    runs, i = [], 0
    while i + period < n:
        if codes[i] != codes[i + period] or codes[i] < 0:
            i += 1
            continue
        j = i
        while j + period < n and codes[j] == codes[j + period] and codes[j] >= 0:
            j += 1
        if j + period - i >= 2 * period:
            runs.append((i, j + period))
        i = j + 1
    return runs


def find_regions(codes: Sequence[int], nodes: Sequence[Node], max_periods: int = 6) -> List[Region]:
    """Candidate runs, best (most nodes covered, then smallest period) first; codes < 0 never match."""
    last: Dict[int, int] = {}
    gaps: collections.Counter = collections.Counter()
    for i, c in enumerate(codes):
        if c < 0:
            continue
        if c in last:
            gaps[i - last[c]] += 1
        last[c] = i
    # score every gap by how many positions repeat after it (vectorised), keep the best few
    code_t = torch.tensor(list(codes), dtype=torch.int64)
    valid = code_t >= 0
    scored = []
    for p in gaps:
        if p >= len(codes):
            continue
        same = (code_t[:-p] == code_t[p:]) & valid[:-p]
        scored.append((-int(same.sum()), p))
    candidates = [p for _, p in sorted(scored)[:max_periods]]
    regions = []
    for p in candidates:
        for a, b in _runs(codes, p):
            regions.append(best_phase(nodes, a, b, p))
    regions = [r for r in regions if r.count >= 2]
    regions.sort(key=lambda r: (-(r.count * r.period), r.period, r.start))
    return regions


def best_phase(nodes: Sequence[Node], a: int, b: int, period: int) -> Region:
    """Where the loop body starts inside the periodic run [a, b): the phase that carries the
    fewest numbers from one window to the next (the states), then one whose first node reads
    nothing from the window before (the top of the loop body), then the most windows."""
    index = {nodes[i]: i for i in range(a, b)}
    first = a + period if b - a >= 3 * period else a
    crossing = [0] * (period + 1)  # difference array over phases 0..P-1
    always = 0
    for iu in range(first, first + period):
        consumers = [index[u] for u in nodes[iu].users if u in index and index[u] > iu]
        if not consumers:
            continue
        iv = max(consumers)
        d = iv - iu
        w = _numel(nodes[iu])
        if d >= period:
            always += w
            continue
        r = (iv - a) % period  # phases j = r, r-1, ..., r-d+1 (mod P) put a boundary in (iu, iv]
        lo = r - d + 1
        if lo >= 0:
            crossing[lo] += w
            crossing[r + 1] -= w
        else:
            crossing[0] += w
            crossing[r + 1] -= w
            crossing[period + lo] += w
            crossing[period] -= w
    best, acc = None, 0
    for j in range(period):
        acc += crossing[j]
        top = first + ((j - (first - a)) % period)  # a window start in the sampled period
        reads_before = 0
        if top + period < b:
            head = nodes[top + period]
            reads_before = int(any(top <= index.get(x, -1) < top + period for x in head.all_input_nodes))
        key = (acc + always, reads_before, -((b - a - j) // period), j)
        if best is None or key < best[0]:
            best = (key, j)
    j = best[1]
    return Region(a + j, period, (b - a - j) // period)


def _numel(node: Node) -> int:
    v = node.meta.get("example_value")
    vals = v if isinstance(v, (tuple, list)) else [v]
    total = 0
    for x in vals:
        try:
            n = x.numel() if isinstance(x, torch.Tensor) else 1
            total += int(n.node.hint if isinstance(n, torch.SymInt) else n)  # no guard on sizes
        except Exception:  # noqa: BLE001  (symbolic sizes: count the value once)
            total += 1
    return total


# ---- verification and classification ------------------------------------------------------


@dataclasses.dataclass
class Slot:
    """Where argument leaf `leaf` of window position `pos` comes from."""
    pos: int
    leaf: int
    kind: str  # "in" (same window), "state" (window before), "inv" (same outside node), "step"
    ref: Any  # position (in/state), outside node (inv), per-window outside nodes (step)


@dataclasses.dataclass
class Windows:
    windows: List[List[Node]]  # K lists of P nodes
    slots: List[Slot]
    init: Dict[int, Node]  # state position -> the node W_0 reads instead (the initial state)
    varying_consts: Dict[int, List[Any]]  # position -> per-window argument leaves (index ints)


def _flatten(a, out: List[Any]) -> None:
    if isinstance(a, (list, tuple)):
        for x in a:
            _flatten(x, out)
    elif isinstance(a, dict):
        for x in a.values():
            _flatten(x, out)
    else:
        out.append(a)


def _leaves(node: Node) -> List[Any]:
    """The argument leaves of `node` (args then kwargs), like pytree but ~10x faster."""
    out: List[Any] = []
    _flatten(node.args, out)
    _flatten(node.kwargs, out)
    return out


def verify(nodes: Sequence[Node], region: Region) -> Optional[Windows]:
    """Check the windows of `region` position by position; None if fewer than 2 agree.

    A first window that differs (the first iteration reads a constant initial state, say) is
    left out: the loop is then rerolled from its second iteration on."""
    win = _verify(nodes, region)
    if win is None and region.count >= 3:
        win = _verify(nodes, Region(region.start + region.period, region.period, region.count - 1))
    return win


def _verify(nodes: Sequence[Node], region: Region) -> Optional[Windows]:
    P = region.period
    windows = [list(nodes[region.start + k * P: region.start + (k + 1) * P]) for k in range(region.count)]
    where: Dict[Node, Tuple[int, int]] = {}
    for k, w in enumerate(windows):
        for i, n in enumerate(w):
            where[n] = (k, i)
    if len(windows) < 2:
        return None
    slots: List[Slot] = []
    ref_leaves = [_leaves(n) for n in windows[1]]
    init: Dict[int, Node] = {}
    varying: Dict[int, List[Any]] = {}
    for i, n in enumerate(windows[1]):
        for j, a in enumerate(ref_leaves[i]):
            if isinstance(a, Node):
                k, q = where.get(a, (None, None))
                if k == 1:
                    slots.append(Slot(i, j, "in", q))
                elif k == 0:
                    slots.append(Slot(i, j, "state", q))
                elif k is None:
                    slots.append(Slot(i, j, "inv", a))
                else:
                    return None
    good = len(windows)
    for k, w in enumerate(windows):
        if k == 1:
            continue
        ok = True
        leaves = [_leaves(n) for n in w]
        if any(len(l) != len(r) for l, r in zip(leaves, ref_leaves)):
            ok = False
        for s in slots if ok else ():
            a = leaves[s.pos][s.leaf]
            if not isinstance(a, Node):
                ok = False
            elif s.kind == "in":
                ok = where.get(a) == (k, s.ref)
            elif s.kind == "state":
                if k == 0:
                    ok = where.get(a) is None and init.setdefault(s.ref, a) is a
                else:
                    ok = where.get(a) == (k - 1, s.ref)
            elif s.kind == "step":
                ok = where.get(a) is None
            elif s.kind == "inv":
                if a is not s.ref:
                    ok = where.get(a) is None
                    if ok:
                        s.kind, s.ref = "step", None
            if not ok:
                break
        for i in range(len(w)) if ok else ():
            for j, (a, r) in enumerate(zip(leaves[i], ref_leaves[i])):
                if isinstance(a, Node) or isinstance(r, Node):
                    continue
                if a != r:
                    if w[i].target in _INDEX_TARGETS and isinstance(a, int):
                        varying.setdefault(i, [])
                    else:
                        ok = False
        if not ok:
            if k <= 1:
                return None
            good = k
            break
    windows = windows[:good]
    if len(windows) < 2:
        return None
    for s in slots:
        if s.kind == "step":
            s.ref = [_leaves(w[s.pos])[s.leaf] for w in windows]
    for i in varying:
        varying[i] = [[x for x in _leaves(w[i]) if not isinstance(x, Node)] for w in windows]
    return Windows(windows, slots, init, varying)


def components(win: Windows) -> List[List[int]]:
    """Positions of each independent recurrence in the loop body (those with a state edge)."""
    P = len(win.windows[0])
    g = nx.Graph()
    g.add_nodes_from(range(P))
    for s in win.slots:
        if s.kind in ("in", "state"):
            g.add_edge(s.pos, s.ref)
    with_state = {s.pos for s in win.slots if s.kind == "state"}
    out = []
    for comp in nx.connected_components(g):
        if comp & with_state:
            out.append(sorted(comp))
    out.sort()
    return out


def isomorphic_windows(win: Windows, positions: Sequence[int]) -> bool:
    """VF2 (networkx) on windows 0 and 1 of one recurrence, node labels and state edges included."""
    def graph(k: int) -> nx.DiGraph:
        g = nx.DiGraph()
        w = win.windows[k]
        for i in positions:
            g.add_node(i, label=label(w[i]))
        for s in win.slots:
            if s.pos in g and s.kind == "in":
                g.add_edge(s.ref, s.pos)
        return g

    return nx.is_isomorphic(graph(0), graph(1), node_match=lambda a, b: a["label"] == b["label"])


def state_positions(win: Windows, positions: Sequence[int]) -> List[int]:
    pos = set(positions)
    return sorted({s.ref for s in win.slots if s.kind == "state" and s.pos in pos})


def core_positions(win: Windows, positions: Sequence[int]) -> List[int]:
    """Positions that the state outputs depend on within one window (the step proper)."""
    pos = set(positions)
    preds: Dict[int, List[int]] = collections.defaultdict(list)
    for s in win.slots:
        if s.kind == "in" and s.pos in pos:
            preds[s.pos].append(s.ref)
    core, stack = set(), list(state_positions(win, positions))
    while stack:
        p = stack.pop()
        if p in core:
            continue
        core.add(p)
        stack.extend(preds[p])
    return sorted(core)


def time_slice(node: Node) -> Optional[Tuple[Node, int, int]]:
    """(base, dim, index) if `node` is x[t] / x[:, t] / x.select(d, t) / x.unbind(d)[t]."""
    if node.op not in ("call_function", "call_method"):
        return None
    args = node.args
    if node.target is operator.getitem and len(args) == 2 and isinstance(args[0], Node):
        base, idx = args
        if base.op in ("call_method", "call_function") and base.target in ("unbind", torch.unbind):
            if isinstance(idx, int):
                dim = base.args[1] if len(base.args) > 1 else base.kwargs.get("dim", 0)
                return base.args[0], dim, idx
            return None
        if isinstance(idx, int) and not isinstance(idx, bool):
            return base, 0, idx
        if isinstance(idx, tuple):
            ints = [k for k, e in enumerate(idx) if isinstance(e, int) and not isinstance(e, bool)]
            full = all(e == slice(None) for k, e in enumerate(idx) if k not in ints)
            if len(ints) == 1 and full:
                return base, ints[0], idx[ints[0]]
        return None
    if node.target in ("select", torch.select) and len(args) == 3 and isinstance(args[1], int):
        return args[0], args[1], args[2]
    return None
