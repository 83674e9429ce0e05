"""ConstrINT: a small integer constraint solver with an explainable answer (no torch needed).

    model = parse(text)                      # the language: see constrint.lang
    problem = instantiate(model, params)     # params bound, lets inlined, constants folded
    result = solve(problem)                  # propagation + branch and bound on the objective
    explain(problem)                         # when infeasible: the conflicting constraints, in words
    violations(model, params, result.values) # independent re-check of every constraint

Variables have finite integer domains; constraints are comparisons of integer expressions
(+ - * / % min max ceil: linear, product, divisibility) and membership; the objective is a list
of expressions minimised lexicographically.
"""

from .check import objective, violations
from .explain import conflict, explain
from .lang import Model, ModelError, parse
from .problem import Constraint, Domain, Problem, instantiate
from .solver import NodeLimit, Result, solve

__all__ = [
    "Constraint",
    "Domain",
    "Model",
    "ModelError",
    "NodeLimit",
    "Problem",
    "Result",
    "conflict",
    "explain",
    "instantiate",
    "objective",
    "parse",
    "solve",
    "violations",
]
