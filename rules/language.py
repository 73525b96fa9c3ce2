"""The custom-segment rule language (the `when` of a `[[segment]]`).

A rule is a boolean expression over feature names. It is parsed once, when the config
loads, with a lark LALR parser, type-checked against a schema ``{name: FeatureType}``
and compiled to ONE polars expression evaluated vectorised over a frame with one row
per customer. Nothing is ever passed to Python's eval/exec.

Grammar (lowest precedence first; keywords are lowercase and case-sensitive)::

    rule       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := atom [("<" | "<=" | ">" | ">=" | "==" | "!=") atom]   # non-associative
    atom       := NAME | NUMBER | STRING | "true" | "false" | "null" | "(" or_expr ")"

    NAME    identifiers [A-Za-z_][A-Za-z0-9_]* joined by dots: purchases, cf.loyalty_level,
            lifecycle.regular_asleep. Names that merely start with a keyword (android,
            order_count, notes, nothing) are ordinary names. A name compiles to pl.col(name).
    NUMBER  -1, 100000, -1.5 (integer or decimal, optional leading minus)
    STRING  "..." or '...'; a backslash escapes the quote or a backslash; one line only.

So ``not`` binds tighter than ``and``, which binds tighter than ``or``; ``1 < x < 5`` is a
syntax error (write ``1 < x and x < 5``).

Types: numbers compare with all six operators; strings and bools only with == and !=;
anything compares with ``null`` only through == / != (compiled to is_null / is_not_null).
Operands of and/or/not and the whole rule must be bool (a bool name, a comparison,
true/false). Errors raise RuleError at the offending position; type errors of a
comparison point at its operator.

Null semantics: inside the rule, SQL three-valued (Kleene) logic applies: a comparison
with a null value is null, ``null or true`` is true, ``null and false`` is false,
``not null`` is null. The final expression is ``.fill_null(False)``: a rule that is
unknown for a customer does not select it. Hence for a prospect whose ``recency_days``
is null, both ``recency_days > 90`` and ``not (recency_days > 90)`` are False; test
for missing values explicitly with ``recency_days == null``.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass
from typing import Literal, Mapping, NamedTuple

import polars as pl
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

__all__ = ["FeatureType", "RuleError", "CompiledRule", "compile_rule"]

FeatureType = Literal["number", "string", "bool"]

_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr -> not_
         | comparison
?comparison: atom COMP_OP atom -> compare
           | atom
?atom: NAME -> name
     | NUMBER -> number
     | STRING -> string
     | TRUE -> true
     | FALSE -> false
     | NULL -> null
     | "(" or_expr ")"

_OR: "or"
_AND: "and"
NOT: "not"
TRUE: "true"
FALSE: "false"
NULL: "null"
COMP_OP: "<=" | ">=" | "==" | "!=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*/
NUMBER: /-?[0-9]+(\.[0-9]+)?/
STRING: /"(\\.|[^"\\\n])*"/ | /'(\\.|[^'\\\n])*'/
%import common.WS
%ignore WS
"""

# Built once at import. lark resolves the keyword terminals against NAME by exact
# match, so `android` or `notes` lex as NAME, never as `and` + `roid`.
_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="basic", propagate_positions=True)

_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null"})
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}
_ESCAPE = re.compile(r"\\(.)")


class RuleError(ValueError):
    """Raised for bad syntax, unknown names, or type mismatches."""

    def __init__(self, segment: str, source: str, line: int, column: int, reason: str,
                 hint: str | None = None) -> None:
        self.segment, self.source, self.line, self.column = segment, source, line, column
        self.reason, self.hint = reason, hint
        message = f"segment {segment!r}: when: {reason} at line {line}, column {column}"
        if hint:
            message += f" ({hint})"
        lines = source.splitlines() or [""]
        text = lines[min(line, len(lines)) - 1]
        pad = "".join("\t" if c == "\t" else " " for c in text[: column - 1])
        super().__init__(f"{message}\n    {text}\n    {pad}^")


@dataclass(frozen=True)
class CompiledRule:
    source: str
    expr: pl.Expr  # Boolean expression; nulls already turned into False
    references: frozenset[str]  # every feature/segment name the rule mentions


class _Typed(NamedTuple):
    type: str  # "number" | "string" | "bool" | "null"
    expr: pl.Expr
    desc: str  # for messages: "number 'purchases'", "string \"vip\"", "condition"
    line: int
    column: int
    literal: str | None = None  # the raw text of a literal, for hints


def compile_rule(source: str, schema: Mapping[str, FeatureType], *, segment: str) -> CompiledRule:
    """Parse, type-check and compile `source`; raise RuleError on any problem."""
    if not source.strip():
        raise RuleError(segment, source, 1, 1, "empty rule")
    tree = _parse(source, segment)
    compiler = _Compiler(source, schema, segment)
    try:
        result = compiler.compile(tree)
    except RecursionError:
        raise RuleError(segment, source, 1, 1, "rule is too deeply nested") from None
    compiler.require_bool(result)
    return CompiledRule(source, result.expr.fill_null(False), frozenset(compiler.references))


def _parse(source: str, segment: str) -> Tree:
    try:
        return _PARSER.parse(source)
    except UnexpectedCharacters as e:
        char = source[e.pos_in_stream] if e.pos_in_stream is not None else ""
        if char in "\"'":
            reason, hint = "unterminated string", None
        else:
            reason = f"unexpected {char!r}"
            hint = "use '==' to compare" if char == "=" else None
        error = RuleError(segment, source, e.line, e.column, reason, hint)
    except (UnexpectedToken, UnexpectedEOF) as e:
        token = getattr(e, "token", None)
        if token is None or token.type == "$END":
            head = source.rstrip()
            line, column = head.count("\n") + 1, len(head) - head.rfind("\n")
            error = RuleError(segment, source, line, column, "unexpected end of rule")
        else:
            hint = None
            if token.value.lower() in _KEYWORDS and token.value not in _KEYWORDS:
                hint = f"keywords are lowercase: '{token.value.lower()}'"
            error = RuleError(segment, source, token.line, token.column,
                              f"unexpected '{token.value}'", hint)
    except UnexpectedInput as e:
        error = RuleError(segment, source, e.line, e.column, "invalid rule")
    raise error


class _Compiler:
    def __init__(self, source: str, schema: Mapping[str, FeatureType], segment: str) -> None:
        self.source, self.schema, self.segment = source, schema, segment
        self.references: set[str] = set()

    def error(self, line: int, column: int, reason: str, hint: str | None = None) -> RuleError:
        return RuleError(self.segment, self.source, line, column, reason, hint)

    def require_bool(self, node: _Typed) -> pl.Expr:
        if node.type != "bool":
            raise self.error(node.line, node.column,
                             f"expected a true/false condition, got {node.desc}")
        return node.expr

    def compile(self, node: Tree) -> _Typed:
        kind, line, column = node.data, node.meta.line, node.meta.column
        if kind in ("or_expr", "and_expr"):
            parts = [self.require_bool(self.compile(child)) for child in node.children]
            # Flat Kleene any/all: same logic as chained |/&, but no deep expression tree.
            combine = pl.any_horizontal if kind == "or_expr" else pl.all_horizontal
            return _Typed("bool", combine(*parts), "condition", line, column)
        if kind == "not_":
            return _Typed("bool", ~self.require_bool(self.compile(node.children[1])),
                          "condition", line, column)
        if kind == "compare":
            return self.compare(*node.children)
        token: Token = node.children[0]
        text = str(token)
        if kind == "name":
            self.references.add(text)
            if text not in self.schema:
                close = difflib.get_close_matches(text, list(self.schema), n=1)
                hint = f"did you mean '{close[0]}'?" if close else None
                raise self.error(line, column, f"unknown feature '{text}'", hint)
            kind_of = self.schema[text]
            return _Typed(kind_of, pl.col(text), f"{kind_of} '{text}'", line, column)
        if kind == "number":
            value = _number(text)
            if value is None:
                raise self.error(line, column, f"number {_short(text)} is too large",
                                 "numbers in rules must lie within ±9223372036854775807")
            return _Typed("number", pl.lit(value), f"number {text}", line, column, text)
        if kind == "string":
            value = _ESCAPE.sub(lambda m: self.unescape(m, token), text[1:-1])
            return _Typed("string", pl.lit(value), f"string {text}", line, column, text)
        if kind in ("true", "false"):
            return _Typed("bool", pl.lit(kind == "true"), f"bool {text}", line, column, text)
        return _Typed("null", pl.lit(None), "null", line, column, text)  # kind == "null"

    def unescape(self, match: re.Match[str], token: Token) -> str:
        if match.group(1) not in "\"'\\":
            column = token.column + 1 + match.start()
            raise self.error(token.line, column, f"unknown escape '\\{match.group(1)}' in string",
                             "only \\\", \\' and \\\\ are allowed")
        return match.group(1)

    def compare(self, left_node: Tree, op_token: Token, right_node: Tree) -> _Typed:
        left, right = self.compile(left_node), self.compile(right_node)
        op, at = str(op_token), (op_token.line, op_token.column)
        if "null" in (left.type, right.type):
            if op not in ("==", "!="):
                raise self.error(*at, f"cannot compare with null using '{op}'",
                                 "use '== null' or '!= null'")
            if left.type == right.type:
                expr = pl.lit(op == "==")
            else:
                other = right if left.type == "null" else left
                expr = other.expr.is_null() if op == "==" else other.expr.is_not_null()
            return _Typed("bool", expr, "condition", left.line, left.column)
        if left.type != right.type:
            reason = f"cannot compare {left.desc} with {right.desc}"
            raise self.error(*at, reason + _quote_hint(left, right))
        if left.type != "number" and op not in ("==", "!="):
            raise self.error(*at, f"cannot order {left.type}s with '{op}'",
                             "only == and != apply to strings and bools")
        return _Typed("bool", _OPS[op](left.expr, right.expr), "condition", left.line, left.column)


INT64_MAX = 2**63 - 1


def _number(text: str) -> int | float | None:
    """The literal's value, or None when it does not fit a 64-bit column (polars would overflow; Python
    refuses to even convert integers of more than 4,300 digits)."""
    whole = text.lstrip("-").split(".", 1)[0].lstrip("0")
    if len(whole) > 19:
        return None
    if "." in text:
        return float(text)
    value = int(text)
    return value if -INT64_MAX - 1 <= value <= INT64_MAX else None


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


def _quote_hint(left: _Typed, right: _Typed) -> str:
    """Suggest the fix for a literal of the wrong type compared with a typed operand."""
    for typed, lit in ((left, right), (right, left)):
        if lit.literal is None or typed.literal is not None:
            continue
        raw = lit.literal
        if typed.type == "string":
            return f'; quote the value: "{raw}"'
        unquoted = raw[1:-1] if lit.type == "string" else None
        if unquoted is not None and typed.type == "number" and re.fullmatch(r"-?\d+(\.\d+)?", unquoted):
            return f"; remove the quotes: {unquoted}"
        if unquoted in ("true", "false") and typed.type == "bool":
            return f"; remove the quotes: {unquoted}"
    return ""
