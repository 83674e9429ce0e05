"""A model with its params bound: variables with finite domains, constraints, objective.

`instantiate(model, params)` resolves every name (params become constants, lets are inlined as
shared subtrees, vars become `Var` leaves), folds constants, evaluates the domains and the
messages. The result is what the solver works on.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .expr import Bin, Call, Const, Expr, Neg, Undefined, Var, bounds_source, compile_functions, fold, value_source
from .lang import Model, ModelError, RawExpr

INF = 1 << 62

# lhs op rhs  <=>  lhs - rhs in TARGET[op]   ('!=' and 'in' are checked by value)
TARGET = {"==": (0, 0), "<=": (-INF, 0), "<": (-INF, -1), ">=": (0, INF), ">": (1, INF), "!=": (-INF, INF)}


class Domain:
    """A finite set of ints: every int in [lo, hi] (vals None) or the sorted tuple vals."""

    __slots__ = ("lo", "hi", "vals")

    def __init__(self, lo: int, hi: int, vals: Optional[Tuple[int, ...]] = None):
        self.lo, self.hi, self.vals = lo, hi, vals

    @staticmethod
    def of(values) -> Optional["Domain"]:
        vals = tuple(sorted(set(values)))
        return Domain(vals[0], vals[-1], vals) if vals else None

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1 if self.vals is None else len(self.vals)

    def values(self):
        return range(self.lo, self.hi + 1) if self.vals is None else self.vals

    def narrow(self, lo: int, hi: int) -> Optional["Domain"]:
        """The part within [lo, hi] (self when unchanged, None when empty)."""
        if lo <= self.lo and hi >= self.hi:
            return self
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        if lo > hi:
            return None
        if self.vals is None:
            return Domain(lo, hi)
        vals = self.vals[bisect.bisect_left(self.vals, lo): bisect.bisect_right(self.vals, hi)]
        return Domain(vals[0], vals[-1], vals) if vals else None

    def __contains__(self, v: int) -> bool:
        if self.vals is None:
            return self.lo <= v <= self.hi
        i = bisect.bisect_left(self.vals, v)
        return i < len(self.vals) and self.vals[i] == v

    def __repr__(self):
        return f"{self.lo}..{self.hi}" if self.vals is None else "{" + ", ".join(map(str, self.vals)) + "}"


@dataclasses.dataclass
class Constraint:
    op: str
    diff: Optional[Expr]  # lhs - rhs, for comparisons
    lhs: Expr
    values: Tuple[int, ...]  # for 'in'
    message: str  # in words, params filled in
    text: str  # as written
    where: str
    vars: frozenset

    _f: Optional[Callable] = None  # exact value of expr (generated once it is used often)
    _calls: int = 0

    by_value: bool = False  # intervals say little about it: %, != or membership (filter values exactly)

    def __post_init__(self):
        self.by_value = self.op in ("!=", "in") or "%" in repr(self.expr)

    @property
    def expr(self) -> Expr:
        return self.lhs if self.op == "in" else self.diff

    def holds(self, x: Sequence[int]) -> bool:
        """Exact truth at a full assignment (undefined values make it false)."""
        if self._f is None:  # walk the tree the first times; generate code once it is used a lot
            self._calls += 1
            if self._calls <= 16:
                return self._check(self.expr.value, x)
            self._f = compile_functions({"f": value_source(self.expr, "f")})["f"]
        return self._check(self._f, x)

    def _check(self, f, x: Sequence[int]) -> bool:
        try:
            if self.op == "in":
                return f(x) in self.values
            d = f(x)
        except Undefined:
            return False
        if self.op == "!=":
            return d != 0
        lo, hi = TARGET[self.op]
        return lo <= d <= hi

    def describe(self) -> str:
        return self.message if self.message == self.text else f"{self.message} [{self.text}]"


@dataclasses.dataclass
class Problem:
    names: List[str]
    domains: List[Optional[Domain]]  # None: the declared domain is empty
    prefer: List[str]
    docs: List[str]
    constraints: List[Constraint]
    objective: List[Expr]
    bounds: Callable  # box -> {node.uid: (lo, hi)} for every node of every constraint and objective
    objective_text: List[str]
    reports: Dict[str, Expr]
    params: Dict[str, int]
    model: Model


class _Resolver:
    def __init__(self, model: Model, params: Dict[str, int]):
        self.model, self.params = model, params
        self.var_index = {v.name: i for i, v in enumerate(model.vars)}
        self.vars = [Var(i, v.name) for i, v in enumerate(model.vars)]
        self.lets: Dict[str, Expr] = {}
        self.active: set = set()
        self.folded: Dict[int, Expr] = {}  # uid -> folded node (shared subtrees folded once)

    def name(self, n: str) -> Expr:
        if n in self.params:
            return Const(self.params[n])
        if n in self.var_index:
            return self.vars[self.var_index[n]]
        if n in self.lets:
            return self.lets[n]
        if n in self.model.lets:
            if n in self.active:
                raise ModelError(f"{self.model.name}: let {n} depends on itself")
            self.active.add(n)
            self.lets[n] = fold(self.expr(self.model.lets[n]), self.folded)
            self.active.discard(n)
            return self.lets[n]
        raise ModelError(f"{self.model.name}: unknown name {n!r}")

    def expr(self, e: RawExpr) -> Expr:
        kind = e[0]
        if kind == "num":
            return Const(e[1])
        if kind == "name":
            return self.name(e[1])
        if kind == "neg":
            return Neg(self.expr(e[1]))
        if kind == "bin":
            return Bin(e[1], self.expr(e[2]), self.expr(e[3]))
        return Call(e[1], [self.expr(a) for a in e[2]])

    def const(self, e: RawExpr, what: str) -> int:
        x = fold(self.expr(e), self.folded)
        if not isinstance(x, Const):
            raise ModelError(f"{what}: expected a value fixed by the params, got {x!r}")
        return x.v


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z_0-9]*)\}")


def instantiate(model: Model, params: Dict[str, int]) -> Problem:
    missing = [p for p in model.params if p not in params]
    if missing:
        raise ValueError(f"params: model {model.name} needs values for {missing}")
    extra = [p for p in params if p not in model.params]
    if extra:
        raise ValueError(f"params: model {model.name} has no param(s) {extra}")
    params = {k: int(v) for k, v in params.items()}
    r = _Resolver(model, params)

    def fill(message: str) -> str:
        def one(m):
            try:
                x = r.name(m.group(1))
            except ModelError:
                return m.group(0)
            return str(x.v) if isinstance(x, Const) else m.group(1)

        return _FIELD.sub(one, message)

    domains: List[Optional[Domain]] = []
    for v in model.vars:
        if v.domain[0] == "set":
            domains.append(Domain.of(r.const(e, f"{v.where}: domain of {v.name}") for e in v.domain[1]))
        else:
            lo = r.const(v.domain[1], f"{v.where}: domain of {v.name}")
            hi = r.const(v.domain[2], f"{v.where}: domain of {v.name}")
            domains.append(Domain(lo, hi) if lo <= hi else None)
    constraints = []
    for q in model.requires:
        lhs = fold(r.expr(q.lhs), r.folded)
        if q.op == "in":
            values = tuple(sorted({r.const(e, f"{q.where}: the set after 'in'") for e in q.rhs}))
            diff, vs = None, lhs.variables()
        else:
            values = ()
            diff = fold(Bin("-", lhs, r.expr(q.rhs)), r.folded)
            vs = diff.variables()
        constraints.append(Constraint(q.op, diff, lhs, values, fill(q.message), q.text, q.where, vs))
    objective = [fold(r.expr(e), r.folded) for e, _ in model.objective]
    all_bounds = compile_functions({"b": bounds_source([c.expr for c in constraints] + objective, "b")})["b"]
    reports = {n: r.name(n) for n in model.reports}
    return Problem(
        names=[v.name for v in model.vars],
        domains=domains,
        prefer=[v.prefer for v in model.vars],
        docs=[v.doc for v in model.vars],
        constraints=constraints,
        objective=objective,
        bounds=all_bounds,
        objective_text=[t for _, t in model.objective],
        reports=reports,
        params=params,
        model=model,
    )
