"""The ConstrINT model language: a text format for integer constraint models.

A model is a list of statements, one per line (a statement continues on the next line while a
bracket is open); `#` starts a comment, and the comment on a `var` line documents that variable.

    model     := { statement }
    statement := "param" NAME { "," NAME }                      inputs, given when solving
               | "var" NAME "in" domain [ "prefer" ("low" | "high") ]
                                                                a decision variable
               | "let" NAME "=" expr                            a named derived quantity
               | "require" cond [ ":" STRING ]                  a constraint, with its words
               | "minimize" expr { "," expr }                   lexicographic objective
               | "report" NAME { "," NAME }                     lets to show next to a solution
               | "include" STRING                               another model file, inlined
    domain    := "{" expr { "," expr } "}"                      these values
               | expr ".." expr                                 every integer from .. to
    cond      := expr ("==" | "!=" | "<=" | "<" | ">=" | ">") expr
               | expr "in" "{" expr { "," expr } "}"            membership
    expr      := term { ("+" | "-") term }
    term      := unary { ("*" | "/" | "%") unary }              / and % floor, as in Python
    unary     := "-" unary | atom
    atom      := INT | NAME | NAME "(" expr { "," expr } ")" | "(" expr ")"
                                                                functions: min, max, ceil(a, b)

Names may be used before they are declared. Divisibility is written `a % b == 0`; a product
equality `a * b == c`. In a message, `{NAME}` shows the value of a param or of a let that depends
on params only. Example:

    param DH                          # head dim
    var WARPS in {1, 2, 4, 8}         # warps per block
    let ROWS = 4 * DH
    require (ROWS / 16) % WARPS == 0 : "the {ROWS} rows split evenly over the warps"
    minimize -WARPS
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Tuple

RawExpr = tuple  # ('num', v) | ('name', s) | ('neg', a) | ('bin', op, a, b) | ('call', fn, [args])

COMPARISONS = ("==", "!=", "<=", "<", ">=", ">")
KEYWORDS = ("param", "var", "let", "require", "minimize", "report", "include")


class ModelError(ValueError):
    """A model text that does not follow the grammar, or uses a name it does not declare."""


@dataclasses.dataclass(frozen=True)
class VarDecl:
    name: str
    domain: tuple  # ('set', [RawExpr]) | ('range', lo RawExpr, hi RawExpr)
    prefer: str  # 'low' | 'high'
    doc: str
    where: str


@dataclasses.dataclass(frozen=True)
class Require:
    op: str  # one of COMPARISONS, or 'in'
    lhs: RawExpr
    rhs: object  # RawExpr, or a list of RawExpr for 'in'
    message: str
    text: str  # the condition as written
    where: str


@dataclasses.dataclass
class Model:
    name: str
    params: List[str] = dataclasses.field(default_factory=list)
    vars: List[VarDecl] = dataclasses.field(default_factory=list)
    lets: Dict[str, RawExpr] = dataclasses.field(default_factory=dict)
    requires: List[Require] = dataclasses.field(default_factory=list)
    objective: List[Tuple[RawExpr, str]] = dataclasses.field(default_factory=list)
    reports: List[str] = dataclasses.field(default_factory=list)

    def declared(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for p in self.params:
            out[p] = "param"
        for v in self.vars:
            out[v.name] = "var"
        for n in self.lets:
            out[n] = "let"
        return out


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<nl>\n)|(?P<str>"[^"\n]*")|(?P<int>\d+)
    |(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>\.\.|==|!=|<=|>=|[-+*/%(){},:<>=])""",
    re.VERBOSE,
)


@dataclasses.dataclass
class _Tok:
    kind: str
    text: str
    line: int
    start: int
    end: int


def _tokenize(text: str, source: str) -> List[List[_Tok]]:
    """Tokens grouped into statements (newlines inside brackets do not end a statement)."""
    stmts: List[List[_Tok]] = []
    cur: List[_Tok] = []
    depth, line, pos = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ModelError(f"{source}:{line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        tok = _Tok(kind, m.group(), line, m.start(), m.end())
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "nl":
            line += 1
            if depth == 0 and cur:
                stmts.append(cur)
                cur = []
            continue
        if kind == "op" and tok.text in "({":
            depth += 1
        elif kind == "op" and tok.text in ")}":
            depth -= 1
            if depth < 0:
                raise ModelError(f"{source}:{line}: unbalanced {tok.text!r}")
        cur.append(tok)
    if depth:
        raise ModelError(f"{source}:{line}: unclosed bracket at end of file")
    if cur:
        stmts.append(cur)
    return stmts


class _Parser:
    def __init__(self, toks: List[_Tok], text: str, source: str):
        self.doc = ""
        if toks and toks[-1].kind == "comment":
            self.doc = toks[-1].text.lstrip("#").strip()
        self.toks = [t for t in toks if t.kind != "comment"]
        self.text, self.source, self.i = text, source, 0
        self.where = f"{source}:{toks[0].line}"

    def error(self, what: str) -> ModelError:
        got = self.toks[self.i].text if self.i < len(self.toks) else "end of statement"
        return ModelError(f"{self.where}: expected {what}, got {got!r}")

    def peek(self) -> Optional[_Tok]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def accept(self, text: str) -> bool:
        t = self.peek()
        if t is not None and t.text == text and t.kind in ("op", "name"):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.error(repr(text))

    def name(self) -> str:
        t = self.peek()
        if t is None or t.kind != "name" or t.text in KEYWORDS:
            raise self.error("a name")
        self.i += 1
        return t.text

    def done(self) -> None:
        if self.peek() is not None:
            raise self.error("end of statement")

    def expr(self) -> RawExpr:
        e = self.term()
        while self.peek() is not None and self.peek().text in ("+", "-"):
            op = self.toks[self.i].text
            self.i += 1
            e = ("bin", op, e, self.term())
        return e

    def term(self) -> RawExpr:
        e = self.unary()
        while self.peek() is not None and self.peek().text in ("*", "/", "%"):
            op = self.toks[self.i].text
            self.i += 1
            e = ("bin", op, e, self.unary())
        return e

    def unary(self) -> RawExpr:
        if self.accept("-"):
            return ("neg", self.unary())
        return self.atom()

    def atom(self) -> RawExpr:
        t = self.peek()
        if t is None:
            raise self.error("a number, a name or '('")
        if t.kind == "int":
            self.i += 1
            return ("num", int(t.text))
        if self.accept("("):
            e = self.expr()
            self.expect(")")
            return e
        n = self.name()
        if self.accept("("):
            args = [self.expr()]
            while self.accept(","):
                args.append(self.expr())
            self.expect(")")
            return ("call", n, args)
        return ("name", n)

    def expr_list(self) -> List[RawExpr]:
        self.expect("{")
        items = [self.expr()]
        while self.accept(","):
            items.append(self.expr())
        self.expect("}")
        return items

    def names(self) -> List[str]:
        out = [self.name()]
        while self.accept(","):
            out.append(self.name())
        return out


def parse(text: str, source: str = "<model>", loader: Optional[Callable[[str], str]] = None,
          _model: Optional[Model] = None, _seen: Tuple[str, ...] = ()) -> Model:
    """Parse a model text. `loader(path)` returns the text of an included file."""
    model = _model if _model is not None else Model(source)
    for toks in _tokenize(text, source):
        if toks[0].kind == "comment":
            continue
        p = _Parser(toks, text, source)
        kw = p.peek().text
        p.i += 1
        if kw == "param":
            model.params.extend(p.names())
        elif kw == "var":
            name = p.name()
            p.expect("in")
            if p.peek() is not None and p.peek().text == "{":
                domain = ("set", p.expr_list())
            else:
                lo = p.expr()
                p.expect("..")
                domain = ("range", lo, p.expr())
            prefer = "low"
            if p.accept("prefer"):
                prefer = p.name()
                if prefer not in ("low", "high"):
                    raise ModelError(f"{p.where}: expected 'low' or 'high' after 'prefer', got {prefer!r}")
            model.vars.append(VarDecl(name, domain, prefer, p.doc, p.where))
        elif kw == "let":
            name = p.name()
            p.expect("=")
            if name in model.lets:
                raise ModelError(f"{p.where}: let {name} is defined twice")
            model.lets[name] = p.expr()
        elif kw == "require":
            start = p.peek().start if p.peek() else toks[0].end
            lhs = p.expr()
            t = p.peek()
            if t is not None and t.text == "in":
                p.i += 1
                op, rhs = "in", p.expr_list()
            elif t is not None and t.text in COMPARISONS:
                p.i += 1
                op, rhs = t.text, p.expr()
            else:
                raise p.error("a comparison (== != <= < >= >) or 'in'")
            end = p.toks[p.i - 1].end
            message = ""
            if p.accept(":"):
                s = p.peek()
                if s is None or s.kind != "str":
                    raise p.error("a message in double quotes")
                p.i += 1
                message = s.text[1:-1]
            cond = " ".join(text[start:end].split())
            model.requires.append(Require(op, lhs, rhs, message or cond, cond, p.where))
        elif kw == "minimize":
            while True:
                start = p.peek().start if p.peek() else toks[0].end
                e = p.expr()
                model.objective.append((e, " ".join(text[start:p.toks[p.i - 1].end].split())))
                if not p.accept(","):
                    break
        elif kw == "report":
            model.reports.extend(p.names())
        elif kw == "include":
            s = p.peek()
            if s is None or s.kind != "str":
                raise p.error("a file name in double quotes")
            p.i += 1
            path = s.text[1:-1]
            if loader is None:
                raise ModelError(f"{p.where}: include {path!r} but no loader was given")
            if path in _seen:
                raise ModelError(f"{p.where}: include cycle through {path!r}")
            parse(loader(path), path, loader, model, _seen + (source,))
        else:
            raise ModelError(f"{p.where}: expected a statement ({', '.join(KEYWORDS)}), got {kw!r}")
        p.done()
    if _model is None:
        _check_names(model)
    return model


def _names_in(e: RawExpr, out: set) -> set:
    kind = e[0]
    if kind == "name":
        out.add(e[1])
    elif kind == "neg":
        _names_in(e[1], out)
    elif kind == "bin":
        _names_in(e[2], out)
        _names_in(e[3], out)
    elif kind == "call":
        for a in e[2]:
            _names_in(a, out)
    return out


def _check_names(model: Model) -> None:
    declared = model.declared()
    seen: Dict[str, int] = {}
    for n in model.params + [v.name for v in model.vars] + list(model.lets):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            raise ModelError(f"{model.name}: {n} is declared more than once")
    exprs: List[Tuple[str, RawExpr]] = [(f"let {n}", e) for n, e in model.lets.items()]
    for v in model.vars:
        items = v.domain[1] if v.domain[0] == "set" else [v.domain[1], v.domain[2]]
        exprs += [(f"{v.where} domain of {v.name}", e) for e in items]
    for r in model.requires:
        exprs.append((r.where, r.lhs))
        exprs += [(r.where, e) for e in (r.rhs if r.op == "in" else [r.rhs])]
    exprs += [("minimize", e) for e, _ in model.objective]
    for where, e in exprs:
        for n in _names_in(e, set()):
            if n not in declared:
                raise ModelError(f"{model.name}: {where}: unknown name {n!r}")
    for n in model.reports:
        if n not in declared:
            raise ModelError(f"{model.name}: report of unknown name {n!r}")
    for v in model.vars:  # domains are made of params only
        items = v.domain[1] if v.domain[0] == "set" else [v.domain[1], v.domain[2]]
        for e in items:
            bad = [n for n in _names_in(e, set()) if declared[n] == "var"]
            if bad:
                raise ModelError(f"{v.where}: the domain of {v.name} uses variable(s) {bad}")
