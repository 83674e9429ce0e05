"""An independent checker: does an assignment satisfy a model, evaluated from the model text?

It shares nothing with the solver but the parsed model: its own evaluator walks the raw syntax
tree with params and variable values substituted (lets recomputed from their definitions), and
every `require` and every variable's declared domain is tested exactly. Use it on every plan.
"""

from __future__ import annotations

from typing import Dict, List

from .lang import Model

_MISSING = object()


class _Env:
    def __init__(self, model: Model, params: Dict[str, int], values: Dict[str, int]):
        self.model, self.scope = model, {**params, **values}

    def eval(self, e) -> int:
        kind = e[0]
        if kind == "num":
            return e[1]
        if kind == "name":
            n = e[1]
            v = self.scope.get(n, _MISSING)
            if v is _MISSING:
                v = self.scope[n] = self.eval(self.model.lets[n])  # KeyError: unknown name
            return v
        if kind == "neg":
            return -self.eval(e[1])
        if kind == "call":
            args = [self.eval(a) for a in e[2]]
            if e[1] == "min":
                return min(args)
            if e[1] == "max":
                return max(args)
            if e[1] == "ceil":
                if args[1] == 0:
                    raise ZeroDivisionError("ceil(a, 0)")
                q, r = divmod(args[0], args[1])
                return q + (1 if r else 0)
            raise ValueError(f"unknown function {e[1]!r}")
        op, a, b = e[1], self.eval(e[2]), self.eval(e[3])
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise ZeroDivisionError(f"{a} {op} 0")
        return a // b if op == "/" else a % b


def violations(model: Model, params: Dict[str, int], values: Dict[str, int]) -> List[str]:
    """Every declared fact the assignment breaks, in words; [] when it satisfies the model."""
    out: List[str] = []
    names = [v.name for v in model.vars]
    for n in names:
        if n not in values:
            out.append(f"variable {n} has no value")
    for n in values:
        if n not in names:
            out.append(f"{n} is not a variable of the model")
    if out:
        return out
    env = _Env(model, params, values)
    for v in model.vars:
        x = values[v.name]
        if v.domain[0] == "set":
            ok = x in {env.eval(e) for e in v.domain[1]}
        else:
            ok = env.eval(v.domain[1]) <= x <= env.eval(v.domain[2])
        if not ok:
            out.append(f"{v.name} = {x} is outside its declared domain ({v.where})")
    for r in model.requires:
        try:
            a = env.eval(r.lhs)
            if r.op == "in":
                ok = a in {env.eval(e) for e in r.rhs}
            else:
                b = env.eval(r.rhs)
                ok = {"==": a == b, "!=": a != b, "<=": a <= b, "<": a < b, ">=": a >= b, ">": a > b}[r.op]
        except ZeroDivisionError:
            ok = False
        if not ok:
            out.append(f"{r.where}: {r.text} does not hold")
    return out


def objective(model: Model, params: Dict[str, int], values: Dict[str, int]) -> tuple:
    """The objective vector of an assignment, evaluated independently."""
    env = _Env(model, params, values)
    return tuple(env.eval(e) for e, _ in model.objective)
