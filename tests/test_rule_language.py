"""Tests for rules.language: parse once, type-check, compile to one vectorised polars expression."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import polars as pl
import pytest

from rules import language
from rules.language import CompiledRule, RuleError, compile_rule

SCHEMA: dict[str, language.FeatureType] = {
    "purchases": "number",
    "recency_days": "number",
    "monetary": "number",
    "responsible_id": "string",
    "has_phone": "bool",
    "has_email": "bool",
    "a": "bool",
    "b": "bool",
    "c": "bool",
    "lifecycle.regular_asleep": "bool",
    "cf.loyalty_level": "number",
    "android": "bool",
    "order_count": "number",
    "notes": "string",
    "nothing": "bool",
    "true_value": "number",
    "nullable": "bool",
    "orca": "bool",
}


def run(rule: str, frame: pl.DataFrame, schema=SCHEMA) -> list[bool]:
    compiled = compile_rule(rule, schema, segment="test")
    return frame.with_columns(compiled.expr.alias("hit"))["hit"].to_list()  # broadcasts literals


def error(rule: str, schema=SCHEMA, segment: str = "vip") -> RuleError:
    with pytest.raises(RuleError) as info:
        compile_rule(rule, schema, segment=segment)
    return info.value


# --- logic and precedence -------------------------------------------------------------

ABC = pl.DataFrame(
    list(itertools.product([True, False], repeat=3)), schema=["a", "b", "c"], orient="row"
)
ROWS = list(ABC.iter_rows())


@pytest.mark.parametrize(
    "rule, truth",
    [
        ("a or b and c", lambda a, b, c: a or (b and c)),
        ("a and b or c", lambda a, b, c: (a and b) or c),
        ("(a or b) and c", lambda a, b, c: (a or b) and c),
        ("not a and b", lambda a, b, c: (not a) and b),
        ("not (a and b)", lambda a, b, c: not (a and b)),
        ("not a or not b and c", lambda a, b, c: (not a) or ((not b) and c)),
        ("not not a", lambda a, b, c: a),
        ("a and b and c", lambda a, b, c: a and b and c),
        ("a or b or c", lambda a, b, c: a or b or c),
        ("((a))", lambda a, b, c: a),
        ("a == b", lambda a, b, c: a == b),
        ("a != c", lambda a, b, c: a != c),
        ("a == true", lambda a, b, c: a),
        ("b == false", lambda a, b, c: not b),
        ("(a or b) == c", lambda a, b, c: (a or b) == c),
        ("true", lambda a, b, c: True),
        ("false or c", lambda a, b, c: c),
    ],
)
def test_boolean_logic_and_precedence(rule, truth):
    assert run(rule, ABC) == [truth(*row) for row in ROWS]


def test_not_binds_looser_than_comparison():
    frame = pl.DataFrame({"purchases": [1, 5]})
    assert run("not purchases > 3", frame) == [True, False]


def test_whitespace_and_newlines_are_free():
    frame = pl.DataFrame({"purchases": [1, 5], "has_phone": [True, True]})
    assert run("\n  purchases>=4\n\tand\n has_phone  \n", frame) == [False, True]


# --- numbers --------------------------------------------------------------------------

BOUNDARY = pl.DataFrame({"recency_days": [89, 90, 91]})


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("recency_days < 90", [True, False, False]),
        ("recency_days <= 90", [True, True, False]),
        ("recency_days > 90", [False, False, True]),
        ("recency_days >= 90", [False, True, True]),
        ("recency_days == 90", [False, True, False]),
        ("recency_days != 90", [True, False, True]),
        ("90 < recency_days", [False, False, True]),
        ("90 >= recency_days", [True, True, False]),
        ("recency_days > 89.5", [False, True, True]),
        ("recency_days > -1", [True, True, True]),
        ("recency_days>90", [False, False, True]),
    ],
)
def test_number_operators_at_boundaries(rule, expected):
    assert run(rule, BOUNDARY) == expected


def test_decimal_negative_and_large_literals():
    frame = pl.DataFrame({"monetary": [-2.0, -1.5, 0.0, 99_999.0, 100_000.0]})
    assert run("monetary <= -1.5", frame) == [True, True, False, False, False]
    assert run("monetary >= 100000", frame) == [False, False, False, False, True]
    assert run("monetary == 0", frame) == [False, False, True, False, False]


def test_two_number_features():
    frame = pl.DataFrame({"purchases": [1, 3, 5], "order_count": [2, 3, 4]})
    assert run("purchases >= order_count", frame) == [False, True, True]


# --- strings --------------------------------------------------------------------------


def test_string_equality_both_quotes():
    frame = pl.DataFrame({"responsible_id": ["17", "42", None]})
    assert run('responsible_id == "17"', frame) == [True, False, False]
    assert run("responsible_id == '17'", frame) == [True, False, False]
    assert run('"42" == responsible_id', frame) == [False, True, False]
    assert run('responsible_id != "17"', frame) == [False, True, False]  # null stays unselected


def test_string_escapes():
    frame = pl.DataFrame({"notes": ['say "hi"', "it's", "back\\slash", "plain"]})
    assert run(r'notes == "say \"hi\""', frame) == [True, False, False, False]
    assert run(r"notes == 'it\'s'", frame) == [False, True, False, False]
    assert run(r'notes == "it' + "'" + 's"', frame) == [False, True, False, False]
    assert run(r'notes == "back\\slash"', frame) == [False, False, True, False]


def test_keyword_inside_string_is_just_text():
    frame = pl.DataFrame({"notes": ["and or not", "x"]})
    assert run('notes == "and or not"', frame) == [True, False]


# --- nulls ----------------------------------------------------------------------------

PEOPLE = pl.DataFrame(
    {
        "purchases": [0, 5, 2],
        "recency_days": [None, 120, 30],  # row 0 is a prospect: never bought
        "has_phone": [True, None, False],
    }
)


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("recency_days > 90", [False, True, False]),
        ("not (recency_days > 90)", [False, False, True]),
        ("not recency_days > 90", [False, False, True]),
        ("recency_days <= 90", [False, False, True]),
        ("recency_days == null", [True, False, False]),
        ("null == recency_days", [True, False, False]),
        ("recency_days != null", [False, True, True]),
        ("recency_days > 90 or purchases == 0", [True, True, False]),  # null or true = true
        ("recency_days > 90 and true", [False, True, False]),  # null and true = null -> false
        ("recency_days > 90 and false", [False, False, False]),
        ("not (recency_days > 90 and false)", [True, True, True]),  # null and false = false
        ("recency_days == null or recency_days > 90", [True, True, False]),
        ("has_phone", [True, False, False]),
        ("not has_phone", [False, False, True]),
        ("has_phone == null", [False, True, False]),
        ("null == null", [True, True, True]),
        ("null != null", [False, False, False]),
    ],
)
def test_null_semantics(rule, expected):
    assert run(rule, PEOPLE) == expected


def test_expression_has_no_nulls_and_is_boolean():
    compiled = compile_rule("recency_days > 90", SCHEMA, segment="s")
    result = PEOPLE.select(compiled.expr)
    assert result.dtypes == [pl.Boolean]
    assert result.null_count().item() == 0


# --- names ----------------------------------------------------------------------------


def test_bool_names():
    frame = pl.DataFrame({"has_phone": [True, True, False], "has_email": [True, False, False]})
    assert run("has_phone and not has_email", frame) == [False, True, False]
    assert run("has_phone == has_email", frame) == [True, False, True]


def test_dotted_names():
    frame = pl.DataFrame(
        {"lifecycle.regular_asleep": [True, False, False], "cf.loyalty_level": [1, 3, 2]}
    )
    assert run("lifecycle.regular_asleep or cf.loyalty_level >= 3", frame) == [True, True, False]
    compiled = compile_rule("lifecycle.regular_asleep", SCHEMA, segment="s")
    assert compiled.references == {"lifecycle.regular_asleep"}


def test_keywords_as_name_prefixes():
    frame = pl.DataFrame(
        {
            "android": [True, True, False],
            "nothing": [False, True, False],
            "order_count": [2, 2, 2],
            "notes": ["x", "x", "x"],
            "true_value": [1, 1, 1],
            "nullable": [True, True, True],
            "orca": [True, True, True],
        }
    )
    rule = 'android and not nothing and order_count > 1 and notes == "x" and true_value == 1 and nullable and orca'
    assert run(rule, frame) == [True, False, False]
    compiled = compile_rule(rule, SCHEMA, segment="s")
    assert compiled.references == {
        "android", "nothing", "order_count", "notes", "true_value", "nullable", "orca"
    }


# --- errors ---------------------------------------------------------------------------


def test_unknown_feature_message_with_suggestion():
    err = error("purchses > 3")
    assert (err.segment, err.line, err.column) == ("vip", 1, 1)
    assert err.reason == "unknown feature 'purchses'"
    lines = str(err).splitlines()
    assert lines[0] == (
        "segment 'vip': when: unknown feature 'purchses' at line 1, column 1 "
        "(did you mean 'purchases'?)"
    )
    assert lines[1].strip() == "purchses > 3"
    assert lines[2].index("^") == lines[1].index("purchses")
    assert isinstance(err, ValueError)


def test_unknown_feature_without_suggestion():
    err = error("has_phone and zzzzzz")
    assert (err.line, err.column, err.reason) == (1, 15, "unknown feature 'zzzzzz'")
    assert "did you mean" not in str(err)


def test_multiline_position_and_caret():
    err = error("purchases >= 4\n  and recency_dayz > 90")
    assert (err.line, err.column) == (2, 7)
    assert "did you mean 'recency_days'?" in str(err)
    lines = str(err).splitlines()
    assert lines[1].strip() == "and recency_dayz > 90"
    assert lines[2].index("^") == lines[1].index("recency_dayz")


def test_string_vs_number_mismatch_suggests_quotes():
    err = error("purchases > 1 and responsible_id == 17")
    assert (err.line, err.column) == (1, 34)
    assert err.reason == (
        "cannot compare string 'responsible_id' with number 17; quote the value: \"17\""
    )


def test_number_vs_quoted_number_suggests_removing_quotes():
    err = error('purchases == "3"')
    assert (err.line, err.column) == (1, 11)
    assert err.reason.startswith("cannot compare number 'purchases' with string \"3\"")
    assert "remove the quotes: 3" in err.reason


def test_bool_vs_number_mismatch():
    err = error("\nhas_phone == 1")
    assert (err.line, err.column) == (2, 11)
    assert err.reason == "cannot compare bool 'has_phone' with number 1"


def test_cannot_order_strings_or_bools():
    err = error('responsible_id < "5"')
    assert (err.line, err.column, err.reason) == (1, 16, "cannot order strings with '<'")
    err = error("has_phone >= has_email")
    assert (err.line, err.column, err.reason) == (1, 11, "cannot order bools with '>='")


def test_null_only_with_equality():
    err = error("recency_days > null")
    assert (err.line, err.column) == (1, 14)
    assert err.reason == "cannot compare with null using '>'"


@pytest.mark.parametrize(
    "rule, line, column, got",
    [
        ("purchases", 1, 1, "number 'purchases'"),
        ("responsible_id", 1, 1, "string 'responsible_id'"),
        ("has_phone and purchases", 1, 15, "number 'purchases'"),
        ("purchases or has_phone", 1, 1, "number 'purchases'"),
        ("not notes", 1, 5, "string 'notes'"),
        ("has_phone and\n  (42)", 2, 4, "number 42"),
        ("null", 1, 1, "null"),
        ('"yes"', 1, 1, 'string "yes"'),
    ],
)
def test_non_bool_conditions(rule, line, column, got):
    err = error(rule)
    assert (err.line, err.column) == (line, column)
    assert err.reason == f"expected a true/false condition, got {got}"


@pytest.mark.parametrize("rule", ["", "   ", "\n\t\n"])
def test_empty_rule(rule):
    err = error(rule)
    assert (err.line, err.column, err.reason) == (1, 1, "empty rule")


@pytest.mark.parametrize(
    "rule, line, column, reason",
    [
        ("1 < purchases < 5", 1, 15, "unexpected '<'"),
        ("purchases >", 1, 12, "unexpected end of rule"),
        ("purchases > 1 and\n\n", 1, 18, "unexpected end of rule"),
        ("(has_phone", 1, 11, "unexpected end of rule"),
        ("has_phone)", 1, 10, "unexpected ')'"),
        ('notes == "abc', 1, 10, "unterminated string"),
        ("has_phone and\nnotes == 'abc", 2, 10, "unterminated string"),
        ('notes == "ab\nc"', 1, 10, "unterminated string"),
        ("purchases = 3", 1, 11, "unexpected '='"),
        ("has_phone && has_email", 1, 11, "unexpected '&'"),
        ("has_phone AND has_email", 1, 11, "unexpected 'AND'"),
        ("has_phone has_email", 1, 11, "unexpected 'has_email'"),
        ("purchases > > 3", 1, 13, "unexpected '>'"),
        ("and has_phone", 1, 1, "unexpected 'and'"),
        ("has_phone and or has_email", 1, 15, "unexpected 'or'"),
        ("purchases > 3x", 1, 14, "unexpected 'x'"),
        ("purchases > 1.5.2", 1, 16, "unexpected '.'"),
        ("purchases >= 4\n  and recency_days >< 90", 2, 21, "unexpected '<'"),
        ("__import__('os')", 1, 11, "unexpected '('"),
        ("__import__('os').system('true')", 1, 11, "unexpected '('"),
        ("purchases % 2 == 1", 1, 11, "unexpected '%'"),
        (r'notes == "a\n"', 1, 12, "unknown escape '\\n' in string"),
    ],
)
def test_syntax_errors(rule, line, column, reason):
    err = error(rule)
    assert (err.line, err.column, err.reason) == (line, column, reason)
    assert "$END" not in str(err) and "Token" not in str(err)
    assert str(err).startswith(f"segment 'vip': when: {reason} at line {line}, column {column}")


def test_syntax_error_hints():
    assert "use '==' to compare" in str(error("purchases = 3"))
    assert "keywords are lowercase: 'and'" in str(error("has_phone AND has_email"))


def test_lark_exceptions_do_not_leak():
    with pytest.raises(RuleError) as info:
        compile_rule("purchases >", SCHEMA, segment="s")
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_dunder_access_is_just_an_unknown_name():
    err = error("purchases.__class__ == null")
    assert err.reason == "unknown feature 'purchases.__class__'"


def test_compile_never_evaluates_python(monkeypatch):
    import builtins

    def boom(*args, **kwargs):
        raise AssertionError("eval/exec must not be called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    compile_rule("purchases >= 4 and (has_phone or responsible_id == '7')", SCHEMA, segment="s")
    assert error("__import__('os')").reason == "unexpected '('"


def test_parser_is_built_once_at_import(monkeypatch):
    assert isinstance(language._PARSER, language.Lark)

    def no_new_parsers(*args, **kwargs):
        raise AssertionError("compile_rule must reuse the module-level parser")

    monkeypatch.setattr(language, "Lark", no_new_parsers)
    compile_rule("purchases > 1", SCHEMA, segment="s")


def test_deep_nesting_is_a_rule_error_not_a_crash():
    frame = pl.DataFrame({"has_phone": [True, False]})
    assert run("not " * 50 + "has_phone", frame) == [True, False]
    err = error("not " * 5000 + "has_phone")
    assert (err.line, err.column, err.reason) == (1, 1, "rule is too deeply nested")


def test_long_flat_rules_stay_fast():
    frame = pl.DataFrame({"purchases": [0, 1, 2_000, 5_000]})
    rule = " or ".join(f"purchases == {i}" for i in range(1, 2_001))
    assert run(rule, frame) == [False, True, True, False]
    rule = " and ".join(f"purchases != {i}" for i in range(1, 2_001))
    assert run(rule, frame) == [True, False, False, True]


# --- the CompiledRule -----------------------------------------------------------------


def test_compiled_rule_fields_and_references():
    source = (
        "(purchases >= 4 and recency_days > 90) or lifecycle.regular_asleep\n"
        " or (responsible_id == 'purchases' and not has_phone and cf.loyalty_level != null)"
        " or purchases < 2 or true"
    )
    compiled = compile_rule(source, SCHEMA, segment="s")
    assert isinstance(compiled, CompiledRule)
    assert compiled.source == source
    assert isinstance(compiled.expr, pl.Expr)
    assert compiled.references == frozenset(
        {"purchases", "recency_days", "lifecycle.regular_asleep", "responsible_id",
         "has_phone", "cf.loyalty_level"}
    )
    assert isinstance(compiled.references, frozenset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.source = "x"  # type: ignore[misc]


def test_literal_only_rule_broadcasts():
    frame = pl.DataFrame({"purchases": [1, 2, 3]})
    compiled = compile_rule("1 < 2", SCHEMA, segment="s")
    assert compiled.references == frozenset()
    assert frame.filter(compiled.expr).height == 3
    assert frame.filter(compile_rule("false", SCHEMA, segment="s").expr).height == 0


# --- vectorised over a large frame ----------------------------------------------------


def test_100k_rows_match_numpy():
    rng = np.random.default_rng(7)
    n = 100_000
    purchases = rng.integers(0, 10, n)
    recency = rng.integers(0, 400, n).astype(float)
    missing = rng.random(n) < 0.2
    has_phone = rng.random(n) < 0.5
    owner = rng.choice(np.array(["17", "42", "99"]), n)
    frame = pl.DataFrame(
        {
            "purchases": purchases,
            "recency_days": pl.Series(recency).set(pl.Series(missing), None),
            "has_phone": has_phone,
            "responsible_id": owner,
        }
    )
    assert frame["recency_days"].null_count() == missing.sum()
    rule = (
        'purchases >= 4 and (recency_days > 90 or not has_phone) and responsible_id != "99"'
        " or purchases == 0 and recency_days == null"
    )
    got = frame.select(compile_rule(rule, SCHEMA, segment="s").expr)
    known_old = ~missing & (recency > 90)
    expected = ((purchases >= 4) & (known_old | ~has_phone) & (owner != "99")) | (
        (purchases == 0) & missing
    )
    assert got.height == n
    np.testing.assert_array_equal(got.to_series().to_numpy(), expected)
    assert 1_000 < expected.sum() < n - 1_000


# === issue 17: arithmetic, in, contains/startswith, dates ==============================

from datetime import date  # noqa: E402

from rules.products import TODAY_COLUMN, add_rule_inputs  # noqa: E402

NUM_SCHEMA = {**SCHEMA, "x": "number", "y": "number", "z": "number", "w": "number", "s": "string",
              "t": "string", "day": "date", "other_day": "date", "flag": "bool", "inactive": "bool",
              "today_x": "number", "contains_x": "string", "index": "number"}
NUMS = pl.DataFrame(
    list(itertools.product([-3, 1, 2, 5], [1, 4], [-2, 3], [0, 7, 30])), schema=["x", "y", "z", "w"], orient="row"
)


def nrun(rule: str, frame: pl.DataFrame = NUMS) -> list[bool]:
    return run(rule, frame, NUM_SCHEMA)


def nerror(rule: str) -> RuleError:
    return error(rule, NUM_SCHEMA)


@pytest.mark.parametrize(
    "rule, truth",
    [
        ("x + y * z > w", lambda x, y, z, w: x + y * z > w),
        ("(x + y) * z > w", lambda x, y, z, w: (x + y) * z > w),
        ("x * y + z > w", lambda x, y, z, w: x * y + z > w),
        ("x - y - z == w", lambda x, y, z, w: (x - y) - z == w),  # left-associative
        ("x - (y - z) == w", lambda x, y, z, w: x - (y - z) == w),
        ("x / y / z < w", lambda x, y, z, w: (x / y) / z < w),
        ("x / y * z >= w", lambda x, y, z, w: (x / y) * z >= w),
        ("x + y / z > 1", lambda x, y, z, w: x + y / z > 1),
        ("-x * y > w", lambda x, y, z, w: (-x) * y > w),
        ("- x + y > 0", lambda x, y, z, w: -x + y > 0),
        ("x * -y > z", lambda x, y, z, w: x * -y > z),
        ("x - -y == 4", lambda x, y, z, w: x + y == 4),
        ("--x == x", lambda x, y, z, w: True),
        ("-(x - y) == y - x", lambda x, y, z, w: True),
        ("x-1 > z", lambda x, y, z, w: x - 1 > z),  # no spaces: "-1" is minus one, not a literal
        ("2 * 3 + 4 == 10", lambda x, y, z, w: True),
        ("2 + 3 * 4 == 14", lambda x, y, z, w: True),
        ("10 - 4 - 3 == 3", lambda x, y, z, w: True),
        ("7 / 2 == 3.5", lambda x, y, z, w: True),  # true division, also of integers
        ("x + y > z and w > 0 or x < 0", lambda x, y, z, w: (x + y > z and w > 0) or x < 0),
        ("not x + y > z", lambda x, y, z, w: not (x + y > z)),  # not binds looser than + and >
        ("not x in [1, 2]", lambda x, y, z, w: x not in (1, 2)),
        ("not x in [1, 2] and y == 4", lambda x, y, z, w: (x not in (1, 2)) and y == 4),
        ("x not in [1, 2] or w == 0", lambda x, y, z, w: x not in (1, 2) or w == 0),
        ("x + 1 in [2, 3]", lambda x, y, z, w: x + 1 in (2, 3)),
        ("x * y in [-12, 20]", lambda x, y, z, w: x * y in (-12, 20)),
        ("x in [-3, 5.0]", lambda x, y, z, w: x in (-3, 5)),
        ("w / 2 in [3.5, 15]", lambda x, y, z, w: w / 2 in (3.5, 15)),
    ],
)
def test_arithmetic_precedence_and_in(rule, truth):
    assert nrun(rule) == [truth(*row) for row in NUMS.iter_rows()]


def test_arithmetic_does_not_wrap_around_64_bit_integers():
    frame = pl.DataFrame({"x": [2, -2], "y": [9_223_372_036_854_775_807, 1]})
    assert nrun("x * y > 0", frame) == [True, False]  # int64 would wrap 2 * (2**63 - 1) to -2
    assert nrun("y + y > y", frame) == [True, True]


# --- division by zero and null --------------------------------------------------------

ZERO = pl.DataFrame({"x": [6, 0, 5, None, 3], "y": [3, 0, 0, 2, None]})


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("x / y == 2", [True, False, False, False, False]),
        ("x / y == null", [False, True, True, True, True]),  # 0/0, 5/0 and null operands: null
        ("x / y != null", [True, False, False, False, False]),
        ("x / y > 0", [True, False, False, False, False]),
        ("not (x / y > 0)", [False, False, False, False, False]),  # unknown stays unselected
        ("x / y <= 0", [False, False, False, False, False]),
        ("x / 0 == null", [True, True, True, True, True]),
        ("x / (y - y) == null", [True, True, True, True, True]),
        ("x / -0.0 == null", [True, True, True, True, True]),
        ("x / y > 0 or x == 5", [True, False, True, False, False]),
        ("x + y == null", [False, False, False, True, True]),
        ("x - y > -100", [True, True, True, False, False]),
        ("not (x - y > -100)", [False, False, False, False, False]),
        ("-x == null", [False, False, False, True, False]),
        ("x * 0 == 0", [True, True, True, False, True]),  # null * 0 is null, not 0
        ("x in [6, 0]", [True, True, False, False, False]),
        ("x not in [6, 0]", [False, False, True, False, True]),  # null x: neither in nor not in
        ("not x in [6, 0]", [False, False, True, False, True]),
        ("x / y in [2]", [True, False, False, False, False]),
    ],
)
def test_division_by_zero_and_null_arithmetic(rule, expected):
    compiled = compile_rule(rule, NUM_SCHEMA, segment="s")
    result = ZERO.select(compiled.expr.alias("hit"))
    assert result["hit"].to_list() == expected
    assert result.dtypes == [pl.Boolean] and result.null_count().item() == 0


def test_division_yields_no_infinity_or_nan():
    frame = pl.DataFrame({"x": [1.0, -1.0, 0.0], "y": [0.0, 0.0, 0.0]})
    compiled = compile_rule("x / y == null", NUM_SCHEMA, segment="s")
    assert frame.select(compiled.expr).to_series().to_list() == [True, True, True]
    assert nrun("x / y > 1000000", frame) == [False, False, False]
    assert nrun("x / y < -1000000", frame) == [False, False, False]


# --- strings --------------------------------------------------------------------------

TEXT = pl.DataFrame({"s": ["Optics Moscow", "optics-spb", "ООО Ромашка", None, ""],
                     "t": ["Optics", "spb", "ромашка", "x", ""]})


@pytest.mark.parametrize(
    "rule, expected",
    [
        ('s contains "Optics"', [True, False, False, False, False]),
        ('s contains "optics" ignore_case', [True, True, False, False, False]),
        ('s contains "OPTICS" ignore_case', [True, True, False, False, False]),
        ('s startswith "optics"', [False, True, False, False, False]),
        ('s startswith "OPT" ignore_case', [True, True, False, False, False]),
        ('s startswith "Moscow"', [False, False, False, False, False]),
        ('s contains "ромашка"', [False, False, False, False, False]),
        ('s contains "ромашка" ignore_case', [False, False, True, False, False]),  # Cyrillic lower-cased too
        ('s startswith "ооо" ignore_case', [False, False, True, False, False]),
        ('s contains "."', [False, False, False, False, False]),  # literal text, never a regex
        ('s contains ""', [True, True, True, False, True]),
        ("s contains t", [True, True, False, False, True]),  # a string feature as the pattern
        ("s contains t ignore_case", [True, True, True, False, True]),
        ('not s contains "Optics"', [False, True, True, False, True]),  # null stays unselected
        ('s contains "Optics" or s startswith "opt"', [True, True, False, False, False]),
        ('s contains "Optics" and s startswith "Opt" ignore_case', [True, False, False, False, False]),
        ('s in ["optics-spb", ""]', [False, True, False, False, True]),
        ('s not in ["optics-spb", "",]', [True, False, True, False, False]),  # trailing comma
    ],
)
def test_contains_startswith_and_string_lists(rule, expected):
    assert nrun(rule, TEXT) == expected


# --- dates and today ------------------------------------------------------------------

AS_OF = date(2026, 3, 1)
DAYS = pl.DataFrame(
    {
        "day": [date(2026, 1, 30), date(2026, 1, 31), date(2026, 2, 1), None, date(2026, 3, 1), date(2026, 3, 2)],
        "other_day": [date(2026, 1, 1)] * 6,
        "x": [1.5, -1.5, 0, 2, 0, 0],
    }
)


def drun(rule: str, frame: pl.DataFrame = DAYS, as_of: date = AS_OF) -> list[bool]:
    compiled = compile_rule(rule, NUM_SCHEMA, segment="s")
    prepared = add_rule_inputs(frame, compiled.today, compiled.products, as_of=as_of)
    return prepared.select(compiled.expr).to_series().to_list()


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("day == 2026-01-31", [False, True, False, False, False, False]),
        ("day < 2026-01-31", [True, False, False, False, False, False]),
        ("day >= 2026-01-31", [False, True, True, False, True, True]),
        ("day != 2026-01-31", [True, False, True, False, True, True]),
        ("2026-01-31 < day", [False, False, True, False, True, True]),
        # as_of 2026-03-01 minus 30 days is 2026-01-30; minus 29 is 2026-01-31
        ("day >= today - 30", [True, True, True, False, True, True]),
        ("day > today - 30", [False, True, True, False, True, True]),
        ("day >= today - 29", [False, True, True, False, True, True]),
        ("day == today", [False, False, False, False, True, False]),
        ("day > today", [False, False, False, False, False, True]),
        ("day == today + 1", [False, False, False, False, False, True]),
        ("day == 1 + today", [False, False, False, False, False, True]),
        ("today - day == 30", [True, False, False, False, False, False]),
        ("today - day <= 29 and today - day >= 0", [False, True, True, False, True, False]),
        ("day - other_day == 30", [False, True, False, False, False, False]),
        ("day - 2026-01-01 == 31", [False, False, True, False, False, False]),
        ("day == null", [False, False, False, True, False, False]),
        ("not (day > today - 30)", [True, False, False, False, False, False]),  # null day: unselected
        ("day in [2026-01-30, 2026-03-02]", [True, False, False, False, False, True]),
        ("day not in [2026-01-30]", [False, True, True, False, True, True]),
        ("today == 2026-03-01", [True] * 6),
        ("today > 2026-02-28 and today < 2026-03-02", [True] * 6),
        ("day + x == 2026-01-31", [True, False, False, False, False, False]),  # +1.5 days: rounded down to +1
        ("day + x == 2026-01-29", [False, True, False, False, False, False]),  # -1.5 days: rounded down to -2
    ],
)
def test_dates_literals_and_today(rule, expected):
    assert drun(rule) == expected


def test_today_is_the_as_of_given_at_evaluation():
    compiled = compile_rule("day >= today - 1", NUM_SCHEMA, segment="s")
    assert compiled.today and TODAY_COLUMN not in compiled.references
    assert drun("day >= today - 1", as_of=date(2026, 1, 31)) == [True, True, True, False, True, True]
    assert drun("day >= today - 1", as_of=date(2026, 2, 1)) == [False, True, True, False, True, True]
    assert drun("day >= today - 1", as_of=date(2026, 3, 3)) == [False, False, False, False, False, True]
    assert not compile_rule("day >= 2026-01-01", NUM_SCHEMA, segment="s").today
    with pytest.raises(ValueError, match="needs as_of"):
        add_rule_inputs(DAYS, True, (), as_of=None)


def test_date_literals_are_real_dates():
    assert drun("day == 2024-02-29 or day == 2026-02-28", DAYS) == [False] * 6
    err = nerror("day == 2026-02-29")
    assert (err.line, err.column, err.reason) == (1, 8, "invalid date 2026-02-29")
    assert "YYYY-MM-DD" in str(err)
    assert nerror("day > 2026-13-01").reason == "invalid date 2026-13-01"


def test_keywords_of_the_new_operators_as_name_prefixes():
    frame = pl.DataFrame({"inactive": [True, False], "today_x": [1, 1], "contains_x": ["a", "a"], "index": [3, 3]})
    rule = 'inactive and today_x == 1 and contains_x contains "a" and index in [3]'
    assert nrun(rule, frame) == [True, False]
    assert compile_rule(rule, NUM_SCHEMA, segment="s").references == {"inactive", "today_x", "contains_x", "index"}


# --- type errors and syntax errors of the new operators point at the spot ---------------


@pytest.mark.parametrize(
    "rule, line, column, reason",
    [
        ('s + 1 > 2', 1, 3, "cannot use '+' with string 's' and number 1"),
        ('x * s > 2', 1, 3, "cannot use '*' with number 'x' and string 's'"),
        ("flag - 1 > 0", 1, 6, "cannot use '-' with bool 'flag' and number 1"),
        ("x + y + s == 1", 1, 7, "cannot use '+' with number 'x + y' and string 's'"),
        ("x > 1 and\n  day * 2 > x", 2, 7, "cannot use '*' with date 'day' and number 2"),
        ("day + day > today", 1, 5, "cannot use '+' with date 'day' and date 'day'"),
        ("1 - day > today", 1, 3, "cannot use '-' with number 1 and date 'day'"),
        ("x + null > 1", 1, 3, "cannot use null with '+'"),
        ("-s == 'a'", 1, 1, "cannot negate string 's'"),
        ("x + 1", 1, 1, "expected a true/false condition, got number 'x + 1'"),
        ("today", 1, 1, "expected a true/false condition, got date today"),
        ("day - today", 1, 1, "expected a true/false condition, got number 'day - today'"),
        ("day > 30", 1, 5, "cannot compare date 'day' with number 30; write a date as 2026-01-31, or count "
                           "days from today: today - 30"),
        ("day == '2026-01-31'", 1, 5, "cannot compare date 'day' with string '2026-01-31'; remove the quotes: "
                                      "2026-01-31"),
        ("x > 2026-01-31", 1, 3, "cannot compare number 'x' with date 2026-01-31"),
        ("x + 1 == 'a'", 1, 7, "cannot compare number 'x + 1' with string 'a'"),
        ("s > 'a' + 1", 1, 9, "cannot use '+' with string 'a' and number 1"),
        ("x in [1, 'a']", 1, 10, "cannot compare number 'x' with string 'a'"),
        ("s in ['a', 2]", 1, 12, "cannot compare string 's' with number 2; quote the value: \"2\""),
        ("x in [1, '2']", 1, 10, "cannot compare number 'x' with string '2'; remove the quotes: 2"),
        ("day in [2026-01-01, today]", 1, 21, "a list holds values only, got date today"),
        ("x in [y]", 1, 7, "a list holds values only, got number 'y'"),
        ("x in [1 + 1]", 1, 7, "a list holds values only, got number '1 + 1'"),
        ("x in [1, null]", 1, 10, "null cannot be in a list"),
        ("null in [1]", 1, 6, "cannot use null with 'in'"),
        ("x not in [null]", 1, 3, "null cannot be in a list"),
        ("x contains 'a'", 1, 3, "'contains' applies to strings, not number 'x'"),
        ("s startswith 1", 1, 3, "'startswith' applies to strings, not number 1"),
        ("s contains null", 1, 3, "'contains' applies to strings, not null"),
        ("s contains 'a' + 'b'", 1, 16, "cannot use '+' with string 'a' and string 'b'"),
    ],
)
def test_type_errors_of_new_operators(rule, line, column, reason):
    if rule == "x not in [null]":
        column = 11
    err = nerror(rule)
    assert (err.line, err.column, err.reason) == (line, column, reason)
    assert str(err).startswith(f"segment 'vip': when: {reason} at line {line}, column {column}")
    caret_line = str(err).splitlines()[2]
    assert caret_line.index("^") - 4 == column - 1


def test_type_error_hints_for_dates_and_text():
    assert "two dates give their difference" in str(nerror("day * 2 > x"))
    assert 'quote the value: "1"' in str(nerror("s contains 1"))
    assert "test for a missing value with '== null'" in str(nerror("x in [1, null]"))


@pytest.mark.parametrize(
    "rule, line, column, reason",
    [
        ("x + > 1", 1, 5, "unexpected '>'"),
        ("x * * y > 1", 1, 5, "unexpected '*'"),
        ("x + 1 < y < 5", 1, 11, "unexpected '<'"),
        ("x in []", 1, 7, "unexpected ']'"),
        ("x in [1, 2", 1, 11, "unexpected end of rule"),
        ("x in 1", 1, 6, "unexpected '1'"),
        ("x IN [1]", 1, 3, "unexpected 'IN'"),
        ("s contains", 1, 11, "unexpected end of rule"),
        ("s ignore_case", 1, 3, "unexpected 'ignore_case'"),
        ("x + 1 ignore_case > 2", 1, 7, "unexpected 'ignore_case'"),
        ("s Contains 'a'", 1, 3, "unexpected 'Contains'"),
        ("x in [1] in [2]", 1, 10, "unexpected 'in'"),
        ("x not > 1", 1, 7, "unexpected '>'"),
        ("x ** 2 > 1", 1, 4, "unexpected '*'"),
        ("x ^ 2 > 1", 1, 3, "unexpected '^'"),
        ("day > 2026-1-31", 1, 7, "invalid date 2026-1-31"),  # not 2026 - 1 - 31
        ("x > 1 + 2026-01-1", 1, 9, "invalid date 2026-01-1"),
    ],
)
def test_syntax_errors_of_new_operators(rule, line, column, reason):
    err = nerror(rule)
    assert (err.line, err.column, err.reason) == (line, column, reason)
    assert "Token" not in str(err) and "$END" not in str(err)


def test_spaced_or_unpadded_numbers_stay_arithmetic():
    frame = pl.DataFrame({"x": [1994, 1995]})
    assert nrun("x == 2026 - 1 - 31", frame) == [True, False]
    assert nrun("x == 2026-01 - 31", frame) == [True, False]
    assert nrun("x + 1 == 2026-031", frame) == [True, False]


def test_syntax_hints_of_new_keywords():
    assert "keywords are lowercase: 'in'" in str(nerror("x IN [1]"))
    assert "keywords are lowercase: 'contains'" in str(nerror("s Contains 'a'"))


def test_100k_rows_arithmetic_matches_numpy():
    rng = np.random.default_rng(17)
    n = 100_000
    x = rng.integers(-50, 50, n).astype(float)
    y = rng.integers(-3, 4, n).astype(float)  # about one in seven is zero
    missing = rng.random(n) < 0.1
    frame = pl.DataFrame({"x": pl.Series(x).set(pl.Series(missing), None), "y": y})
    got = nrun("x / y + 2 * y > 3 or x - y in [0, 7]", frame)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_ok = (y != 0) & (x / np.where(y == 0, 1, y) + 2 * y > 3)
    expected = ~missing & (ratio_ok | np.isin(x - y, [0, 7]))
    np.testing.assert_array_equal(np.array(got), expected)
    assert 1_000 < expected.sum() < n - 1_000


def test_readme_rule_language_examples_compile():
    """Every example in the rule-language reference table (docs/rules.md) parses and type-checks."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "rules.md").read_text(encoding="utf-8")
    section = readme.split("## The rule language", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith(("|---", "| operator"))]
    examples = [ex for row in rows for ex in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[1])]
    assert len(rows) >= 10 and len(examples) >= 15
    schema = {**NUM_SCHEMA, "tier": "string", "city": "string", "a": "number", "b": "number", "c": "number",
              "d": "number", "birthday": "date", "first_purchase": "date", "last_purchase": "date",
              # with [[product_cycle]] (docs/products.md): the preset segment and the reorder features
              "reorder.due": "bool", "reorder_product": "string", "reorder_due_date": "date",
              "reorder_overdue_days": "number"}
    for example in examples:
        compiled = compile_rule(example, schema, segment="readme")
        assert isinstance(compiled.expr, pl.Expr), example
