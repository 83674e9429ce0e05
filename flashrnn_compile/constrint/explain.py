"""Why a problem has no solution: a minimal set of constraints that cannot hold together.

First the cheap cases: constraints without variables that hold are set aside, and a single
constraint that cannot hold on its own (within the domains) is the answer. Otherwise the deletion
filter: drop each remaining constraint in turn (the last declared first) and keep it dropped when
the rest is still infeasible. What remains is irreducible: removing any one of them makes the others
satisfiable (within the variables' domains). Each is reported in words (its message, params
filled in) with the condition as written.
"""

from __future__ import annotations

from typing import List, Optional

from .problem import Constraint, Problem
from .solver import NodeLimit, solve


def conflict(problem: Problem, node_limit: int = 300, budget: int = 3000) -> Optional[List[Constraint]]:
    """An infeasible subset of the constraints; [] when the problem is feasible, None when the
    search limit was reached before either was shown.

    A constraint is dropped only when the rest is *proven* infeasible. A trial that needs more
    than `node_limit` search nodes, or any trial once `budget` nodes have been spent in all,
    keeps its constraint: the answer is always a conflict, and irreducible unless a limit was hit.
    """
    empty = [n for n, d in zip(problem.names, problem.domains) if d is None]
    if empty:
        return []
    keep = list(range(len(problem.constraints)))
    try:
        if solve(problem, optimize=False, active=keep, node_limit=50 * budget).status != "infeasible":
            return []
    except NodeLimit:
        return None
    # a constraint without variables that holds is in no minimal conflict
    keep = [ci for ci in keep if problem.constraints[ci].vars or not problem.constraints[ci].holds(())]
    for ci in keep:  # one constraint that cannot hold on its own is the simplest answer
        try:
            if solve(problem, optimize=False, active=[ci], node_limit=50).status == "infeasible":
                return [problem.constraints[ci]]
        except NodeLimit:
            pass
    spent = 0
    for ci in reversed(keep):  # later (derived) constraints go first; earlier limits stay
        if spent >= budget:
            break
        trial = [c for c in keep if c != ci]
        limit = min(node_limit, budget - spent)
        try:
            r = solve(problem, optimize=False, active=trial, node_limit=limit)
        except NodeLimit:
            spent += limit
            continue
        spent += r.nodes
        if r.status == "infeasible":
            keep = trial
    return [problem.constraints[i] for i in keep]


def explain(problem: Problem) -> List[str]:
    """Sentences saying why nothing is feasible ([] when something is)."""
    empty = [n for n, d in zip(problem.names, problem.domains) if d is None]
    if empty:
        return [f"the declared domain of {n} is empty" for n in empty]
    found = conflict(problem)
    if found is None:
        return ["no conflict was found within the search limit"]
    return [c.describe() for c in found]
