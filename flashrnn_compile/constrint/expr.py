"""Integer expressions of the constraint language: the tree, exact values and interval bounds.

An expression is a tree of `Const`, `Var` (a decision variable, by index), `Neg`, `Bin` (+ - * / %
with Python's floor semantics) and `Call` (min, max, ceil(a, b) = ceiling of a / b). Division or
remainder by zero is *undefined*: `value` raises `Undefined`, and a constraint containing an
undefined value does not hold.

Intervals are pairs `(lo, hi)` of ints (`None` when empty). `bounds` over-approximates the set of
values an expression can take when each variable lies in its interval (sound, not always tight);
`narrow` is the backward half of HC4 revise: given that a node's value must lie in an interval, it
shrinks the intervals of the variables below it, never removing a value that could satisfy it.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Interval = Optional[Tuple[int, int]]


class Undefined(ArithmeticError):
    """Division or remainder by zero."""


def floordiv(a: int, b: int) -> int:
    if b == 0:
        raise Undefined("division by zero")
    return a // b


def mod(a: int, b: int) -> int:
    if b == 0:
        raise Undefined("remainder by zero")
    return a % b


def ceildiv(a: int, b: int) -> int:
    if b == 0:
        raise Undefined("division by zero")
    return -((-a) // b)


_UIDS = itertools.count()


class Expr:
    """A node. `uid` keys the interval memos: unique for the life of the process (an id() could
    be reused by a node created later and read a stale interval)."""

    __slots__ = ("uid",)

    def __new__(cls, *args, **kwargs):
        node = object.__new__(cls)
        node.uid = next(_UIDS)
        return node

    def value(self, x: Sequence[int]) -> int:  # exact value; x[i] is the value of Var(i)
        raise NotImplementedError

    def bounds(self, box: Sequence[Tuple[int, int]], memo: Dict[int, Interval]) -> Interval:
        raise NotImplementedError

    def narrow(self, iv: Tuple[int, int], box: List[Tuple[int, int]], memo: Dict[int, Interval]) -> bool:
        """Restrict this node to `iv`; shrink `box`. False when that leaves nothing."""
        raise NotImplementedError

    def variables(self) -> frozenset:
        raise NotImplementedError


def _meet(a: Interval, b: Interval) -> Interval:
    if a is None or b is None:
        return None
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def _enter(node, iv, memo):
    """Record that `node` must lie in iv (meet with what is known); None when empty."""
    cur = memo.get(node.uid)
    n = iv if cur is None else _meet(cur, iv)
    if n is not None:
        memo[node.uid] = n
    return n


def _cached(node: Expr, memo, box) -> Interval:
    key = node.uid
    if key not in memo:
        memo[key] = node.bounds(box, memo)
    return memo[key]


class Const(Expr):
    __slots__ = ("v",)

    def __init__(self, v: int):
        self.v = int(v)

    def value(self, x):
        return self.v

    def bounds(self, box, memo):
        return (self.v, self.v)

    def narrow(self, iv, box, memo):
        return iv[0] <= self.v <= iv[1]

    def variables(self):
        return frozenset()

    def __repr__(self):
        return str(self.v)


class Var(Expr):
    __slots__ = ("i", "name")

    def __init__(self, i: int, name: str):
        self.i, self.name = i, name

    def value(self, x):
        return x[self.i]

    def bounds(self, box, memo):
        return box[self.i]

    def narrow(self, iv, box, memo):
        m = _meet(box[self.i], iv)
        if m is None:
            return False
        box[self.i] = m
        memo[self.uid] = m
        return True

    def variables(self):
        return frozenset((self.i,))

    def __repr__(self):
        return self.name


class Neg(Expr):
    __slots__ = ("a", "_vars")

    def __init__(self, a: Expr):
        self.a = a
        self._vars = a.variables()

    def value(self, x):
        return -self.a.value(x)

    def bounds(self, box, memo):
        a = _cached(self.a, memo, box)
        return None if a is None else (-a[1], -a[0])

    def narrow(self, iv, box, memo):
        iv = _enter(self, iv, memo)
        return iv is not None and self.a.narrow((-iv[1], -iv[0]), box, memo)

    def variables(self):
        return self._vars

    def __repr__(self):
        return f"-({self.a!r})"


def _mul(a, b):
    p = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return (min(p), max(p))


def _nonzero_parts(b):
    """The parts of interval b without 0: a list of sign-constant intervals."""
    parts = []
    if b[0] <= -1:
        parts.append((b[0], min(b[1], -1)))
    if b[1] >= 1:
        parts.append((max(b[0], 1), b[1]))
    return parts


def _div(a, b):
    out = None
    for p in _nonzero_parts(b):
        q = [a[0] // p[0], a[0] // p[1], a[1] // p[0], a[1] // p[1]]
        lo, hi = min(q), max(q)
        out = (lo, hi) if out is None else (min(out[0], lo), max(out[1], hi))
    return out


def _mod(a, b):
    parts = _nonzero_parts(b)
    if not parts:
        return None
    if b[0] == b[1] and a[1] - a[0] < abs(b[0]) and a[0] // b[0] == a[1] // b[0]:
        return (a[0] % b[0], a[1] % b[0])  # one period: exact
    lo, hi = 0, 0
    for p in parts:
        if p[0] > 0:
            hi = max(hi, p[1] - 1)
        else:
            lo = min(lo, p[0] + 1)
    if a[0] >= 0 and b[0] > 0:
        hi = min(hi, a[1])
    return (lo, hi)


def _narrow_div(ea: Expr, eb: Expr, a, b, iv, box, memo) -> bool:
    """Narrow a and b (b > 0) given a // b in iv."""
    # a // b in iv  <=>  iv.lo * b <= a <= (iv.hi + 1) * b - 1
    lo = min(iv[0] * b[0], iv[0] * b[1])
    hi = max((iv[1] + 1) * b[0] - 1, (iv[1] + 1) * b[1] - 1)
    na = _meet(a, (lo, hi))
    if na is None or (na != a and not ea.narrow(na, box, memo)):
        return False
    a = na
    if a[0] >= 0:  # b <= a.hi // iv.lo when iv.lo >= 1;  b > a.lo / (iv.hi + 1) when iv.hi >= 0
        blo, bhi = b
        if iv[0] >= 1:
            bhi = min(bhi, a[1] // iv[0])
        if iv[1] >= 0:
            blo = max(blo, a[0] // (iv[1] + 1) + 1)
        nb = _meet(b, (blo, bhi))
        return nb is not None and (nb == b or eb.narrow(nb, box, memo))
    return True


class Bin(Expr):
    __slots__ = ("op", "a", "b", "_vars")

    def __init__(self, op: str, a: Expr, b: Expr):
        if op not in "+-*/%":
            raise ValueError(f"op: expected one of + - * / %, got {op!r}")
        self.op, self.a, self.b = op, a, b
        self._vars = a.variables() | b.variables()

    def value(self, x):
        a, b = self.a.value(x), self.b.value(x)
        op = self.op
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return floordiv(a, b)
        return mod(a, b)

    def bounds(self, box, memo):
        a = _cached(self.a, memo, box)
        b = _cached(self.b, memo, box)
        if a is None or b is None:
            return None
        op = self.op
        if op == "+":
            return (a[0] + b[0], a[1] + b[1])
        if op == "-":
            return (a[0] - b[1], a[1] - b[0])
        if op == "*":
            return _mul(a, b)
        if op == "/":
            return _div(a, b)
        return _mod(a, b)

    def narrow(self, iv, box, memo):
        iv = _enter(self, iv, memo)
        if iv is None:
            return False
        a = _cached(self.a, memo, box)
        b = _cached(self.b, memo, box)
        if a is None or b is None:
            return False
        op = self.op
        if op == "+":  # a in iv - b, b in iv - a
            na = _meet(a, (iv[0] - b[1], iv[1] - b[0]))
            if na is None or (na != a and not self.a.narrow(na, box, memo)):
                return False
            a = memo.get(self.a.uid, na)
            nb = _meet(b, (iv[0] - a[1], iv[1] - a[0]))
            return nb is not None and (nb == b or self.b.narrow(nb, box, memo))
        if op == "-":  # a in iv + b, b in a - iv
            na = _meet(a, (iv[0] + b[0], iv[1] + b[1]))
            if na is None or (na != a and not self.a.narrow(na, box, memo)):
                return False
            a = memo.get(self.a.uid, na)
            nb = _meet(b, (a[0] - iv[1], a[1] - iv[0]))
            return nb is not None and (nb == b or self.b.narrow(nb, box, memo))
        if op == "*":  # a in iv / b where b keeps one sign (and the same for b)
            for child, other in ((self.a, self.b), (self.b, self.a)):
                o = memo.get(other.uid) or _cached(other, memo, box)
                if o is None:
                    return False
                if o[0] > 0 or o[1] < 0:
                    lo = min(-((-iv[0]) // o[0]), -((-iv[0]) // o[1]), -((-iv[1]) // o[0]), -((-iv[1]) // o[1]))
                    hi = max(iv[0] // o[0], iv[0] // o[1], iv[1] // o[0], iv[1] // o[1])
                    cur = memo.get(child.uid) or _cached(child, memo, box)
                    n = _meet(cur, (lo, hi))
                    if n is None or (n != cur and not child.narrow(n, box, memo)):
                        return False
            return True
        if op == "/" and b[0] > 0:
            return _narrow_div(self.a, self.b, a, b, iv, box, memo)
        return True  # no backward rule: sound to narrow nothing

    def variables(self):
        return self._vars

    def __repr__(self):
        return f"({self.a!r} {self.op} {self.b!r})"


_CALLS: Dict[str, Tuple[int, Callable]] = {
    "min": (-1, min),
    "max": (-1, max),
    "ceil": (2, ceildiv),
}


class Call(Expr):
    __slots__ = ("fn", "args", "_vars", "_neg")

    def __init__(self, fn: str, args: Sequence[Expr]):
        if fn not in _CALLS:
            raise ValueError(f"function: expected one of {sorted(_CALLS)}, got {fn!r}")
        arity = _CALLS[fn][0]
        if (arity >= 0 and len(args) != arity) or len(args) == 0:
            raise ValueError(f"{fn}(): expected {arity if arity >= 0 else 'at least 1'} argument(s), got {len(args)}")
        self.fn, self.args = fn, tuple(args)
        vs = frozenset()
        for a in self.args:
            vs = vs | a.variables()
        self._vars = vs
        # ceil(a, b) narrows through -a; a node that lives as long as this one (memo keys are ids)
        self._neg = Neg(self.args[0]) if fn == "ceil" else None

    def value(self, x):
        return _CALLS[self.fn][1](*(a.value(x) for a in self.args))

    def bounds(self, box, memo):
        ivs = [_cached(a, memo, box) for a in self.args]
        if any(iv is None for iv in ivs):
            return None
        if self.fn == "min":
            return (min(i[0] for i in ivs), min(i[1] for i in ivs))
        if self.fn == "max":
            return (max(i[0] for i in ivs), max(i[1] for i in ivs))
        a, b = ivs  # ceil(a, b) = -((-a) // b)
        q = _div((-a[1], -a[0]), b)
        return None if q is None else (-q[1], -q[0])

    def narrow(self, iv, box, memo):
        iv = _enter(self, iv, memo)
        if iv is None:
            return False
        if self.fn == "min":  # every argument >= iv.lo
            for a in self.args:
                cur = memo.get(a.uid) or _cached(a, memo, box)
                n = _meet(cur, (iv[0], cur[1]))
                if n is None or (n != cur and not a.narrow(n, box, memo)):
                    return False
            return True
        if self.fn == "max":  # every argument <= iv.hi
            for a in self.args:
                cur = memo.get(a.uid) or _cached(a, memo, box)
                n = _meet(cur, (cur[0], iv[1]))
                if n is None or (n != cur and not a.narrow(n, box, memo)):
                    return False
            return True
        a, b = (memo.get(x.uid) or _cached(x, memo, box) for x in self.args)
        if b[0] > 0:  # ceil(a, b) = -((-a) // b): narrow -a // b in -iv
            return _narrow_div(self._neg, self.args[1], (-a[1], -a[0]), b, (-iv[1], -iv[0]), box, memo)
        return True

    def variables(self):
        return self._vars

    def __repr__(self):
        return f"{self.fn}({', '.join(map(repr, self.args))})"


def fold(e: Expr, memo: Optional[Dict[int, Expr]] = None) -> Expr:
    """Constant-fold a tree (subtrees without variables become Const; undefined ones stay).
    `memo` (uid -> folded node) lets shared subtrees be folded once."""
    if isinstance(e, (Const, Var)):
        return e
    memo = {} if memo is None else memo
    done = memo.get(e.uid)
    if done is not None:
        return done
    if isinstance(e, Neg):
        a = fold(e.a, memo)
        n = Const(-a.v) if isinstance(a, Const) else (e if a is e.a else Neg(a))
    else:
        if isinstance(e, Bin):
            a, b = fold(e.a, memo), fold(e.b, memo)
            n = e if (a is e.a and b is e.b) else Bin(e.op, a, b)
        else:
            args = [fold(a, memo) for a in e.args]
            n = e if all(x is y for x, y in zip(args, e.args)) else Call(e.fn, args)
        if not n.variables():
            try:
                n = Const(n.value(()))
            except Undefined:
                pass
    memo[e.uid] = memo[n.uid] = n
    return n


def value_source(e: Expr, fname: str) -> str:
    """Source of `def fname(x)`: `e.value` as straight-line code (shared subtrees computed once)."""
    lines: List[str] = []
    names: Dict[int, str] = {}

    def emit(n: Expr) -> str:
        key = n.uid
        if key in names:
            return names[key]
        if isinstance(n, Const):
            return repr(n.v)
        if isinstance(n, Var):
            s = f"x[{n.i}]"
        elif isinstance(n, Neg):
            s = f"-{emit(n.a)}"
        elif isinstance(n, Bin):
            a, b = emit(n.a), emit(n.b)
            if n.op in "+-*":
                s = f"{a} {n.op} {b}"
            elif isinstance(n.b, Const) and n.b.v != 0:
                s = f"{a} {'//' if n.op == '/' else '%'} {b}"
            else:
                s = f"{'_fd' if n.op == '/' else '_md'}({a}, {b})"
        else:
            args = [emit(a) for a in n.args]
            s = f"_cd({args[0]}, {args[1]})" if n.fn == "ceil" else f"{n.fn}({', '.join(args)})"
        name = f"t{len(lines)}"
        lines.append(f"    {name} = {s}")
        names[key] = name
        return name

    out = emit(e)
    return f"def {fname}(x):\n" + "".join(ln + "\n" for ln in lines) + f"    return {out}\n"


def _ceil_iv(a, b):
    q = _div((-a[1], -a[0]), b)
    return None if q is None else (-q[1], -q[0])


WIDE = (-(1 << 62), 1 << 62)


def bounds_source(roots: Sequence[Expr], fname: str) -> str:
    """Source of `def fname(box)`: the bounds of every node below `roots` -> {node.uid: (lo, hi)}.

    Shared nodes are computed once. A node with no value in the box (a divisor that can only be
    0) gets the widest interval: sound (a superset), and exact evaluation rejects it later."""
    lines: List[str] = []
    names: Dict[int, str] = {}

    def emit(n: Expr) -> Tuple[str, str]:
        key = n.uid
        if key in names:
            k = names[key]
            return f"l{k}", f"h{k}"
        if isinstance(n, Const):
            return repr(n.v), repr(n.v)
        for child in (n.a,) if isinstance(n, Neg) else (n.a, n.b) if isinstance(n, Bin) else n.args if isinstance(n, Call) else ():
            emit(child)  # children first: their names are taken before this node's
        k = str(len(names))
        L, H = f"l{k}", f"h{k}"
        if isinstance(n, Var):
            lines.append(f"{L}, {H} = box[{n.i}]")
        elif isinstance(n, Neg):
            al, ah = emit(n.a)
            lines.append(f"{L}, {H} = -{ah}, -{al}")
        elif isinstance(n, Bin):
            al, ah = emit(n.a)
            bl, bh = emit(n.b)
            c = n.b.v if isinstance(n.b, Const) else None
            if n.op == "+":
                lines.append(f"{L}, {H} = {al} + {bl}, {ah} + {bh}")
            elif n.op == "-":
                lines.append(f"{L}, {H} = {al} - {bh}, {ah} - {bl}")
            elif n.op == "*" and c is not None and c >= 0:
                lines.append(f"{L}, {H} = {al} * {c}, {ah} * {c}")
            elif n.op == "*":
                lines.append(f"_p = ({al} * {bl}, {al} * {bh}, {ah} * {bl}, {ah} * {bh})")
                lines.append(f"{L}, {H} = min(_p), max(_p)")
            elif n.op == "/" and c is not None and c > 0:
                lines.append(f"{L}, {H} = {al} // {c}, {ah} // {c}")
            else:
                fn = "_div" if n.op == "/" else "_mod"
                lines.append(f"{L}, {H} = {fn}(({al}, {ah}), ({bl}, {bh})) or _WIDE")
        else:
            args = [emit(a) for a in n.args]
            if n.fn in ("min", "max"):
                lines.append(f"{L}, {H} = {n.fn}({', '.join(a[0] for a in args)}), {n.fn}({', '.join(a[1] for a in args)})")
            else:
                (al, ah), (bl, bh) = args
                lines.append(f"{L}, {H} = _ceil_iv(({al}, {ah}), ({bl}, {bh})) or _WIDE")
        names[key] = k
        return L, H

    for e in roots:
        emit(e)
    body = "\n".join("    " + ln for ln in lines) or "    pass"
    items = ", ".join(f"{key}: (l{k}, h{k})" for key, k in names.items())
    return f"def {fname}(box):\n{body}\n    return {{{items}}}\n"


def compile_functions(sources: Dict[str, str]) -> Dict[str, Callable]:
    """Compile generated functions (value_source, bounds_source) in one go."""
    scope = {"_fd": floordiv, "_md": mod, "_cd": ceildiv, "_div": _div, "_mod": _mod, "_ceil_iv": _ceil_iv, "_WIDE": WIDE}
    exec(compile("".join(sources.values()), "<constrint>", "exec"), scope)
    return {name: scope[name] for name in sources}
