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
    comparison := sum [("<" | "<=" | ">" | ">=" | "==" | "!=") sum]   # non-associative
                | sum ["not"] "in" "[" value ("," value)* [","] "]"
                | sum ("contains" | "startswith") sum ["ignore_case"]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := NAME | NUMBER | STRING | DATE | "today" | "true" | "false" | "null"
                | FUNCTION "(" STRING ["," "within_days" "=" NUMBER] ")" | "(" or_expr ")"

    NAME    identifiers [A-Za-z_][A-Za-z0-9_]* joined by dots: purchases, cf.loyalty_level,
            lifecycle.regular_asleep. Names that merely start with a keyword (android,
            order_count, notes, nothing, inactive, today_x) are ordinary names. A name
            compiles to pl.col(name).
    NUMBER  100000, 1.5 (integer or decimal; -1 is unary minus on 1, folded into the literal)
    STRING  "..." or '...'; a backslash escapes the quote or a backslash; one line only.
    DATE    2026-01-31 (YYYY-MM-DD, a real calendar date)
    FUNCTION  bought, times_bought, days_since_bought, spent_on (see rules.products)

So ``not`` binds tighter than ``and``, which binds tighter than ``or``; comparisons, ``in``
and ``contains`` bind tighter than ``not`` (``not x in [1, 2]`` is ``x not in [1, 2]``);
arithmetic binds tighter than comparisons, ``*`` and ``/`` tighter than ``+`` and ``-``,
unary minus tightest (``-a * b`` is ``(-a) * b``). ``1 < x < 5`` is a syntax error (write
``1 < x and x < 5``).

Types: number, string, bool, date. Numbers compare with all six operators, and so do
dates; strings and bools only with == and !=; anything compares with ``null`` only through
== / != (compiled to is_null / is_not_null). ``+ - * /`` take numbers and give a number,
computed in 64-bit floating point (no integer wrap-around); ``date + number``,
``number + date`` and ``date - number`` move a date by whole days (a fraction is rounded
down) and give a date; ``date - date`` is the number of days between them. ``today`` is
the run's date (``as_of``), supplied when the rules are evaluated. ``x in [...]`` needs
list values of x's type (literals only, no null). ``contains`` / ``startswith`` take
strings; ``ignore_case`` compares both sides in lower case. Operands of and/or/not and the
whole rule must be bool (a bool name, a comparison, true/false, ``bought(...)``). Errors
raise RuleError at the offending position; type errors of an operator point at it.

Null semantics: inside the rule, SQL three-valued (Kleene) logic applies: a comparison
with a null value is null, ``null or true`` is true, ``null and false`` is false,
``not null`` is null. Arithmetic with a null operand is null, and so is a division by zero
(``x / 0`` is null, never an error or infinity); ``in``, ``contains`` and ``startswith``
of a null value are null. The final expression is ``.fill_null(False)``: a rule that is
unknown for a customer does not select it. Hence for a prospect whose ``recency_days``
is null, both ``recency_days > 90`` and ``not (recency_days > 90)`` are False; test
for missing values explicitly with ``recency_days == null``.

Product functions compile to hidden columns (``CompiledRule.products``) that
``rules.products.add_rule_inputs`` fills before evaluation. A product that a given
catalogue does not know is a warning (``CompiledRule.warnings``), never an error.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal, Mapping, NamedTuple

import polars as pl
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from rules.products import (
    KNOWN_COLUMN,
    PRODUCT_FUNCTIONS,
    SECTION_PREFIX,
    TODAY_COLUMN,
    ProductCall,
    ProductCatalogue,
)

__all__ = ["FeatureType", "RuleError", "CompiledRule", "compile_rule", "product_warnings"]

FeatureType = Literal["number", "string", "bool", "date"]

_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr -> not_
         | comparison
?comparison: sum COMP_OP sum -> compare
           | sum IN list -> in_
           | sum NOT IN list -> in_
           | sum CONTAINS sum IGNORE_CASE? -> text_match
           | sum STARTSWITH sum IGNORE_CASE? -> text_match
           | sum
?sum: product ((PLUS | MINUS) product)*
?product: unary (MUL_OP unary)*
?unary: MINUS unary -> neg
      | atom
?atom: NAME -> name
     | NUMBER -> number
     | STRING -> string
     | DATE -> date
     | TODAY -> today
     | TRUE -> true
     | FALSE -> false
     | NULL -> null
     | NAME LPAR [arg ("," arg)*] ")" -> call
     | "(" or_expr ")"
?arg: or_expr
    | NAME "=" or_expr -> kwarg
list: "[" sum ("," sum)* ","? "]"

_OR: "or"
_AND: "and"
NOT: "not"
IN: "in"
CONTAINS: "contains"
STARTSWITH: "startswith"
IGNORE_CASE: "ignore_case"
TODAY: "today"
TRUE: "true"
FALSE: "false"
NULL: "null"
LPAR: "("
PLUS: "+"
MINUS: "-"
MUL_OP: "*" | "/"
COMP_OP: "<=" | ">=" | "==" | "!=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*/
DATE.2: /[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])/
NUMBER: /[0-9]+(\.[0-9]+)?/
STRING: /"(\\.|[^"\\\n])*"/ | /'(\\.|[^'\\\n])*'/
%import common.WS
%ignore WS
"""

# Built once at import. lark resolves the keyword terminals against NAME by exact
# match, so `android` or `notes` lex as NAME, never as `and` + `roid`.
_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="basic", propagate_positions=True)

_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null", "in", "contains", "startswith",
                       "ignore_case", "today"})
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}
_ESCAPE = re.compile(r"\\(.)")
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_FUNCTIONS = ", ".join(PRODUCT_FUNCTIONS)


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
    today: bool = False  # uses `today`: the frame needs rules.products.TODAY_COLUMN
    products: tuple[ProductCall, ...] = ()  # product calls: hidden columns to add before evaluation
    warnings: tuple[str, ...] = ()  # unknown products (when a catalogue was given)


class _Typed(NamedTuple):
    type: str  # "number" | "string" | "bool" | "date" | "null"
    expr: pl.Expr
    desc: str  # for messages: "number 'purchases'", "string \"vip\"", "condition"
    line: int
    column: int
    literal: str | None = None  # the raw text of a literal, for hints
    value: object = None  # a literal's Python value (for `in` lists)


def compile_rule(source: str, schema: Mapping[str, FeatureType], *, segment: str,
                 catalogue: ProductCatalogue | None = None) -> CompiledRule:
    """Parse, type-check and compile `source`; raise RuleError on any problem.

    With a ``catalogue``, every product the rule names that the catalogue does not know gives a warning
    in ``CompiledRule.warnings`` (with near matches); the rule still compiles."""
    if not source.strip():
        raise RuleError(segment, source, 1, 1, "empty rule")
    tree = _parse(source, segment)
    compiler = _Compiler(source, schema, segment)
    try:
        result = compiler.compile(tree)
    except RecursionError:
        raise RuleError(segment, source, 1, 1, "rule is too deeply nested") from None
    compiler.require_bool(result)
    products = tuple(compiler.products)
    warnings = tuple(_warnings(segment, products, catalogue)) if catalogue is not None else ()
    expr = result.expr & pl.col(KNOWN_COLUMN) if products else result.expr  # no product rows: selects nobody
    return CompiledRule(source, expr.fill_null(False), frozenset(compiler.references),
                        compiler.today, products, warnings)


def product_warnings(rules: Mapping[str, CompiledRule], catalogue: ProductCatalogue) -> list[str]:
    """Warnings for every product that ``rules`` (segment name -> rule) name and ``catalogue`` does not
    know, e.g. when the catalogue is only read from the mirror after the config has loaded."""
    return [w for segment, rule in rules.items() for w in _warnings(segment, rule.products, catalogue)]


def _warnings(segment: str, calls: Iterable[ProductCall], catalogue: ProductCatalogue) -> Iterable[str]:
    for call in calls:
        if catalogue.knows(call):
            continue
        what = "section" if call.is_section else "product"
        near = catalogue.near(call)
        tail = f"near matches: {', '.join(repr(n) for n in near)}" if near else f"no similar {what} in the catalogue"
        yield (f"segment {segment!r}: when: unknown {what} {call.ref!r} at line {call.line}, column {call.column} "
               f"({tail}); the rule treats it as never bought")


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
        where = e.pos_in_stream if e.pos_in_stream is not None else len(source)
        error = RuleError(segment, source, e.line, e.column, reason, hint)
    except (UnexpectedToken, UnexpectedEOF) as e:
        token = getattr(e, "token", None)
        if token is None or token.type == "$END":
            head = source.rstrip()
            line, column = head.count("\n") + 1, len(head) - head.rfind("\n")
            where = len(source)
            error = RuleError(segment, source, line, column, "unexpected end of rule")
        else:
            hint = None
            if token.value.lower() in _KEYWORDS and token.value not in _KEYWORDS:
                hint = f"keywords are lowercase: '{token.value.lower()}'"
            elif token.value == "=":
                hint = "use '==' to compare"
            elif token.type == "DATE":
                hint = "a date like 2026-01-31 is one value; put spaces around '-' to subtract numbers"
            where = token.start_pos if token.start_pos is not None else len(source)
            error = RuleError(segment, source, token.line, token.column,
                              f"unexpected '{token.value}'", hint)
    except UnexpectedInput as e:
        where = len(source)
        error = RuleError(segment, source, e.line, e.column, "invalid rule")
    call = _unknown_call(source, where)
    if call is not None:  # the earlier mistake first: `__import__('os').system(...)` is about the '('
        name, lpar = call
        error = RuleError(segment, source, lpar.line, lpar.column, "unexpected '('", _not_a_function(str(name)))
    raise error


def _unknown_call(source: str, before: int) -> tuple[Token, Token] | None:
    """The first `name(` whose name is not a function, starting before offset ``before``."""
    previous = None
    try:
        for token in _PARSER.lex(source):
            if token.start_pos is not None and token.start_pos >= before:
                return None
            if (token.type == "LPAR" and previous is not None and previous.type == "NAME"
                    and str(previous) not in PRODUCT_FUNCTIONS):
                return previous, token
            previous = token
    except UnexpectedInput:
        return None
    return None


def _not_a_function(name: str) -> str:
    close = difflib.get_close_matches(name, list(PRODUCT_FUNCTIONS), n=1)
    return f"'{name}' is not a function; " + (f"did you mean '{close[0]}'?" if close else f"the functions are {_FUNCTIONS}")


class _Compiler:
    def __init__(self, source: str, schema: Mapping[str, FeatureType], segment: str) -> None:
        self.source, self.schema, self.segment = source, schema, segment
        self.references: set[str] = set()
        self.products: list[ProductCall] = []
        self.today = False

    def error(self, line: int, column: int, reason: str, hint: str | None = None) -> RuleError:
        return RuleError(self.segment, self.source, line, column, reason, hint)

    def require_bool(self, node: _Typed) -> pl.Expr:
        if node.type != "bool":
            raise self.error(node.line, node.column,
                             f"expected a true/false condition, got {node.desc}")
        return node.expr

    def describe(self, node: Tree, kind: str) -> str:
        """``number 'purchases + 1'``: the type and the rule's own text of an expression."""
        text = " ".join(self.source[node.meta.start_pos:node.meta.end_pos].split())
        return f"{kind} '{_short(text)}'"

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
        if kind == "in_":
            return self.membership(node)
        if kind == "text_match":
            return self.text_match(node)
        if kind in ("sum", "product"):
            return self.arithmetic(node)
        if kind == "neg":
            return self.negate(node)
        if kind == "call":
            return self.call(node)
        if kind in ("kwarg", "list"):  # only inside calls / after `in`; the grammar allows nothing else
            raise self.error(line, column, "invalid rule")
        token: Token = node.children[0]
        text = str(token)
        if kind == "name":
            self.references.add(text)
            if text not in self.schema:
                close = difflib.get_close_matches(text, list(self.schema), n=1)
                hint = f"did you mean '{close[0]}'?" if close else None
                if text in PRODUCT_FUNCTIONS:
                    hint = f"'{text}' is a function: {text}(\"product name\")"
                raise self.error(line, column, f"unknown feature '{text}'", hint)
            kind_of = self.schema[text]
            return _Typed(kind_of, pl.col(text), f"{kind_of} '{text}'", line, column)
        if kind == "number":
            return self.number(text, line, column)
        if kind == "string":
            value = _ESCAPE.sub(lambda m: self.unescape(m, token), text[1:-1])
            return _Typed("string", pl.lit(value), f"string {text}", line, column, text, value)
        if kind == "date":
            try:
                day = date.fromisoformat(text)
            except ValueError:
                raise self.error(line, column, f"invalid date {text}",
                                 "dates are written YYYY-MM-DD, e.g. 2026-01-31") from None
            return _Typed("date", pl.lit(day, pl.Date), f"date {text}", line, column, text, day)
        if kind == "today":
            self.today = True
            return _Typed("date", pl.col(TODAY_COLUMN), "date today", line, column)
        if kind in ("true", "false"):
            return _Typed("bool", pl.lit(kind == "true"), f"bool {text}", line, column, text, kind == "true")
        return _Typed("null", pl.lit(None), "null", line, column, text)  # kind == "null"

    def number(self, text: str, line: int, column: int) -> _Typed:
        value = _number(text)
        if value is None:
            raise self.error(line, column, f"number {_short(text)} is too large",
                             "numbers in rules must lie within ±9223372036854775807")
        return _Typed("number", pl.lit(value), f"number {text}", line, column, text, value)

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
        if left.type not in ("number", "date") and op not in ("==", "!="):
            raise self.error(*at, f"cannot order {left.type}s with '{op}'",
                             "only == and != apply to strings and bools")
        return _Typed("bool", _OPS[op](left.expr, right.expr), "condition", left.line, left.column)

    def membership(self, node: Tree) -> _Typed:
        left_node, *ops, list_node = node.children
        left, negated, at = self.compile(left_node), len(ops) == 2, (ops[0].line, ops[0].column)
        word = "not in" if negated else "in"
        if left.type == "null":
            raise self.error(*at, f"cannot use null with '{word}'", "use '== null' or '!= null'")
        values = []
        for item_node in list_node.children:
            item = self.compile(item_node)
            if item.type == "null":
                raise self.error(item.line, item.column, "null cannot be in a list",
                                 "test for a missing value with '== null'")
            if item.literal is None:
                raise self.error(item.line, item.column, f"a list holds values only, got {item.desc}",
                                 "write numbers, quoted text, dates or true/false")
            if item.type != left.type:
                raise self.error(item.line, item.column,
                                 f"cannot compare {left.desc} with {item.desc}" + _quote_hint(left, item))
            values.append(item.value)
        dtype = {"number": pl.Float64, "string": pl.String, "date": pl.Date, "bool": pl.Boolean}[left.type]
        subject = left.expr.cast(pl.Float64) if left.type == "number" else left.expr
        expr = subject.is_in(pl.Series(values, dtype=dtype).implode())
        return _Typed("bool", ~expr if negated else expr, "condition", left.line, left.column)

    def text_match(self, node: Tree) -> _Typed:
        left_node, op_token, right_node, *flag = node.children
        left, right = self.compile(left_node), self.compile(right_node)
        op = str(op_token)
        for side in (left, right):
            if side.type != "string":
                hint = _quote_hint(right, left) if side is right else None
                raise self.error(op_token.line, op_token.column, f"'{op}' applies to strings, not {side.desc}",
                                 hint.lstrip("; ") if hint else None)
        subject, pattern = left.expr, right.expr
        if flag:
            subject, pattern = subject.str.to_lowercase(), pattern.str.to_lowercase()
        expr = subject.str.contains(pattern, literal=True) if op == "contains" else subject.str.starts_with(pattern)
        return _Typed("bool", expr, "condition", left.line, left.column)

    def arithmetic(self, node: Tree) -> _Typed:
        children = node.children
        self.check_date_typo(children)
        result = self.compile(children[0])
        for op_token, right_node in zip(children[1::2], children[2::2]):
            right = self.compile(right_node)
            # The description covers the expression up to this operand: "a + b" of "a + b + c".
            text = " ".join(self.source[node.meta.start_pos:right_node.meta.end_pos].split())
            result = self.apply(result, op_token, right, text)
        return result

    def check_date_typo(self, children: list) -> None:
        """``2026-1-31`` (no spaces, one-digit month or day) is a date written wrong, not 2026 - 1 - 31."""
        for i in range(0, len(children) - 4, 2):
            parts = children[i:i + 5]
            numbers, ops = parts[0::2], parts[1::2]
            if not all(isinstance(n, Tree) and n.data == "number" for n in numbers):
                continue
            texts = [str(n.children[0]) for n in numbers]
            tight = all(a.meta.end_pos == op.start_pos and op.end_pos == b.meta.start_pos
                        for a, op, b in zip(numbers, ops, numbers[1:]))
            if (tight and all(str(op) == "-" for op in ops) and re.fullmatch(r"\d{4}", texts[0])
                    and all(re.fullmatch(r"\d{1,2}", t) for t in texts[1:])):
                first = numbers[0].meta
                raise self.error(first.line, first.column, f"invalid date {'-'.join(texts)}",
                                 "dates are written YYYY-MM-DD, e.g. 2026-01-31")

    def apply(self, left: _Typed, op_token: Token, right: _Typed, text: str) -> _Typed:
        op, at = str(op_token), (op_token.line, op_token.column)
        types = (left.type, right.type)
        if "null" in types:
            raise self.error(*at, f"cannot use null with '{op}'", "test for a missing value with '== null'")
        if types == ("number", "number"):
            a, b = left.expr.cast(pl.Float64), right.expr.cast(pl.Float64)
            if op == "/":
                expr = pl.when(b != 0).then(a / b).otherwise(pl.lit(None, pl.Float64))
            else:
                expr = {"+": a + b, "-": a - b, "*": a * b}[op]
            kind = "number"
        elif types == ("date", "number") and op in "+-" or types == ("number", "date") and op == "+":
            day, shift = (left, right) if left.type == "date" else (right, left)
            days = shift.expr.cast(pl.Float64).floor().cast(pl.Int64, strict=False)
            moved = day.expr.cast(pl.Int64) + days if op == "+" else day.expr.cast(pl.Int64) - days
            expr, kind = moved.cast(pl.Int32, strict=False).cast(pl.Date), "date"
        elif types == ("date", "date") and op == "-":
            expr, kind = left.expr.cast(pl.Int64) - right.expr.cast(pl.Int64), "number"
        else:
            hint = None
            if "date" in types and "number" in types:
                hint = "a date takes + or - a number of days; two dates give their difference with -"
            elif "date" in types and op != "-":
                hint = "dates subtract ('-') to a number of days; other operators need numbers"
            raise self.error(*at, f"cannot use '{op}' with {left.desc} and {right.desc}", hint)
        return _Typed(kind, expr, f"{kind} '{_short(text)}'", left.line, left.column)

    def negate(self, node: Tree) -> _Typed:
        minus, operand = node.children
        if isinstance(operand, Tree) and operand.data == "number":  # -5 is a literal, as before
            return self.number("-" + str(operand.children[0]), minus.line, minus.column)
        inner = self.compile(operand)
        if inner.type != "number":
            raise self.error(minus.line, minus.column, f"cannot negate {inner.desc}",
                             "unary minus applies to numbers")
        return _Typed("number", -inner.expr.cast(pl.Float64), self.describe(node, "number"),
                      minus.line, minus.column)

    def call(self, node: Tree) -> _Typed:
        name_token, lpar, *args = node.children
        function = str(name_token)
        if function not in PRODUCT_FUNCTIONS:
            raise self.error(lpar.line, lpar.column, "unexpected '('", _not_a_function(function))
        kind, windowed = PRODUCT_FUNCTIONS[function]
        example = f'{function}("Lenses")'
        positional = [a for a in args if a is not None and not (isinstance(a, Tree) and a.data == "kwarg")]
        keywords = [a for a in args if isinstance(a, Tree) and a.data == "kwarg"]
        if not positional:
            raise self.error(lpar.line, lpar.column, f"{function}() needs a product", f"e.g. {example}")
        if len(positional) > 1:
            extra = positional[1]
            raise self.error(extra.meta.line, extra.meta.column, f"{function}() takes one product",
                             "name a section with \"section:NAME\", or combine calls with or")
        product = positional[0]
        if not (isinstance(product, Tree) and product.data == "string"):
            raise self.error(product.meta.line, product.meta.column,
                             f"{function}() needs the product as quoted text", f"e.g. {example}")
        ref = self.compile(product).value
        assert isinstance(ref, str)
        bare = ref[len(SECTION_PREFIX):] if ref[: len(SECTION_PREFIX)].lower() == SECTION_PREFIX else ref
        if not bare.strip():
            raise self.error(product.meta.line, product.meta.column, f"{function}(): empty product name",
                             f"e.g. {example} or {function}(\"section:Glasses\")")
        within: int | None = None
        seen: set[str] = set()
        for kw in keywords:
            key_token, value_node = kw.children
            key = str(key_token)
            if key != "within_days" or not windowed:
                allowed = "within_days=N" if windowed else "no options"
                raise self.error(key_token.line, key_token.column, f"{function}() has no option '{key}'",
                                 f"{function}() takes {allowed}")
            if key in seen:
                raise self.error(key_token.line, key_token.column, f"{function}(): '{key}' given twice")
            seen.add(key)
            if not (isinstance(value_node, Tree) and value_node.data == "number"
                    and re.fullmatch(r"[0-9]+", str(value_node.children[0]))):
                raise self.error(value_node.meta.line, value_node.meta.column,
                                 "within_days must be a whole number of days, 0 or more", "e.g. within_days=30")
            value = _number(str(value_node.children[0]))
            if value is None:
                raise self.error(value_node.meta.line, value_node.meta.column, "within_days is too large")
            within = int(value)
        call = ProductCall(function, ref, within, name_token.line, name_token.column)
        self.products.append(call)
        return _Typed(kind, pl.col(call.name), self.describe(node, kind), name_token.line, name_token.column)


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
        if unquoted is not None and typed.type == "date" and _DATE_TEXT.fullmatch(unquoted):
            return f"; remove the quotes: {unquoted}"
        if typed.type == "date" and lit.type == "number":
            return "; write a date as 2026-01-31, or count days from today: today - 30"
    return ""
