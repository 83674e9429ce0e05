"""Affine analysis of one loop step: which values are `x_t W^T + h R^T + c`, and what W, R, c are.

Every spelling of a linear map is brought to one form: `@`, `torch.matmul`, `mm`, `bmm`,
`F.linear`, `addmm` and `einsum` are einsums; `+`, `-`, `torch.add/sub`, scalar `*` and `/` are
sums of terms; every view, transpose, `chunk`, `split`, `unbind`, slice or `select` of a feature
axis is a re-indexing of rows. An affine value of shape [..B..] (batch axis `bax`) is

    V[b, f] = sum_src  M_src[idx_src[f], :] . src[b, :]  +  c[idx_c[f]]       f: feature index

with M_src [K, IN_src] a node of the extraction graph (`None`: the identity) and idx an integer
tensor of the feature shape, known at compile time. Re-indexings run the user's own op on an
integer tensor of positions and read back where every element came from, so one rule covers all
view and slicing spellings. Values that are not affine in (x, h) are opaque; the affine values
they consume are the frontier: the cell's pre-activations (and h itself where the cell uses it).

The extraction graph computes the M's and c's from the loop-invariant inputs (weights); it is
evaluated on random inputs for the proof and copied into the user's graph for the rewrite.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import operator
import string
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

Node = torch.fx.Node


@dataclasses.dataclass
class Term:
    base: Optional[Node]  # [K, IN] (coefficient) or [K] (constant); None: identity, K = IN
    idx: torch.Tensor  # int64 [*feat]: row of `base` for every feature
    rows: int  # K


@dataclasses.dataclass
class Aff:
    shape: Tuple[int, ...]
    bax: int
    terms: Dict[str, Term]
    const: Optional[Term]

    @property
    def feat(self) -> Tuple[int, ...]:
        return self.shape[: self.bax] + self.shape[self.bax + 1:]

    @property
    def numel_feat(self) -> int:
        return math.prod(self.feat)


class Inv:
    """A loop-invariant value: a node of the extraction graph."""

    def __init__(self, node: Node):
        self.node = node


OPAQUE = "opaque"

_MATMUL = {operator.matmul, torch.matmul, "matmul", torch.mm, "mm", torch.bmm, "bmm"}
_LINEAR = {F.linear, torch._C._nn.linear}
_ADD = {operator.add: 1, torch.add: 1, "add": 1, operator.sub: -1, torch.sub: -1, "sub": -1}
_MUL = {operator.mul, torch.mul, "mul"}
_DIV = {operator.truediv, torch.div, "div"}
_NEG = {operator.neg, torch.neg, "neg"}
_VIEW_METHODS = {
    "view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze", "flatten", "movedim",
    "moveaxis", "contiguous", "clone", "chunk", "split", "unbind", "select", "narrow", "expand",
    "swapaxes", "unflatten", "__getitem__",
}
_VIEW_FUNCS = {
    torch.reshape, torch.permute, torch.transpose, torch.t, torch.unsqueeze, torch.squeeze,
    torch.flatten, torch.movedim, torch.moveaxis, torch.chunk, torch.split, torch.unbind,
    torch.select, torch.narrow, operator.getitem, torch.clone, torch.swapaxes, torch.unflatten,
}


def shape_of(node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _identity(idx: torch.Tensor, rows: int) -> bool:
    flat = idx.flatten()
    return flat.numel() == rows and bool((flat == torch.arange(rows)).all())


class Analysis:
    """Abstract interpretation of a step graph (placeholders: sources, opaque states, leaves)."""

    def __init__(self, step: torch.fx.Graph, sources: Dict[Node, str], opaque: Sequence[Node],
                 dtype: torch.dtype, device: torch.device):
        self.ext = torch.fx.Graph()
        self.x_all = self.ext.placeholder("x_all")  # [T, B, *xs], bound at emission
        self.dtype, self.device = dtype, device
        self.env: Dict[Node, Any] = {}
        self.leaves: Dict[Node, Node] = {}  # step placeholder -> ext placeholder
        self.frontier: List[Node] = []
        self.width: Dict[str, int] = {}
        self._eye: Dict[int, Node] = {}
        self.outputs: List[Any] = []
        for node in step.nodes:
            if node.op == "placeholder":
                if node in sources:
                    shape = shape_of(node)
                    feat = shape[1:]
                    self.width[sources[node]] = math.prod(feat)
                    idx = torch.arange(math.prod(feat)).view(feat)
                    self.env[node] = Aff(shape, 0, {sources[node]: Term(None, idx, math.prod(feat))}, None)
                elif node in opaque:
                    self.env[node] = OPAQUE
                else:
                    p = self.ext.placeholder(node.name)
                    self.leaves[node] = p
                    self.env[node] = Inv(p)
            elif node.op == "output":
                for a in tree_flatten(node.args)[0]:
                    if isinstance(a, Node) and isinstance(self.env.get(a), Aff):
                        self._front(a)
                self.outputs = [self.env.get(a) for a in tree_flatten(node.args)[0]]
            else:
                self.env[node] = self._transfer(node)

    # ---- emission helpers ------------------------------------------------------------------

    def call(self, target, *args, **kwargs) -> Node:
        return self.ext.call_function(target, args, kwargs)

    def eye(self, n: int) -> Node:
        if n not in self._eye:
            self._eye[n] = self.call(torch.eye, n, dtype=self.dtype, device=self.device)
        return self._eye[n]

    def rows(self, term: Term, width: Optional[int]) -> Node:
        """The selected rows as one node: [numel(idx), width] (or [numel(idx)] for constants)."""
        base = term.base if term.base is not None else self.eye(width)
        flat = term.idx.flatten()
        n = flat.numel()
        start = int(flat[0]) if n else 0
        if n and bool((flat == torch.arange(start, start + n)).all()):
            if start == 0 and n == term.rows:
                return base
            return self.call(torch.narrow, base, 0, start, n)
        index = self.call(torch.tensor, flat.tolist(), dtype=torch.int64, device=self.device)
        return self.call(torch.index_select, base, 0, index)

    def _front(self, node: Node) -> None:
        if node not in self.frontier:
            self.frontier.append(node)

    # ---- transfer functions ----------------------------------------------------------------

    def _transfer(self, node: Node):
        args = tree_flatten((node.args, node.kwargs))[0]
        values = [self.env.get(a) if isinstance(a, Node) else a for a in args]
        if node.op not in ("call_function", "call_method"):
            return self._opaque(node)
        if all(not isinstance(a, Node) or isinstance(self.env.get(a), Inv) for a in args):
            return Inv(self.ext.node_copy(node, lambda a: self.env[a].node))
        if any(v is OPAQUE for v in values):
            return self._opaque(node)
        out = self._affine(node)
        return self._opaque(node) if out is None else out

    def _opaque(self, node: Node):
        for a in tree_flatten((node.args, node.kwargs))[0]:
            if isinstance(a, Node) and isinstance(self.env.get(a), Aff):
                self._front(a)
        return OPAQUE

    def _affine(self, node: Node):
        t = node.target
        if t in _MATMUL or t in _LINEAR or t is torch.addmm or t is torch.einsum:
            return self._einsum_node(node)
        if t in _ADD:
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
                return None
            return self._add(node, node.args[0], node.args[1], _ADD[t])
        if t in _MUL or t in _DIV:
            a, b = node.args[:2]
            if len(node.args) != 2 or node.kwargs:
                return None
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                return self._scale(self.env[a], b if t in _MUL else 1.0 / b)
            if t in _MUL and isinstance(a, (int, float)) and not isinstance(a, bool):
                return self._scale(self.env[b], a)
            return None
        if t in _NEG:
            return self._scale(self.env[node.args[0]], -1.0)
        if (node.op == "call_method" and t in _VIEW_METHODS) or (node.op == "call_function" and t in _VIEW_FUNCS) \
                or (t is builtins.getattr and node.args[1] in ("T", "mT")):
            return self._view(node)
        return None

    def _value_of(self, a):
        return self.env[a] if isinstance(a, Node) else a

    def _view(self, node: Node):
        head, rest = node.args[0], node.args[1:]
        v = self.env.get(head) if isinstance(head, Node) else None
        if isinstance(v, list) and node.target is operator.getitem and isinstance(rest[0], int):
            return v[rest[0]]
        if not isinstance(v, Aff):
            return None
        if any(isinstance(a, Node) for a in tree_flatten((rest, node.kwargs))[0]):
            return None
        pos = torch.arange(math.prod(v.shape)).view(v.shape)
        if node.target is builtins.getattr:
            out = getattr(pos, rest[0])
        elif node.op == "call_method":
            out = getattr(pos, node.target)(*rest, **node.kwargs)
        else:
            out = node.target(pos, *rest, **node.kwargs)
        if isinstance(out, torch.Tensor):
            return self._decode(v, out)
        outs = [self._decode(v, o) for o in out]
        return None if any(o is None for o in outs) else outs

    @staticmethod
    def _decode(v: Aff, moved: torch.Tensor) -> Optional[Aff]:
        B = v.shape[v.bax]
        sb = math.prod(v.shape[v.bax + 1:])
        ar = torch.arange(math.prod(v.shape))
        batch_of = (ar // sb) % B
        feat_of = (ar // (sb * B)) * sb + ar % sb
        bp, fp = batch_of[moved], feat_of[moved]
        for j, size in enumerate(moved.shape):
            if size != B:
                continue
            view = [1] * moved.dim()
            view[j] = B
            if bool((bp == torch.arange(B).view(view)).all()) and bool((fp == fp.narrow(j, 0, 1)).all()):
                fn = fp.select(j, 0)
                terms = {s: Term(t.base, t.idx.flatten()[fn], t.rows) for s, t in v.terms.items()}
                const = None if v.const is None else Term(v.const.base, v.const.idx.flatten()[fn], v.const.rows)
                return Aff(tuple(moved.shape), j, terms, const)
        return None

    def _scale(self, v, s: float):
        if not isinstance(v, Aff):
            return None
        terms = {k: self._dense_term(self.call(operator.mul, self.rows(t, self.width[k]), s), t.idx.numel(), v.feat)
                 for k, t in v.terms.items()}
        const = None
        if v.const is not None:
            const = self._dense_term(self.call(operator.mul, self.rows(v.const, None), s), v.numel_feat, v.feat)
        return Aff(v.shape, v.bax, terms, const)

    @staticmethod
    def _dense_term(node: Node, rows: int, feat) -> Term:
        return Term(node, torch.arange(rows).view(feat), rows)

    def _combine(self, t1: Optional[Term], t2: Optional[Term], sign: int, width, feat) -> Optional[Term]:
        if t2 is None:
            return t1
        if t1 is None and sign == 1:
            return t2
        r2 = self.rows(t2, width)
        if t1 is None:
            return self._dense_term(self.call(operator.neg, r2), t2.idx.numel(), feat)
        op = operator.add if sign == 1 else operator.sub
        return self._dense_term(self.call(op, self.rows(t1, width), r2), t1.idx.numel(), feat)

    def _add(self, node: Node, a, b, sign: int):
        return self._add_vals(shape_of(node), self._value_of(a), self._value_of(b),
                              shape_of(a), shape_of(b), sign)

    def _add_vals(self, out_shape, va, vb, ashape, bshape, sign: int):
        if not isinstance(va, Aff):  # c - V = -V + c ; c + V = V + c
            if sign == -1:
                vb = self._scale(vb, -1.0)
                if vb is None:
                    return None
            va, vb, sign, bshape = vb, va, 1, ashape
        if out_shape != va.shape:
            return None
        feat = va.feat
        if isinstance(vb, Aff):
            if vb.shape != va.shape or vb.bax != va.bax:
                return None
            terms = dict(va.terms)
            for k, t in vb.terms.items():
                terms[k] = self._combine(va.terms.get(k), t, sign, self.width[k], feat)
            const = self._combine(va.const, vb.const, sign, None, feat)
            return Aff(va.shape, va.bax, terms, const)
        if isinstance(vb, Inv):
            ushape = bshape
            if ushape is None or len(ushape) > len(va.shape):
                return None
            lead = len(va.shape) - len(ushape)
            if va.bax >= lead and ushape[va.bax - lead] != 1:
                return None  # a per-batch-row constant cannot be a bias
            target = list(va.shape)
            target[va.bax] = 1
            u = self.call(torch.broadcast_to, vb.node, tuple(target))
            u = self.call(torch.reshape, u, (va.numel_feat,))
        elif isinstance(vb, (int, float)) and not isinstance(vb, bool):
            u = self.call(torch.full, (va.numel_feat,), float(vb), dtype=self.dtype, device=self.device)
        else:
            return None
        const = self._combine(va.const, self._dense_term(u, va.numel_feat, feat), sign, None, feat)
        return Aff(va.shape, va.bax, dict(va.terms), const)

    # ---- the linear maps -------------------------------------------------------------------

    def _einsum_node(self, node: Node):
        t, args = node.target, node.args
        if t is torch.einsum:
            spec, ops = args[0], list(args[1:])
            if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
                ops = list(ops[0])
            return self._einsum(node, spec.replace(" ", ""), ops, None)
        if t in _LINEAR:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else node.kwargs.get("bias")
            rx = len(shape_of(x))
            batch = string.ascii_lowercase[: rx - 1]
            out = self._einsum(None, f"{batch}K,NK->{batch}N", [x, w], shape_of(node))
            return out if b is None or out is None else self._add_value(node, out, b)
        if t is torch.addmm:
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                return None
            bias, a, w = args[:3]
            out = self._einsum(None, "MK,KN->MN", [a, w], shape_of(node))
            return None if out is None else self._add_value(node, out, bias)
        a, b = args[:2]
        ra, rb = len(shape_of(a)), len(shape_of(b))
        if rb == 1:
            batch = string.ascii_lowercase[: ra - 1]
            spec = f"{batch}K,K->{batch}"
        elif ra == 1:
            batch = string.ascii_lowercase[: rb - 2]
            spec = f"K,{batch}KN->{batch}N"
        elif rb == 2:
            batch = string.ascii_lowercase[: ra - 2]
            spec = f"{batch}MK,KN->{batch}MN"
        elif ra == 2:
            batch = string.ascii_lowercase[: rb - 2]
            spec = f"MK,{batch}KN->{batch}MN"
        elif ra == rb and shape_of(a)[:-2] == shape_of(b)[:-2]:
            batch = string.ascii_lowercase[: ra - 2]
            spec = f"{batch}MK,{batch}KN->{batch}MN"
        else:
            return None
        return self._einsum(node, spec, [a, b], None)

    def _add_value(self, node: Node, v: Aff, bias):
        """v + bias, where bias is an invariant node (the bias of linear/addmm)."""
        return self._add_vals(v.shape, v, self._value_of(bias), v.shape, shape_of(bias), 1)

    def _einsum(self, node: Optional[Node], spec: str, ops: List[Any], out_shape):
        if "..." in spec or "->" not in spec:
            return None
        ins, out = spec.split("->")
        ins = ins.split(",")
        vals = [self._value_of(o) for o in ops]
        affs = [k for k, v in enumerate(vals) if isinstance(v, Aff)]
        if len(ins) != len(ops) or len(affs) != 1 or not all(isinstance(v, Inv) for k, v in enumerate(vals) if k != affs[0]):
            return None
        vi = affs[0]
        v, lv = vals[vi], ins[vi]
        beta = lv[v.bax]
        others = [ins[k] for k in range(len(ops)) if k != vi]
        other_nodes = [vals[k].node for k in range(len(ops)) if k != vi]
        if lv.count(beta) != 1 or beta not in out or any(beta in o for o in others):
            return None
        out_shape = out_shape or shape_of(node)
        if out_shape is None:
            return None
        used = set(spec)
        iota = next(c for c in string.ascii_letters if c not in used)
        lv_nb, out_nb = lv.replace(beta, ""), out.replace(beta, "")
        new_bax = out.index(beta)
        out_feat = out_shape[:new_bax] + out_shape[new_bax + 1:]
        n_out = math.prod(out_feat)
        terms = {}
        for src, term in v.terms.items():
            width = self.width[src]
            fast = (term.base is None and _identity(term.idx, width) and len(set(lv_nb)) == len(lv_nb)
                    and not (set(lv_nb) & set(out_nb)) and all(any(c in o for o in others) for c in lv_nb))
            if fast:
                coef = self.call(torch.einsum, ",".join(others) + "->" + out_nb + lv_nb, *other_nodes)
            else:
                dense = self.call(torch.reshape, self.rows(term, width), tuple(v.feat) + (width,))
                coef = self.call(torch.einsum, ",".join([lv_nb + iota] + others) + "->" + out_nb + iota,
                                 dense, *other_nodes)
            coef = self.call(torch.reshape, coef, (n_out, width))
            terms[src] = self._dense_term(coef, n_out, out_feat)
        const = None
        if v.const is not None:
            dense = self.call(torch.reshape, self.rows(v.const, None), tuple(v.feat))
            c = self.call(torch.einsum, ",".join([lv_nb] + others) + "->" + out_nb, dense, *other_nodes)
            const = self._dense_term(self.call(torch.reshape, c, (n_out,)), n_out, out_feat)
        return Aff(tuple(out_shape), new_bax, terms, const)
