"""Propagation to a fixed point plus branch-and-bound search.

Propagation (per constraint, queued until nothing changes):
  * a constraint with one unfixed variable of few values (`FILTER_LIMIT` for %, != and
    membership, `ENUMERATE_LIMIT` otherwise) is filtered value by value with exact evaluation
    (this is what enforces divisibility, membership and !=);
  * otherwise HC4 revise: interval bounds bottom-up, then the comparison's interval top-down,
    shrinking the bounds of the variables (`expr.Expr.narrow`).
Search: the unfixed variable with the fewest values; small domains are enumerated in the
variable's preferred order, large ranges are bisected. With an objective (a list of expressions,
minimised lexicographically) every solution found bounds the rest of the search: a node whose
objective intervals cannot beat the incumbent is cut, and the first objective is propagated as
the constraint `objective[0] <= incumbent[0]`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from .expr import Undefined
from .lang import ModelError
from .problem import TARGET, Domain, Problem

FILTER_LIMIT = 64
ENUMERATE_LIMIT = 16


class NodeLimit(RuntimeError):
    """The search reached its node limit before finding any solution or proving there is none."""


@dataclasses.dataclass
class Result:
    status: str  # 'optimal' | 'feasible' (first solution, or the node limit was hit) | 'infeasible'
    values: Optional[Dict[str, int]]
    objective: Optional[Tuple[int, ...]]
    nodes: int


class _Search:
    def __init__(self, problem: Problem, active: Sequence[int], optimize: bool, node_limit: int):
        self.p = problem
        self.cons = [problem.constraints[i] for i in active]
        self.optimize = optimize and bool(problem.objective)
        self.node_limit = node_limit
        self.nodes = 0
        self.memo = None
        self.best: Optional[Tuple[Tuple[int, ...], List[int]]] = None
        self.watch: List[List[int]] = [[] for _ in problem.names]
        for ci, c in enumerate(self.cons):
            for v in c.vars:
                self.watch[v].append(ci)
        self.obj_vars = frozenset().union(*(o.variables() for o in problem.objective)) if problem.objective else frozenset()

    # -- propagation ---------------------------------------------------------------------------
    def _set(self, doms: List[Domain], box, i: int, new: Optional[Domain], queue, queued) -> bool:
        if new is None:
            return False
        if new is not doms[i]:
            doms[i] = new
            box[i] = (new.lo, new.hi)
            self.memo = None
            for cj in self.watch[i]:
                if not queued[cj]:
                    queued[cj] = True
                    queue.append(cj)
            if self.best is not None and i in self.obj_vars and not queued[-1]:
                queued[-1] = True
                queue.append(-1)
        return True

    def _memo(self, box):
        if self.memo is None:
            self.memo = self.p.bounds(box)
        return self.memo

    def propagate(self, doms: List[Domain]) -> bool:
        box = [(d.lo, d.hi) for d in doms]
        self.memo = None  # node bounds of the current box (recomputed after any change)
        queue = list(range(len(self.cons)))
        queued = [True] * len(self.cons) + [False]
        if self.best is not None:
            queue.append(-1)
            queued[-1] = True
        while queue:
            ci = queue.pop()
            queued[ci] = False
            if ci == -1:  # the objective bound
                o = self.p.objective[0]
                memo = self._memo(box)
                iv = memo.get(o.uid) or o.bounds(box, memo)
                bound = self.best[0][0]
                if iv is None or iv[0] > bound:
                    return False
                if iv[1] > bound:
                    nb = list(box)
                    if not o.narrow((iv[0], bound), nb, memo):
                        return False
                    for i in o.variables():
                        if nb[i] != box[i] and not self._set(doms, box, i, doms[i].narrow(*nb[i]), queue, queued):
                            return False
                continue
            c = self.cons[ci]
            free = [i for i in c.vars if doms[i].size > 1]
            if len(free) == 1 and doms[free[0]].size <= (FILTER_LIMIT if c.by_value else ENUMERATE_LIMIT):
                i = free[0]
                x = [d.lo for d in doms]
                keep = []
                for v in doms[i].values():
                    x[i] = v
                    if c.holds(x):
                        keep.append(v)
                if len(keep) < doms[i].size and not self._set(doms, box, i, Domain.of(keep), queue, queued):
                    return False
                continue
            if not free:
                if not c.holds([d.lo for d in doms]):
                    return False
                continue
            if c.op == "in":
                e, target = c.lhs, (c.values[0], c.values[-1])
            else:
                e, target = c.diff, TARGET[c.op]
            memo = self._memo(box)
            iv = memo.get(e.uid) or e.bounds(box, memo)
            if iv is None or iv[1] < target[0] or iv[0] > target[1]:
                return False
            if c.op == "!=" or (target[0] <= iv[0] and iv[1] <= target[1]):
                continue  # nothing to narrow (for '!=', exact filtering above does the work)
            nb = list(box)
            if not e.narrow((max(iv[0], target[0]), min(iv[1], target[1])), nb, memo):
                return False
            for i in c.vars:
                if nb[i] != box[i] and not self._set(doms, box, i, doms[i].narrow(*nb[i]), queue, queued):
                    return False
        return True

    # -- search --------------------------------------------------------------------------------
    def cut(self, doms: List[Domain]) -> bool:
        """True when no assignment in doms can beat the incumbent (lexicographically)."""
        if self.best is None:
            return False
        box = [(d.lo, d.hi) for d in doms]
        memo = self.p.bounds(box)
        for o, b in zip(self.p.objective, self.best[0]):
            iv = memo.get(o.uid) or o.bounds(box, memo)
            if iv is None or iv[0] > b:
                return True
            if iv[0] < b or iv[1] > b:
                return False
        return True  # equal on every component: not strictly better

    def run(self, doms: List[Domain]) -> bool:
        """DFS; True to stop (first solution wanted, or node limit)."""
        self.nodes += 1
        if self.nodes > self.node_limit:
            return True
        if not self.propagate(doms) or self.cut(doms):
            return False
        free = [i for i, d in enumerate(doms) if d.size > 1]
        if not free:
            x = [d.lo for d in doms]
            if not all(c.holds(x) for c in self.cons):
                return False
            if not self.optimize:
                self.best = ((), x)
                return True
            try:
                obj = tuple(o.value(x) for o in self.p.objective)
            except Undefined as e:
                raise ModelError(f"the objective is undefined ({e}) at a feasible point {x}") from e
            if self.best is None or obj < self.best[0]:
                self.best = (obj, x)
            return not self.optimize
        i = min(free, key=lambda j: (doms[j].size, j))
        d, high = doms[i], self.p.prefer[i] == "high"
        if d.vals is not None or d.size <= ENUMERATE_LIMIT:
            vals = list(d.values())
            branches = [Domain(v, v) for v in (reversed(vals) if high else vals)]
        else:
            mid = (d.lo + d.hi) // 2
            branches = [Domain(d.lo, mid), Domain(mid + 1, d.hi)]
            if high:
                branches.reverse()
        for b in branches:
            child = list(doms)
            child[i] = b
            if self.run(child):
                return True
        return False


def solve(problem: Problem, *, optimize: bool = True, active: Optional[Sequence[int]] = None,
          node_limit: int = 200_000, below: Optional[int] = None) -> Result:
    """Solve `problem` (restricted to the constraints `active`, all by default).

    below: only solutions whose first objective is < below count (used to compare several
    problems: what cannot beat the best so far is cut at once).
    """
    active = range(len(problem.constraints)) if active is None else active
    if any(d is None for d in problem.domains):
        return Result("infeasible", None, None, 0)
    s = _Search(problem, active, optimize, node_limit)
    if below is not None:
        if not problem.objective:
            raise ValueError("below: the problem has no objective")
        s.optimize = True
        s.best = ((below,), None)
    s.run(list(problem.domains))
    if s.best is not None and s.best[1] is None:
        s.best = None
    if s.best is None:
        if s.nodes > node_limit:
            raise NodeLimit(f"constrint: node limit {node_limit} reached before any solution")
        return Result("infeasible", None, None, s.nodes)
    status = "optimal" if s.optimize and s.nodes <= node_limit else "feasible"
    obj, x = s.best
    return Result(status, dict(zip(problem.names, x)), obj, s.nodes)
