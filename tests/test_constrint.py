"""ConstrINT: the language, the solver against brute force, explanations, the independent checker."""

import itertools
import random

import pytest

from flashrnn_compile import constrint
from flashrnn_compile.constrint import ModelError, explain, instantiate, parse, solve, violations


def _solve_text(text, params=None, **kw):
    model = parse(text)
    problem = instantiate(model, params or {})
    return model, problem, solve(problem, **kw)


def test_grammar_example_from_the_docstring():
    model, _, r = _solve_text(
        """
        param DH                          # head dim
        var WARPS in {1, 2, 4, 8}         # warps per block
        let ROWS = 4 * DH
        require (ROWS / 16) % WARPS == 0 : "the {ROWS} rows split evenly over the warps"
        minimize -WARPS
        """,
        {"DH": 8},
    )
    assert r.status == "optimal" and r.values == {"WARPS": 2} and r.objective == (-2,)
    assert model.vars[0].doc == "warps per block"


def test_statements_span_lines_inside_brackets_and_include_files():
    files = {"common.cint": "param N\nvar X in 0 .. N prefer high  # x\n"}
    model = parse('include "common.cint"\nrequire min(X,\n  7) * 2 <= 9\nminimize -X', loader=files.__getitem__)
    r = solve(instantiate(model, {"N": 20}))
    best = min((-x, x) for x in range(21) if min(x, 7) * 2 <= 9)
    assert r.values == {"X": best[1]} == {"X": 4}


@pytest.mark.parametrize(
    "text, words",
    [
        ("var X in 0 .. 3\nrequire X <= Y", "unknown name 'Y'"),
        ("var X in 0 .. 3\nrequire X <=", "expected a number"),
        ("var X in 0 .. 3\nrequire (X <= 2", "unclosed bracket"),
        ("var X in 0 .. 3\nrequire X", "comparison"),
        ("var X in 0 .. 3\nfrobnicate X", "expected a statement"),
        ("var X in 0 .. 3\nvar Y in 0 .. X", "domain of Y uses variable"),
        ("param A\nparam A", "declared more than once"),
        ("let A = B\nlet B = A\nrequire A == 0", "depends on itself"),
        ("var X in 0 .. 3\nrequire foo(X) == 1", "function"),
        ("var X in 0 .. 3 prefer middle", "'low' or 'high'"),
        ('include "x.cint"', "no loader"),
    ],
)
def test_bad_models_raise_with_the_place_and_the_expectation(text, words):
    with pytest.raises((ModelError, ValueError), match=words):
        model = parse(text, "m.cint")
        instantiate(model, {})


def test_params_must_match_the_model():
    model = parse("param A, B\nvar X in 0 .. A\nrequire X <= B")
    with pytest.raises(ValueError, match=r"params: .*needs values for \['B'\]"):
        instantiate(model, {"A": 1})
    with pytest.raises(ValueError, match=r"params: .*no param\(s\) \['C'\]"):
        instantiate(model, {"A": 1, "B": 2, "C": 3})


def test_explanation_names_the_conflicting_constraints_in_words():
    model = parse(
        """
        param LIMIT
        var X in 0 .. 100     # x
        var Y in {1, 2, 3}    # y
        require X >= 50 : "X is at least 50"
        require Y <= 3 : "Y is small"
        require X * Y <= LIMIT : "the product fits the limit {LIMIT}"
        require X % 2 == 0 : "X is even"
        """
    )
    problem = instantiate(model, {"LIMIT": 40})
    assert solve(problem).status == "infeasible"
    assert explain(problem) == ["X is at least 50 [X >= 50]", "the product fits the limit 40 [X * Y <= LIMIT]"]
    assert explain(instantiate(model, {"LIMIT": 100})) == []
    assert explain(instantiate(parse("var X in 5 .. 1"), {})) == ["the declared domain of X is empty"]


def test_checker_rejects_what_breaks_the_model_and_accepts_a_solution():
    model, problem, r = _solve_text(
        "var X in {1, 2, 4}\nvar Y in 0 .. 9\nrequire X * Y == 8\nrequire Y / X != 4\nminimize Y, X"
    )
    assert r.values == {"X": 4, "Y": 2} and violations(model, {}, r.values) == []
    assert any("X * Y == 8" in v for v in violations(model, {}, {"X": 2, "Y": 3}))
    assert any("Y / X != 4" in v for v in violations(model, {}, {"X": 2, "Y": 8}))
    assert any("outside its declared domain" in v for v in violations(model, {}, {"X": 3, "Y": 8}))
    assert violations(model, {}, {"X": 4}) == ["variable Y has no value"]


def test_division_by_zero_makes_a_constraint_false():
    _, _, r = _solve_text("var X in -2 .. 2\nrequire 6 / X >= 3\nrequire 6 % X == 0\nminimize X")
    assert r.values == {"X": 1}
    _, problem, r = _solve_text("var X in 0 .. 0\nrequire 1 / X == 0")
    assert r.status == "infeasible"


# ---- the solver against brute force ------------------------------------------------------------

VARS = ("A", "B", "C")


def _rand_expr(rng, names, depth):
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(list(names) + [str(rng.randint(0, 6)), "P"])
    kind = rng.choice(["+", "-", "*", "/", "%", "min", "max", "ceil", "neg"])
    a, b = _rand_expr(rng, names, depth - 1), _rand_expr(rng, names, depth - 1)
    if kind == "neg":
        return f"-({a})"
    if kind in ("min", "max", "ceil"):
        return f"{kind}({a}, {b})"
    return f"({a} {kind} {b})"


def _rand_model(rng):
    nvars = rng.randint(1, 3)
    names = VARS[:nvars]
    lines = ["param P"]
    for n in names:
        if rng.random() < 0.5:
            lo = rng.randint(-4, 3)
            width = rng.randint(17, 30) if n == "A" and rng.random() < 0.3 else rng.randint(0, 8)  # > 16: bisected
            lines.append(f"var {n} in {lo} .. {lo + width}" + rng.choice(["", " prefer high"]))
        else:
            vals = sorted(rng.sample(range(-5, 13), rng.randint(1, 5)))
            lines.append(f"var {n} in {{{', '.join(map(str, vals))}}}")
    lets = []
    for k in range(rng.randint(0, 2)):  # shared subexpressions (the models of csrc/ are built of lets)
        lines.append(f"let L{k} = {_rand_expr(rng, list(names) + lets, 2)}")
        lets.append(f"L{k}")
    names = list(names) + lets
    for _ in range(rng.randint(1, 5)):
        form = rng.random()
        lhs = _rand_expr(rng, names, 2)
        if form < 0.15:
            lines.append(f"require {lhs} in {{{', '.join(str(rng.randint(-3, 9)) for _ in range(3))}}}")
        elif form < 0.3:
            lines.append(f"require ({lhs}) % {rng.randint(1, 4)} == 0")
        else:
            op = rng.choice(["==", "!=", "<=", "<", ">=", ">"])
            lines.append(f"require {lhs} {op} {_rand_expr(rng, names, 1)}")
    objective = []
    for _ in range(rng.randint(1, 2)):
        e = _rand_expr(rng, VARS[:nvars], 2)
        while "/" in e or "%" in e or "ceil" in e:  # an objective must be defined where the constraints hold
            e = _rand_expr(rng, VARS[:nvars], 2)
        objective.append(e)
    lines.append("minimize " + ", ".join(objective))
    return "\n".join(lines), [n for n in names if not n.startswith("L")]


def _brute(model, params, names):
    doms = []
    for v in model.vars:
        p = instantiate(model, params)
        doms.append(list(p.domains[[x.name for x in model.vars].index(v.name)].values()) if p.domains else [])
    feasible = []
    for combo in itertools.product(*doms):
        values = dict(zip(names, combo))
        if not violations(model, params, values):
            feasible.append((constrint.objective(model, params, values), values))
    return feasible


def test_solver_agrees_with_brute_force_on_random_problems():
    rng = random.Random(20241125)
    seen = {"optimal": 0, "infeasible": 0}
    for trial in range(400):
        text, names = _rand_model(rng)
        model = parse(text, f"random{trial}")
        params = {"P": rng.randint(-2, 5)}
        problem = instantiate(model, params)
        result = solve(problem)
        feasible = _brute(model, params, names)
        seen[result.status] += 1
        if not feasible:
            assert result.status == "infeasible", (text, params, result)
            conflict = constrint.conflict(problem)
            assert conflict, text
            # the reported constraints alone have no solution, and each one is needed
            keep = [problem.constraints.index(c) for c in conflict]
            assert solve(problem, active=keep).status == "infeasible"
            for k in keep:
                rest = [j for j in keep if j != k]
                assert solve(problem, active=rest).status != "infeasible", (text, k)
            continue
        assert result.status == "optimal", (text, params)
        assert violations(model, params, result.values) == [], (text, result)
        best = min(obj for obj, _ in feasible)
        assert result.objective == best, (text, params, result, best)
        assert constrint.objective(model, params, result.values) == best
    assert seen["optimal"] > 50 and seen["infeasible"] > 20, seen


def test_first_solution_mode_and_below_bound():
    model = parse("var X in 0 .. 50\nrequire X % 7 == 3\nminimize X")
    problem = instantiate(model, {})
    r = solve(problem, optimize=False)
    assert r.status == "feasible" and r.values["X"] % 7 == 3
    assert solve(problem).values == {"X": 3}
    assert solve(problem, below=4).values == {"X": 3}
    assert solve(problem, below=3).status == "infeasible"  # strictly below: 3 does not count


def test_large_ranges_are_bisected_not_enumerated():
    model = parse("var X in 0 .. 1000000000 prefer high\nvar Y in 1 .. 64\nrequire X * Y <= 123456789\nrequire Y % 5 == 0\nminimize -X")
    r = solve(instantiate(model, {}))
    assert r.values == {"X": 123456789 // 5, "Y": 5}
    assert r.nodes < 500


def test_constrint_needs_no_torch():
    """The solver is loaded as a package of its own with `import torch` made to fail."""
    import os
    import subprocess
    import sys

    folder = os.path.dirname(constrint.__file__)
    code = (
        "import sys, importlib.util\n"
        "sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        f"spec = importlib.util.spec_from_file_location('constrint', {os.path.join(folder, '__init__.py')!r},"
        f" submodule_search_locations=[{folder!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['constrint'] = m; spec.loader.exec_module(m)\n"
        "p = m.instantiate(m.parse('var X in 0 .. 9\\nrequire X * X <= 50\\nminimize -X'), {})\n"
        "print(m.solve(p).values)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'X': 7}"


def test_bounds_and_narrowing_never_lose_a_point():
    """Soundness of the propagators, point by point: random expressions, boxes and targets."""
    from flashrnn_compile.constrint.expr import Undefined

    rng = random.Random(7)
    checked = 0
    for trial in range(300):
        names = VARS[: rng.randint(1, 3)]
        text = "param P\n" + "".join(f"var {n} in -6 .. 9\n" for n in names)
        text += f"require {_rand_expr(rng, names, 3)} == 0"
        problem = instantiate(parse(text), {"P": rng.randint(-3, 4)})
        e = problem.constraints[0].diff
        box = []
        for _ in names:
            lo = rng.randint(-6, 6)
            box.append((lo, lo + rng.randint(0, 5)))
        points = list(itertools.product(*(range(lo, hi + 1) for lo, hi in box)))
        values = {}
        for x in points:
            try:
                values[x] = e.value(x)
            except Undefined:
                pass
        iv = problem.bounds(box).get(e.uid) or e.bounds(box, {})
        if iv is None:  # no value anywhere in the box
            assert not values, (text, box)
            continue
        assert all(iv[0] <= v <= iv[1] for v in values.values()), (text, box, iv)
        lo = rng.randint(iv[0] - 2, iv[1] + 1)
        target = (lo, lo + rng.randint(0, 6))
        narrowed = list(box)
        ok = e.narrow(target, narrowed, problem.bounds(box))
        inside = [x for x, v in values.items() if target[0] <= v <= target[1]]
        if not ok:
            assert not inside, (text, box, target)
            continue
        for x in inside:
            assert all(l <= xi <= h for xi, (l, h) in zip(x, narrowed)), (text, box, target, x, narrowed)
        checked += len(inside)
    assert checked > 1000


def test_node_limit_is_reported_not_hidden():
    model = parse("var X in 0 .. 1000000\nvar Y in 0 .. 1000000\nrequire X * X - 2 * Y * Y == 1\nrequire X > 1")
    problem = instantiate(model, {})
    with pytest.raises(constrint.NodeLimit):
        solve(problem, node_limit=50)
